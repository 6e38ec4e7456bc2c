// Package vmguest holds end-to-end tests of kernel-enforced revocation
// that need BPF LSM: the real agent (capd-full) under fdsup, consumers in
// their own cgroups, and revokes that the kernel must make binding for
// every holder of a copy. They are built with -tags vmguest and run as
// root in the QEMU guest of tests/vm_e2e_test.go (a busybox initramfs on
// Debian's stock kernels), whose TestMain-made cgroups /pub (the tests
// themselves, the publisher), /a, /b, /c (consumers) and /agent they
// assume. Elsewhere they fail, never skip.
package vmguest
