package enforce

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/activation"
)

// Prefix starts the name of every fd in Files: what the agent keeps in
// systemd's fd store and recognizes at start (IsStored). The version is
// the layout of the maps and names; Adopt accepts only its own.
const Prefix = "capd-bpf-v1-"

// hooks are the LSM programs, by program name, with what they need.
var hooks = []struct {
	prog     string
	optional bool // attached where the kernel has the hook
	inode    bool // needed for inode marks (Revoke's markInode)
}{
	{prog: "file_permission"},
	{prog: "file_ioctl"},
	{prog: "file_ioctl_compat", optional: true}, // 6.8+
	{prog: "mmap_file"},
	{prog: "file_mprotect"},
	{prog: "socket_sendmsg"},
	{prog: "socket_recvmsg"},
	{prog: "file_receive"},
	{prog: "file_truncate", optional: true}, // 6.2+
	{prog: "file_free"},
	{prog: "file_open", optional: true, inode: true},
	{prog: "inode_free", optional: true, inode: true},
}

const iterProg = "find_fd"

// revokeIoctl is the agent's own request to its file_ioctl program
// (CAPD_REVOKE_IOCTL in bpf/enforce.c).
const revokeIoctl = 0xcafd0001

// Enforcer holds the attached programs and their maps. See the package
// doc for who owns which fd.
type Enforcer struct {
	mu      sync.Mutex // serializes Revoke: iter_args has one slot
	revoked *ebpf.Map
	inodes  *ebpf.Map
	args    *ebpf.Map
	iter    *ebpf.Program
	links   map[string]link.Link // by program name
	// fast: file_ioctl takes this process's CAPD_REVOKE_IOCTL (probed at
	// Load and Adopt). Without it the request is never sent: it would
	// reach the file's driver.
	fast bool
}

// lsmActive reports whether bpf is among the active LSMs; true when
// securityfs is not mounted (loading will tell).
func lsmActive() (string, bool) {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return "", true
	}
	l := strings.TrimSpace(string(b))
	return l, slices.Contains(strings.Split(l, ","), "bpf")
}

// refused reports whether err is how a kernel says no to BPF LSM.
func refused(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, enotsupp) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, ebpf.ErrNotSupported)
}

// Load loads and attaches every program. Where the kernel refuses,
// errors.Is(err, ErrUnavailable) holds and the message says why.
func Load() (*Enforcer, error) { return load(0) }

// load is Load with maps of maxEntries entries (0: as compiled) for tests.
func load(maxEntries uint32) (_ *Enforcer, err error) {
	if l, ok := lsmActive(); !ok {
		return nil, fmt.Errorf("%w: bpf is not among the active LSMs (%s); boot with lsm=...,bpf", ErrUnavailable, l)
	}
	spec, err := loadEnforce()
	if err != nil {
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	if maxEntries > 0 {
		spec.Maps["revoked"].MaxEntries = maxEntries
		spec.Maps["inodes"].MaxEntries = maxEntries
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("%w: kernel BTF: %w", ErrUnavailable, err)
	}
	for _, h := range hooks {
		ps := spec.Programs[h.prog]
		var fn *btf.Func
		if kernel.TypeByName("bpf_lsm_"+ps.AttachTo, &fn) == nil {
			continue
		}
		if !h.optional {
			return nil, fmt.Errorf("%w: the kernel has no LSM hook %s", ErrUnavailable, ps.AttachTo)
		}
		delete(spec.Programs, h.prog)
	}
	// file_open without inode_free_security would leave stale inode keys.
	if _, ok := spec.Programs["inode_free"]; !ok {
		delete(spec.Programs, "file_open")
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: kernel}})
	if err != nil {
		if refused(err) {
			return nil, fmt.Errorf("%w: the kernel refused the LSM programs (BPF LSM disabled, trampolines refused, lockdown, or no CAP_BPF+CAP_PERFMON): %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	defer coll.Close() // the links hold the LSM programs; Enforcer takes what it keeps
	e := &Enforcer{links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	for _, h := range hooks {
		p := coll.Programs[h.prog]
		if p == nil {
			continue
		}
		l, err := link.AttachLSM(link.LSMOptions{Program: p})
		if err != nil {
			if refused(err) {
				return nil, fmt.Errorf("%w: attach lsm/%s: %w", ErrUnavailable, spec.Programs[h.prog].AttachTo, err)
			}
			return nil, fmt.Errorf("attach lsm/%s: %w", spec.Programs[h.prog].AttachTo, err)
		}
		e.links[h.prog] = l
	}
	e.revoked = coll.DetachMap("revoked")
	e.inodes = coll.DetachMap("inodes")
	e.args = coll.DetachMap("iter_args")
	e.iter = coll.DetachProgram(iterProg)
	e.fast = e.probeFast()
	return e, nil
}

// IsStored reports whether an fd store name is one of Files'.
func IsStored(name string) bool { return strings.HasPrefix(name, "capd-bpf-") }

const (
	mapPrefix  = Prefix + "map-"
	progPrefix = Prefix + "prog-"
	linkPrefix = Prefix + "link-"
)

// Files returns the fds to keep in systemd's fd store and to pass at the
// hand-off, named for Adopt. The Enforcer still owns them: the caller
// dups what it hands on if it may outlive the Enforcer.
func (e *Enforcer) Files() []activation.File {
	fs := []activation.File{
		{Name: mapPrefix + "revoked", FD: e.revoked.FD()},
		{Name: mapPrefix + "inodes", FD: e.inodes.FD()},
		{Name: mapPrefix + "iter_args", FD: e.args.FD()},
		{Name: progPrefix + iterProg, FD: e.iter.FD()},
	}
	for _, h := range hooks {
		if l, ok := e.links[h.prog]; ok {
			fs = append(fs, activation.File{Name: linkPrefix + h.prog, FD: linkFD(l)})
		}
	}
	return fs
}

func linkFD(l link.Link) int {
	if f, ok := l.(interface{ FD() int }); ok {
		return f.FD()
	}
	return -1
}

// InodeMarks reports whether Revoke can mark inodes (the kernel has
// file_open and inode_free_security for BPF LSM).
func (e *Enforcer) InodeMarks() bool {
	return e.links["file_open"] != nil && e.links["inode_free"] != nil
}

// Hooks lists the attached programs.
func (e *Enforcer) Hooks() []string {
	var hs []string
	for _, h := range hooks {
		if e.links[h.prog] != nil {
			hs = append(hs, h.prog)
		}
	}
	return hs
}

// Adopt takes over the programs, links and maps a previous agent kept
// (the files whose names IsStored accepts; others are ignored). It
// duplicates each fd: the caller still owns and closes those it passed.
func Adopt(files []activation.File) (_ *Enforcer, err error) {
	e := &Enforcer{links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	spec, err := loadEnforce()
	if err != nil {
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	for _, f := range files {
		if !IsStored(f.Name) {
			continue
		}
		if !strings.HasPrefix(f.Name, Prefix) {
			return nil, fmt.Errorf("%w: %s is of another layout version than %s", ErrAdopt, f.Name, Prefix)
		}
		fd, err := unix.FcntlInt(uintptr(f.FD), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return nil, fmt.Errorf("adopt %s: %w", f.Name, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err))
		}
		switch name := f.Name[len(Prefix):]; {
		case strings.HasPrefix(f.Name, mapPrefix):
			m, err := ebpf.NewMapFromFD(fd) // owns fd, also on error
			if err != nil {
				return nil, fmt.Errorf("adopt %s: %w", f.Name, err)
			}
			ms := spec.Maps[f.Name[len(mapPrefix):]]
			var slot **ebpf.Map
			switch f.Name[len(mapPrefix):] {
			case "revoked":
				slot = &e.revoked
			case "inodes":
				slot = &e.inodes
			case "iter_args":
				slot = &e.args
			}
			if slot == nil || *slot != nil || ms == nil ||
				m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize {
				m.Close()
				return nil, fmt.Errorf("%w: %s is unknown, repeated or of another layout (%v, key %d, value %d)", ErrAdopt, f.Name, m.Type(), m.KeySize(), m.ValueSize())
			}
			*slot = m
		case f.Name == progPrefix+iterProg:
			p, err := ebpf.NewProgramFromFD(fd)
			if err != nil {
				return nil, fmt.Errorf("adopt %s: %w", f.Name, err)
			}
			if e.iter != nil || p.Type() != ebpf.Tracing {
				p.Close()
				return nil, fmt.Errorf("%w: %s is repeated or not an iterator", ErrAdopt, f.Name)
			}
			e.iter = p
		case strings.HasPrefix(f.Name, linkPrefix):
			prog := f.Name[len(linkPrefix):]
			l, err := link.NewFromFD(fd)
			if err != nil {
				return nil, fmt.Errorf("adopt %s: %w", f.Name, err)
			}
			if e.links[prog] != nil {
				l.Close()
				return nil, fmt.Errorf("%w: %s repeated", ErrAdopt, f.Name)
			}
			e.links[prog] = l
		default:
			unix.Close(fd)
			return nil, fmt.Errorf("%w: unknown name %s (%s)", ErrAdopt, f.Name, name)
		}
	}
	if e.revoked == nil || e.inodes == nil || e.args == nil || e.iter == nil {
		return nil, fmt.Errorf("%w: maps or the iterator program missing", ErrAdopt)
	}
	for _, h := range hooks {
		if !h.optional && e.links[h.prog] == nil {
			return nil, fmt.Errorf("%w: no link for %s", ErrAdopt, h.prog)
		}
	}
	e.fast = e.probeFast()
	return e, nil
}

// Fast reports whether Revoke takes constant time (file_ioctl takes the
// agent's request) rather than a walk of the agent's fd table.
func (e *Enforcer) Fast() bool { return e.fast }

// Revoke makes the open file description behind the agent's fd unusable
// for every task outside exemptCgroup (a cgroup v2 id; 0 exempts nobody),
// recording id as the revocation's number. With markInode (for anonymous
// files only: memfd, O_TMPFILE) opening the file's inode is refused as
// well, so /proc/PID/fd/N cannot make a fresh description. Revoking an fd
// again replaces its id and exemption. ErrFull: the map is full and
// nothing was revoked.
func (e *Enforcer) Revoke(fd int, id, exemptCgroup uint64, markInode bool) error {
	if fd < 0 {
		return fmt.Errorf("revoke fd %d: %w", fd, ErrNotOpen)
	}
	if markInode && !e.InodeMarks() {
		return fmt.Errorf("%w: inode marks need the file_open and inode_free_security hooks", ErrUnavailable)
	}
	a := enforceArgs{Fd: uint32(fd), Rev: enforceRevocation{ExemptCgroupId: exemptCgroup, Id: id}, AgentTgid: uint32(os.Getpid())}
	if markInode {
		a.MarkInode = 1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.args.Put(uint32(0), &a); err != nil {
		return fmt.Errorf("revoke fd %d: set iterator arguments: %w", fd, err)
	}
	// The constant-time way first: file_ioctl takes the agent's own
	// request (bpf/enforce.c) and ends the ioctl with ECANCELED. Not
	// taken (an O_PATH fd: ioctl refuses it before any hook) or not
	// available: walk the agent's fd table.
	if !e.fast || !errors.Is(ioctlRevoke(fd), unix.ECANCELED) {
		if err := e.runIter(); err != nil {
			return fmt.Errorf("revoke fd %d: %w", fd, err)
		}
	}
	if err := e.args.Lookup(uint32(0), &a); err != nil {
		return fmt.Errorf("revoke fd %d: read iterator result: %w", fd, err)
	}
	switch {
	case a.Result == 1:
		return nil
	case a.Result == 0:
		return fmt.Errorf("revoke fd %d: %w", fd, ErrNotOpen)
	case a.Result == -int64(unix.E2BIG):
		return fmt.Errorf("revoke fd %d: %w", fd, ErrFull)
	default:
		return fmt.Errorf("revoke fd %d: map update: %w", fd, unix.Errno(-a.Result))
	}
}

// ioctlRevoke sends the agent's request on its own fd.
func ioctlRevoke(fd int) error {
	_, err := unix.IoctlRetInt(fd, revokeIoctl)
	return err
}

// probeFast reports whether file_ioctl takes this process's request: on a
// memfd of its own (no driver, so a request not taken fails ENOTTY), whose
// key goes with it.
func (e *Enforcer) probeFast() bool {
	fd, err := unix.MemfdCreate("capd-bpf-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	a := enforceArgs{Fd: ^uint32(0), AgentTgid: uint32(os.Getpid())}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.args.Put(uint32(0), &a) != nil {
		return false
	}
	if !errors.Is(ioctlRevoke(fd), unix.ECANCELED) || e.args.Lookup(uint32(0), &a) != nil {
		return false
	}
	return a.Result == 1
}

// runIter runs find_fd over the files of this thread's task (the fd table
// is the process's).
func (e *Enforcer) runIter() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	lfd, err := iterLinkCreate(e.iter.FD(), unix.Gettid())
	if err != nil {
		return err
	}
	defer unix.Close(lfd)
	ifd, err := iterCreate(lfd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(ifd), "bpf-iter")
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return fmt.Errorf("run iterator: %w", err)
	}
	return nil
}

// InForce counts the keys (revoked descriptions and marked inodes) per
// revocation id.
func (e *Enforcer) InForce() (map[uint64]int, error) {
	n := map[uint64]int{}
	for _, m := range []*ebpf.Map{e.revoked, e.inodes} {
		var k uint64
		var v enforceRevocation
		it := m.Iterate()
		for it.Next(&k, &v) {
			n[v.Id]++
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("iterate %s: %w", m, err)
		}
	}
	return n, nil
}

// Len is the number of keys in both maps (0 if they cannot be read).
func (e *Enforcer) Len() int {
	n, _ := e.InForce()
	t := 0
	for _, c := range n {
		t += c
	}
	return t
}

// Close closes the Enforcer's fds. Enforcement ends with the last fd of
// each link (package doc).
func (e *Enforcer) Close() error {
	var errs []error
	for _, l := range e.links {
		errs = append(errs, l.Close())
	}
	e.links = nil
	for _, c := range []io.Closer{e.revoked, e.inodes, e.args, e.iter} {
		if c != nil && !isNil(c) {
			errs = append(errs, c.Close())
		}
	}
	e.revoked, e.inodes, e.args, e.iter = nil, nil, nil, nil
	return errors.Join(errs...)
}

func isNil(c io.Closer) bool {
	switch v := c.(type) {
	case *ebpf.Map:
		return v == nil
	case *ebpf.Program:
		return v == nil
	}
	return false
}

// Describe says whether this kernel enforces revocations ("bpf-lsm") or
// why not, by loading and closing the programs.
func Describe() string {
	e, err := Load()
	if err != nil {
		return "advisory: " + err.Error()
	}
	e.Close()
	return "bpf-lsm"
}

// enotsupp is the kernel's internal ENOTSUPP (524), which bpf(2) returns
// for a trampoline the architecture or config lacks.
const enotsupp = unix.Errno(524)
