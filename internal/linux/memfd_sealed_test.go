package linux_test

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// SealedMemfd holds exactly what it was given, and can no longer be
// written, grown, shrunk or resealed.
func TestSealedMemfd(t *testing.T) {
	for _, want := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("capd"), 100000)} {
		fd, err := linux.SealedMemfd("capd-test", want)
		if err != nil {
			t.Fatal(err)
		}
		seals, err := linux.Seals(fd)
		if err != nil {
			t.Fatal(err)
		}
		const all = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
		if seals&all != all {
			t.Errorf("seals %#x, want %#x", seals, all)
		}
		got := make([]byte, len(want)+1)
		n, err := unix.Pread(fd, got, 0)
		if err != nil || !bytes.Equal(got[:n], want) {
			t.Errorf("read back %d bytes (%v), want %d", n, err, len(want))
		}
		if _, err := unix.Pwrite(fd, []byte("y"), 0); err == nil {
			t.Error("write to a sealed memfd succeeded")
		}
		if kind := linux.FdKind(fd); kind != "memfd" {
			t.Errorf("kind %q, want memfd", kind)
		}
		linux.Close(fd)
	}
}
