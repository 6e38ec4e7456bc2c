package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/procfs"
	"github.com/capd-dev/capd/internal/proto"
)

// Item is one live entry, whose fd the caller keeps open (holds a
// reference) during Run.
type Item struct {
	Owner, Name, Kind string
	FD                int
}

// Tomb is a removed entry: only its file's identity is left (the device
// and inode fstat gave at publish, linux.FileID). Its fd is closed, so an
// open file description can no longer be compared; the file's inode is,
// for kinds whose inode only copies of the entry can hold (memfd, socket,
// pipe, tmpfile). Kind is linux.FdKind's name.
type Tomb struct {
	Owner, Name, Kind string
	Dev, Ino          uint64
	Removed           time.Time
}

// Env is what the audit learns about holders from the agent. Any function
// may be nil: that source is then not used (no PathByID: every cgroup comes
// from CgroupOf; no CgroupOf and no PathByID: holders have no cgroup; no
// Identity: no identity). Log may be nil: nothing is logged.
type Env struct {
	Log      *slog.Logger                          // warnings and debug lines
	PathByID func(cgroupID uint64) (string, error) // cgroup v2 path of a cgroup id (cgroup.Resolver.PathByID)
	// CgroupOf is the fallback: the cgroup path of the process behind
	// pidfd (pid is its pid), checked against the pidfd. It is called
	// when PIDFD_GET_INFO or PathByID fails, or with OldKernel; a fallback
	// of its own to /proc/PID/cgroup is its business.
	CgroupOf func(pidfd, pid int) (string, error)
	Identity func(cgroup string) string // the identity the agent gives processes of that cgroup
	// OldKernel makes Run act as without PIDFD_GET_INFO (tests of the
	// fallbacks): cgroups come from CgroupOf, uids from /proc/PID/status.
	OldKernel bool
}

// Run audits the holders of live and of tombs. The report has one entry
// per Item, in order, with its holders (never nil); Removed has one entry
// per Tomb some process still holds the file of, in order. Run closes none
// of the Items' fds. It fails only when /proc/self or /proc cannot be read.
func Run(env Env, live []Item, tombs []Tomb) (*proto.AuditReport, error) {
	if env.Log == nil {
		env.Log = slog.New(slog.DiscardHandler)
	}
	rep := &proto.AuditReport{Time: time.Now(), PtraceScope: ptraceScope()}
	a := newAuditor(env, live, tombs)
	if err := a.index(); err != nil {
		return nil, err
	}
	liveHolders := make([][]proto.AuditHolder, len(live))
	tombHolders := make([][]proto.AuditHolder, len(tombs))
	pids, err := procfs.PIDs(nil, a.dirent)
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		if pid == a.self {
			continue
		}
		p := &proc{pid: pid, pidfd: -1}
		if p.dir, err = procfs.Open(pid); err != nil {
			continue // exited
		}
		rep.Processes++
		lm, tm, nfd := a.scan(p)
		rep.FDs += nfd
		if len(lm)+len(tm) > 0 {
			if h, ok := a.holder(p, rep.PtraceScope); ok {
				for _, m := range lm {
					hh := h
					hh.FD = m.fd
					liveHolders[m.i] = append(liveHolders[m.i], hh)
				}
				for _, m := range tm {
					hh := h
					hh.FD = m.fd
					tombHolders[m.i] = append(tombHolders[m.i], hh)
				}
			}
		}
		p.dir.Close()
	}
	for i, e := range live {
		rep.Entries = append(rep.Entries, proto.AuditEntry{Owner: e.Owner, Name: e.Name, Kind: e.Kind, Holders: nonNil(liveHolders[i])})
	}
	for i, t := range tombs {
		if len(tombHolders[i]) > 0 {
			rep.Removed = append(rep.Removed, proto.AuditEntry{Owner: t.Owner, Name: t.Name, Kind: t.Kind, Removed: t.Removed, Holders: tombHolders[i]})
		}
	}
	a.env.Log.Debug("audit", "processes", rep.Processes, "fds", rep.FDs, "kcmp", a.kcmps, "fdinfo", a.fdinfos)
	if rep.Entries == nil {
		rep.Entries = []proto.AuditEntry{}
	}
	if rep.Removed == nil {
		rep.Removed = []proto.AuditEntry{}
	}
	return rep, nil
}

// Report renders the report into a sealed memfd the caller owns (close
// it).
func Report(rep *proto.AuditReport) (int, error) {
	b, err := json.Marshal(rep)
	if err != nil {
		return -1, err
	}
	return linux.SealedMemfd("capd-audit", b)
}

func nonNil(h []proto.AuditHolder) []proto.AuditHolder {
	if h == nil {
		return []proto.AuditHolder{}
	}
	return h
}

type match struct{ i, fd int }

// fdKey is what an fd is compared by before kcmp: a file named by a path,
// or a pidfd, by mount id and inode (typ ""); a sockfs, pipefs or nsfs
// inode by its type and inode; another anonymous inode by its whole link.
type fdKey struct {
	typ string
	mnt int
	ino uint64
}

// ofd is one open file description behind one or more live entries.
type ofd struct {
	fd      int   // the agent's fd of its first entry (the caller holds a reference)
	entries []int // indexes into auditor.live
}

// proc is the process being scanned.
type proc struct {
	pid   int
	dir   procfs.Dir
	pidfd int    // taken by holder only, -1 before
	ns    string // its mount namespace (/proc/PID/ns/mnt), once read
}

// auditor is one audit's state; it is used by one goroutine.
type auditor struct {
	env   Env
	self  int
	live  []Item
	tombs []Tomb

	ofds       map[fdKey][]*ofd
	byLink     map[string][]*ofd // the groups of files named by a path, by the agent's link
	tombsByIno map[uint64][]int
	pathInfo   bool // some entry or tombstone is a file known by fdinfo: read it for files named by a path

	ns          map[string]bool // mount namespace -> its /proc has hidepid (read: its mounts are in devs)
	devs        map[int]uint64  // mount id -> device, for every namespace read and the kernel's internal mounts
	kernelMnts  bool            // devs has the kernel's internal mounts
	names       map[string]string
	cgroups     map[uint64]string // cgroup id -> path
	kcmps       int               // kcmp calls on other processes, for the log
	fdinfos     int               // fdinfo reads, for the log
	dirent      []byte
	link, info  []byte
	fds         []int
	mountinfo   []byte
	statusBytes []byte
}

func newAuditor(env Env, live []Item, tombs []Tomb) *auditor {
	return &auditor{
		env: env, self: os.Getpid(), live: live, tombs: tombs,
		ofds:        make(map[fdKey][]*ofd),
		byLink:      make(map[string][]*ofd),
		tombsByIno:  make(map[uint64][]int),
		ns:          make(map[string]bool),
		devs:        make(map[int]uint64),
		names:       make(map[string]string),
		cgroups:     make(map[uint64]string),
		dirent:      make([]byte, 16<<10),
		link:        make([]byte, 4096),
		info:        make([]byte, 256),
		statusBytes: make([]byte, 1024),
	}
}

// index learns the key of every live entry's fd from /proc/self (the agent
// holds them, so they cannot change under it), groups the entries that
// share an open file description, and indexes the tombstones by inode.
//
// A removed entry's fd is closed, so kcmp cannot confirm a copy of it; its
// inode can, only for kinds whose inode no unrelated process can open on
// its own. A regular file, a directory or a device (/dev/null) is opened by
// anyone, and every pidfd of a process shares one inode: their stale copies
// are not reported at all rather than reported wrongly.
func (a *auditor) index() error {
	self, err := procfs.Open(a.self)
	if err != nil {
		return err
	}
	defer self.Close()
	fdt, err := self.FDTable()
	if err != nil {
		return err
	}
	defer fdt.Close()
	for i, e := range a.live {
		link, err := fdt.Link(e.FD, a.link)
		k, ok := fdKey{}, err == nil
		if ok {
			k, ok = a.key(self, e.FD, link, true)
		}
		if !ok {
			a.env.Log.Warn("audit cannot read its own copy of an entry; its holders are not reported", "owner", e.Owner, "name", e.Name, "fd", e.FD)
			continue
		}
		a.pathInfo = a.pathInfo || k.typ == ""
		o := a.sameOFD(k, e.FD)
		if o == nil {
			o = &ofd{fd: e.FD}
			a.ofds[k] = append(a.ofds[k], o)
			if kind, _, _ := procfs.Classify(link); kind == procfs.Path {
				a.byLink[string(link)] = append(a.byLink[string(link)], o)
			}
		}
		o.entries = append(o.entries, i)
	}
	for i, t := range a.tombs {
		if t.Ino != 0 && staleCopiesKnowable(t.Kind) {
			a.tombsByIno[t.Ino] = append(a.tombsByIno[t.Ino], i)
			a.pathInfo = true
		}
	}
	return nil
}

// sameOFD returns the group of key k whose open file description fd (the
// agent's) is, or nil.
func (a *auditor) sameOFD(k fdKey, fd int) *ofd {
	for _, o := range a.ofds[k] {
		if same, err := linux.Kcmp(a.self, a.self, o.fd, fd); err == nil && same {
			return o
		}
	}
	return nil
}

// key says how fd, whose link is link, of the process behind d is compared.
// info says whether to read the fdinfo of files named by a path (and
// pidfds); without it such fds have no key.
func (a *auditor) key(d procfs.Dir, fd int, link []byte, info bool) (fdKey, bool) {
	kind, typ, ino := procfs.Classify(link)
	switch kind {
	case procfs.Path, procfs.Pidfd:
		if !info {
			return fdKey{}, false
		}
		a.fdinfos++
		fi, err := d.FDInfo(fd, a.info)
		if err != nil {
			return fdKey{}, false
		}
		return fdKey{mnt: fi.MntID, ino: fi.Ino}, true
	case procfs.Pseudo:
		return fdKey{typ: a.name(typ), ino: ino}, true
	}
	return fdKey{typ: a.name(link)}, true
}

// name interns b, so that the few link types and names a host has are
// allocated once per audit.
func (a *auditor) name(b []byte) string {
	if s, ok := a.names[string(b)]; ok {
		return s
	}
	s := string(b)
	a.names[s] = s
	return s
}

// scan lists p's fds and returns those holding a live entry's open file
// description, those on a removed entry's file, and the number of fds seen.
func (a *auditor) scan(p *proc) (lm, tm []match, n int) {
	fdt, err := p.dir.FDTable()
	if err != nil {
		return nil, nil, 0
	}
	defer fdt.Close()
	fds, err := fdt.List(a.fds[:0], a.dirent)
	a.fds = fds
	if err != nil {
		return nil, nil, 0
	}
	candidate := false
	for _, fd := range fds {
		link, err := fdt.Link(fd, a.link)
		if err != nil {
			continue
		}
		// Once p holds a file of an entry's key, and so is compared by kcmp
		// anyway, a file named by a path whose link is an entry's file's is
		// compared at once, without its fdinfo; one renamed since index()
		// read the agent's link is found by its fdinfo below.
		var named []*ofd
		if candidate && len(a.tombsByIno) == 0 {
			named = a.byLink[string(link)]
		}
		if a.compare(p, fd, named, nil, &lm) {
			continue
		}
		k, ok := a.key(p.dir, fd, link, a.pathInfo)
		if !ok {
			continue
		}
		if len(a.ofds[k]) > 0 {
			candidate = true
			a.compare(p, fd, a.ofds[k], named, &lm)
		}
		if k.ino == 0 || len(a.tombsByIno[k.ino]) == 0 {
			continue
		}
		mnt := k.mnt
		if k.typ != "" {
			// A sockfs, pipefs or nsfs inode: its fdinfo has the mount.
			a.fdinfos++
			fi, err := p.dir.FDInfo(fd, a.info)
			if err != nil || fi.Ino != k.ino {
				continue
			}
			mnt = fi.MntID
		}
		dev, ok := a.dev(p, mnt)
		if !ok {
			continue
		}
		for _, i := range a.tombsByIno[k.ino] {
			if a.tombs[i].Dev == dev {
				tm = append(tm, match{i, fd})
			}
		}
	}
	return lm, tm, len(fds)
}

// compare compares fd of p by kcmp with the groups not in done, and
// appends the entries of the one whose open file description fd is (an fd
// has one) to lm. It reports whether there was one.
func (a *auditor) compare(p *proc, fd int, groups, done []*ofd, lm *[]match) bool {
	for _, o := range groups {
		if slices.Contains(done, o) {
			continue
		}
		a.kcmps++
		if same, err := linux.Kcmp(a.self, p.pid, o.fd, fd); err == nil && same {
			for _, i := range o.entries {
				*lm = append(*lm, match{i, fd})
			}
			return true
		}
	}
	return false
}

// dev returns the device of mount mnt, which p has a file open through.
func (a *auditor) dev(p *proc, mnt int) (uint64, bool) {
	if d, ok := a.devs[mnt]; ok {
		return d, true
	}
	a.hidepid(p) // reads p's mount namespace's mountinfo into devs
	if d, ok := a.devs[mnt]; ok {
		return d, true
	}
	if !a.kernelMnts {
		a.kernelMnts = true
		m, err := kernelMounts()
		if err != nil {
			a.env.Log.Debug("audit: some kernel-internal mounts are unknown", "err", err)
		}
		for id, d := range m {
			a.devs[id] = d
		}
	}
	d, ok := a.devs[mnt]
	return d, ok
}

// kernelMounts is linux.KernelMounts, asked once per process: those mounts
// live as long as the kernel.
var kernelMounts = sync.OnceValues(linux.KernelMounts)

// hidepid reports whether the /proc of p's mount namespace hides other
// processes, reading the namespace's mountinfo (once per audit) and noting
// its mounts' devices on the way.
func (a *auditor) hidepid(p *proc) bool {
	if p.ns == "" {
		ns, err := p.dir.Readlink("ns/mnt")
		if err != nil {
			return false
		}
		p.ns = ns
	}
	if hid, ok := a.ns[p.ns]; ok {
		return hid
	}
	b, err := p.dir.ReadFile("mountinfo", a.mountinfo)
	if err != nil {
		return false // not remembered: the process may just have exited
	}
	a.mountinfo = b
	hid := false
	for _, m := range procfs.ParseMountinfo(b) {
		a.devs[m.ID] = m.Dev
		// The last mount on /proc hides those below it.
		if m.Point == "/proc" {
			hid = hidesPIDs(m.Options) || hidesPIDs(m.Super)
		}
	}
	a.ns[p.ns] = hid
	return hid
}

func hidesPIDs(opts string) bool {
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "hidepid=invisible", "hidepid=noaccess", "hidepid=ptraceable", "hidepid=2", "hidepid=4":
			return true
		}
	}
	return false
}

// holder describes process p and its exposure, with the cgroup, identity
// and uid a pidfd of it gives. The pidfd is taken now, for holders only, by
// pid: ok is false, and p left out, unless p has not exited by the end (its
// directory is bound to it), which also proves that the pid still named p
// when the pidfd was taken.
func (a *auditor) holder(p *proc, scope int) (h proto.AuditHolder, ok bool) {
	pidfd, err := linux.PidfdOpen(p.pid)
	if err != nil {
		if !errors.Is(err, unix.ESRCH) {
			a.env.Log.Warn("audit cannot take a pidfd of a holder; it is not reported", "pid", p.pid, "err", err)
		}
		return h, false
	}
	defer linux.Close(pidfd)
	p.pidfd = pidfd
	defer func() { p.pidfd = -1 }()
	h = proto.AuditHolder{PID: p.pid, UID: -1}
	a.identify(p, &h)
	if h.UID > 0 {
		if owner, err := p.dir.Owner(); err == nil {
			// Linux makes a non-dumpable process's /proc files root's.
			d := owner != 0
			h.Dumpable = &d
		}
	}
	h.ProcHidden = a.hidepid(p)
	uid := strconv.Itoa(h.UID)
	switch {
	case h.UID == 0:
		// Only root holding the holder's capabilities, or CAP_SYS_PTRACE,
		// reaches a root process's fds.
		h.Exposure = append(h.Exposure, "uid 0: reachable by root holding its capabilities or CAP_SYS_PTRACE")
	case h.Dumpable != nil && !*h.Dumpable:
		h.Exposure = append(h.Exposure, "non-dumpable: only CAP_SYS_PTRACE reaches its fds")
	default:
		// Yama restricts ptrace attach (pidfd_getfd), never the read
		// access that reopening /proc/PID/fd/N needs.
		h.Exposed = true
		h.Exposure = append(h.Exposure, "dumpable: any process of uid "+uid+" may reopen /proc/"+strconv.Itoa(p.pid)+"/fd/N")
		switch {
		case scope <= 0:
			h.Exposure = append(h.Exposure, "and pidfd_getfd it (no Yama restriction)")
		case scope == 1:
			h.Exposure = append(h.Exposure, "its ancestors of uid "+uid+" may also pidfd_getfd it (yama ptrace_scope 1)")
		}
		if !h.ProcHidden {
			h.Exposure = append(h.Exposure, "/proc without hidepid: visible to every uid in its mount namespace")
		} else {
			h.Exposure = append(h.Exposure, "its /proc has hidepid: other uids there cannot see it")
		}
	}
	alive, _ := p.dir.Alive()
	return h, alive
}

// identify sets h's cgroup, identity and uid from one PIDFD_GET_INFO,
// with the cgroup paths cached by cgroup id (ids are never reused). Without
// the ioctl (Linux < 6.13), or when open_by_handle_at is denied, it falls
// back to Env.CgroupOf and /proc/PID/status.
func (a *auditor) identify(p *proc, h *proto.AuditHolder) {
	var info *unix.PidfdInfo
	if !a.env.OldKernel {
		info, _ = linux.PidfdGetInfo(p.pidfd, unix.PIDFD_INFO_CGROUPID|unix.PIDFD_INFO_CREDS)
	}
	cg, ok := "", false
	if info != nil && info.Mask&unix.PIDFD_INFO_CGROUPID != 0 && a.env.PathByID != nil {
		if cg, ok = a.cgroups[info.Cgroupid]; !ok {
			if path, err := a.env.PathByID(info.Cgroupid); err == nil {
				cg, ok = path, true
				a.cgroups[info.Cgroupid] = path
			}
		}
	}
	if !ok && a.env.CgroupOf != nil {
		if path, err := a.env.CgroupOf(p.pidfd, p.pid); err == nil {
			cg, ok = path, true
		}
	}
	if ok {
		h.Cgroup = cg
		if a.env.Identity != nil {
			h.Identity = a.env.Identity(cg)
		}
	}
	if info != nil && info.Mask&unix.PIDFD_INFO_CREDS != 0 {
		h.UID = int(info.Ruid)
	} else if b, err := p.dir.ReadHead("status", a.statusBytes); err == nil {
		if uid, ok := statusUID(b); ok {
			h.UID = uid
		}
	}
}

// statusUID finds the real uid in the start of /proc/PID/status.
func statusUID(b []byte) (int, bool) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if v, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(v)
			if len(f) > 0 {
				uid, err := strconv.Atoi(string(f[0]))
				return uid, err == nil
			}
		}
	}
	return 0, false
}

// ptraceScope reads Yama's ptrace_scope, -1 without Yama.
func ptraceScope() int {
	b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// staleCopiesKnowable reports whether a file of kind has an inode that only
// descendants of its own open (a dup, an SCM_RIGHTS copy, a fork, a reopen
// of /proc/PID/fd/N) can hold.
func staleCopiesKnowable(kind string) bool {
	switch kind {
	case "memfd", "socket", "pipe", "tmpfile":
		return true
	}
	return false
}
