package testutil

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// VMCache is where scripts/install-vm-deps.sh puts the guest kernels
// (vmlinuz-6.1, vmlinuz-6.12: Debian's stock cloud kernels).
const VMCache = "/var/cache/capd-test/vm"

// VMStep is one command the guest's /init runs, in order.
type VMStep struct {
	Name string
	Argv []string // Argv[0] is a guest path (busybox applets are in /bin)
}

// VMOptions describe a RunVM boot.
type VMOptions struct {
	// Kernel is a vmlinuz path; VMKernel gives the cached ones.
	Kernel string
	// Files are copied into the initramfs: guest path → host path
	// (static binaries: the guest has busybox and nothing else).
	Files map[string]string
	Steps []VMStep
	// Timeout bounds each boot (default 5 minutes); qemu is killed then.
	Timeout time.Duration
}

// VMStepResult is what one step printed (stdout and stderr, with the
// console's kernel messages if any came in between) and its exit code.
type VMStepResult struct {
	Name     string
	Output   string
	ExitCode int
	Ran      bool // its end marker was seen
}

// VMKernel returns the cached kernel of a version ("6.1", "6.12"), failing
// t with what to run when it is missing.
func VMKernel(t testing.TB, version string) string {
	t.Helper()
	p := filepath.Join(VMCache, "vmlinuz-"+version)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("guest kernel %s missing (%v): run scripts/install-vm-deps.sh (as root)", version, err)
	}
	return p
}

// Marker lines the generated /init prints around each step.
const (
	vmBegin = "@@CAPD-VM-BEGIN "
	vmEnd   = "@@CAPD-VM-END "
)

// RunVM boots opt.Kernel in QEMU (TCG, the flags that boot Debian's 6.1
// and 6.12 reliably on this project's hosts: one CPU, qemu64 without cx16)
// with an initramfs of busybox-static, opt.Files and an /init that mounts
// proc, sysfs, devtmpfs, securityfs, tmpfs /tmp, cgroup2 at /sys/fs/cgroup
// and bpffs at /sys/fs/bpf, runs opt.Steps and powers off. The kernel's
// LSMs are landlock,lockdown,yama,bpf. A boot that dies before the first
// step's marker is retried twice. It fails t (never skips) when qemu or
// the kernel is missing, the boot times out or the steps do not all run,
// logging the console; a step's exit code is for the caller to judge.
// No qemu outlives the test.
func RunVM(t testing.TB, opt VMOptions) []VMStepResult {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 not found: run scripts/install-vm-deps.sh (as root)")
	}
	busybox := "/bin/busybox"
	if b, err := exec.Command("file", "-L", busybox).Output(); err == nil && !bytes.Contains(b, []byte("statically linked")) {
		t.Fatalf("%s is not static: run scripts/install-vm-deps.sh (busybox-static)", busybox)
	}
	if opt.Kernel == "" {
		t.Fatal("RunVM: no kernel")
	}
	if _, err := os.Stat(opt.Kernel); err != nil {
		t.Fatalf("guest kernel: %v: run scripts/install-vm-deps.sh (as root)", err)
	}
	if opt.Timeout == 0 {
		opt.Timeout = 5 * time.Minute
	}
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := writeInitramfs(initrd, busybox, opt); err != nil {
		t.Fatalf("initramfs: %v", err)
	}
	var console string
	for attempt := 1; attempt <= 3; attempt++ {
		var err error
		console, err = bootVM(t, qemu, opt, initrd)
		if strings.Contains(console, vmBegin) {
			if err != nil {
				t.Logf("guest console:\n%s", console)
				t.Fatalf("boot: %v", err)
			}
			break
		}
		t.Logf("boot %d died before the first step (%v); console:\n%s", attempt, err, console)
		if attempt == 3 {
			t.Fatalf("the guest did not reach its first step in 3 boots")
		}
	}
	res := parseVMConsole(console, opt.Steps)
	for _, r := range res {
		if !r.Ran {
			t.Logf("guest console:\n%s", console)
			t.Fatalf("step %s did not finish", r.Name)
		}
	}
	if t.Failed() {
		t.Logf("guest console:\n%s", console)
	}
	return res
}

// bootVM runs qemu once and returns its console output.
func bootVM(t testing.TB, qemu string, opt VMOptions, initrd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opt.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-accel", "tcg,thread=single", "-cpu", "qemu64,-cx16", "-m", "2048", "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
		"-kernel", opt.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 lsm=landlock,lockdown,yama,bpf")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Stdin = nil
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return "", err
	}
	// t.Cleanup as well, should the test goroutine exit (t.Fatal) first.
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	err := cmd.Wait()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", opt.Timeout, ctx.Err())
	}
	return strings.ReplaceAll(out.String(), "\r", ""), err
}

// parseVMConsole splits the console at the step markers.
func parseVMConsole(console string, steps []VMStep) []VMStepResult {
	res := make([]VMStepResult, len(steps))
	for i, s := range steps {
		res[i].Name = s.Name
	}
	cur := -1
	var buf strings.Builder
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, vmBegin); i >= 0 {
			n, _ := strconv.Atoi(strings.Fields(line[i+len(vmBegin):])[0])
			cur = n
			buf.Reset()
			continue
		}
		if i := strings.Index(line, vmEnd); i >= 0 && cur >= 0 && cur < len(res) {
			f := strings.Fields(line[i+len(vmEnd):])
			if len(f) == 2 {
				res[cur].ExitCode, _ = strconv.Atoi(f[1])
				res[cur].Ran = true
				buf.WriteString(line[:i])
				res[cur].Output = buf.String()
			}
			cur = -1
			continue
		}
		if cur >= 0 {
			buf.WriteString(line)
			buf.WriteByte('\n')
		}
	}
	return res
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// vmInit is the guest's /init; the steps follow it.
const vmInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin TMPDIR=/tmp HOME=/tmp
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
exec </dev/null >/dev/console 2>&1
echo "guest: $(uname -r), lsm $(cat /sys/kernel/security/lsm)"
cd /tmp
`

// writeInitramfs writes a gzip'd newc cpio with busybox, opt.Files and
// the /init for opt.Steps.
func writeInitramfs(path, busybox string, opt VMOptions) error {
	var script strings.Builder
	script.WriteString(vmInit)
	for i, s := range opt.Steps {
		q := make([]string, len(s.Argv))
		for j, a := range s.Argv {
			q[j] = shellQuote(a)
		}
		fmt.Fprintf(&script, "echo %s\n(%s); rc=$?\necho; echo %s\n",
			shellQuote(fmt.Sprintf("%s%d %s", vmBegin, i, s.Name)), strings.Join(q, " "), `"`+vmEnd+strconv.Itoa(i)+` $rc"`)
	}
	script.WriteString("sync\npoweroff -f\n")

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	w := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "run"} {
		w.dir(d)
	}
	w.file("init", 0o755, []byte(script.String()))
	if err := w.copy("bin/busybox", busybox); err != nil {
		return err
	}
	guest := make([]string, 0, len(opt.Files))
	for g := range opt.Files {
		guest = append(guest, g)
	}
	sort.Strings(guest)
	made := map[string]bool{"bin": true}
	for _, g := range guest {
		rel := strings.TrimPrefix(filepath.Clean(g), "/")
		var parents []string
		for d := filepath.Dir(rel); d != "." && !made[d]; d = filepath.Dir(d) {
			made[d] = true
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			w.dir(d)
		}
		if err := w.copy(rel, opt.Files[g]); err != nil {
			return err
		}
	}
	w.trailer()
	if w.err != nil {
		return w.err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// cpioWriter writes the newc format (the kernel's initramfs format).
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 { // the header is 110 bytes: the stream stays 4-aligned
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpioWriter) dir(name string) { c.entry(name, 0o040755, nil) }

func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, data)
}

func (c *cpioWriter) copy(name, host string) error {
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	st, err := os.Stat(host)
	if err != nil {
		return err
	}
	c.file(name, uint32(st.Mode().Perm())|0o400, data)
	return nil
}

func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, nil) }
