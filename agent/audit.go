package agent

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/procfs"
	"github.com/capd-dev/capd/internal/proto"
)

// audit finds every process holding a copy of a store entry, and of
// recently removed entries, and says how exposed each holder is.
//
// It never calls into the file system of a file it looks at: a stat through
// /proc/PID/fd/N would wait forever on a FUSE mount whose server stopped
// answering. Each fd is known by its link (readlink of the magic link is
// d_path, or the pseudo file system's name for it) and, for files named by
// a path and for pidfds, by the mount id and inode of its fdinfo; the other
// anonymous inodes are known by their link's name only, since reading an
// epoll instance's fdinfo waits for its mutex, which a thread stuck in
// epoll_ctl on a stuck FUSE file holds. The agent knows its own copies the
// same way (/proc/self, never fstat), so both sides compare on the same
// terms, and a candidate is confirmed by kcmp(KCMP_FILE) against one of the
// agent's fds for that open file description (entries sharing one are
// grouped first, so each candidate costs one kcmp per open file
// description, not per entry).
//
// Removed entries only have the device and inode that fstat gave at
// publish (see tombstone). A candidate's mount id is mapped to its device
// through the mountinfo of the holder's mount namespace (read once per
// namespace and audit) or, for files on the kernel's internal mounts
// (sockets, pipes, memfds, pidfds), through linux.KernelMounts. Where stat
// reports another device than the superblock's (btrfs subvolumes, overlayfs
// over several file systems) or the mount is in no namespace the holder
// sees (detached), a stale copy is not found. Files on the shared anonymous
// inode (eventfd, timerfd, epoll, ...) have no identity left once the
// entry's open file description is closed, so no stale copy of them is
// reported.
//
// It walks /proc once; for each process it first takes a pidfd and opens
// /proc/PID (which stays bound to that process); a process whose pidfd
// shows it exited by the end of its scan is left out, so a recycled pid is
// never reported.
//
// What can still make it wait: kcmp takes the holder's exec_update_lock,
// which a process stuck in execve closing a CLOEXEC fd on a stuck FUSE
// mount holds (only candidates are compared, so only such a process that
// also holds an entry's file); an fd that changes between its readlink and
// its fdinfo read (internal/procfs says more).
func (s *Server) audit() (*proto.AuditReport, error) {
	rep := &proto.AuditReport{Time: time.Now(), PtraceScope: ptraceScope()}
	// Hold a reference on every entry so that its fd stays open.
	s.store.mu.RLock()
	live := make([]*entry, 0, len(s.store.entries))
	for _, e := range s.store.entries {
		e.refs.Add(1)
		live = append(live, e)
	}
	tombs := append([]tombstone(nil), s.store.tombs...)
	s.store.mu.RUnlock()
	defer s.store.releaseAll(live)

	a := newAuditor(s, live, tombs)
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
		pidfd, err := linux.PidfdOpen(pid)
		if err != nil {
			continue // exited
		}
		rep.Processes++
		p := &auditProc{pid: pid, pidfd: pidfd}
		if p.dir, err = procfs.Open(pid); err == nil {
			lm, tm, nfd := a.scan(p)
			rep.FDs += nfd
			if len(lm)+len(tm) > 0 {
				h := a.holder(p, rep.PtraceScope)
				if alive, _ := linux.PidfdAlive(pidfd); alive {
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
		linux.Close(pidfd)
	}
	for i, e := range live {
		rep.Entries = append(rep.Entries, proto.AuditEntry{Owner: e.owner, Name: e.name, Kind: e.kind, Holders: nonNil(liveHolders[i])})
	}
	for i, t := range tombs {
		if len(tombHolders[i]) > 0 {
			rep.Removed = append(rep.Removed, proto.AuditEntry{Owner: t.owner, Name: t.name, Kind: t.kind, Removed: t.removed, Holders: tombHolders[i]})
		}
	}
	if rep.Entries == nil {
		rep.Entries = []proto.AuditEntry{}
	}
	if rep.Removed == nil {
		rep.Removed = []proto.AuditEntry{}
	}
	return rep, nil
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
	fd      int   // the agent's fd of its first entry (audit holds a reference)
	entries []int // indexes into auditor.live
}

// auditProc is the process being scanned.
type auditProc struct {
	pid, pidfd int
	dir        procfs.Dir
	ns         string // its mount namespace (/proc/PID/ns/mnt), once read
}

// auditor is one audit's state; it is used by one goroutine.
type auditor struct {
	s     *Server
	self  int
	live  []*entry
	tombs []tombstone

	ofds       map[fdKey][]*ofd
	tombsByIno map[uint64][]int
	pathInfo   bool // some entry or tombstone is a file known by fdinfo: read it for files named by a path

	ns          map[string]bool // mount namespace -> its /proc has hidepid (read: its mounts are in devs)
	devs        map[int]uint64  // mount id -> device, for every namespace read and the kernel's internal mounts
	kernelMnts  bool            // devs has the kernel's internal mounts
	names       map[string]string
	cgroups     map[uint64]string // cgroup id -> path
	dirent      []byte
	link, info  []byte
	fds         []int
	mountinfo   []byte
	statusBytes []byte
}

func newAuditor(s *Server, live []*entry, tombs []tombstone) *auditor {
	return &auditor{
		s: s, self: os.Getpid(), live: live, tombs: tombs,
		ofds:        make(map[fdKey][]*ofd),
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
	for i, e := range a.live {
		k, ok := a.key(self, e.fd, true)
		if !ok {
			a.s.log.Warn("audit cannot read its own copy of an entry; its holders are not reported", "owner", e.owner, "name", e.name, "fd", e.fd)
			continue
		}
		a.pathInfo = a.pathInfo || k.typ == ""
		o := a.sameOFD(k, e.fd)
		if o == nil {
			o = &ofd{fd: e.fd}
			a.ofds[k] = append(a.ofds[k], o)
		}
		o.entries = append(o.entries, i)
	}
	for i, t := range a.tombs {
		if t.ino != 0 && staleCopiesKnowable(t.kind) {
			a.tombsByIno[t.ino] = append(a.tombsByIno[t.ino], i)
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

// key reads how fd of the process behind d is compared. info says whether
// to read the fdinfo of files named by a path (and pidfds); without it such
// fds have no key.
func (a *auditor) key(d procfs.Dir, fd int, info bool) (fdKey, bool) {
	link, err := d.Link(fd, a.link)
	if err != nil {
		return fdKey{}, false
	}
	kind, typ, ino := procfs.Classify(link)
	switch kind {
	case procfs.Path, procfs.Pidfd:
		if !info {
			return fdKey{}, false
		}
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
func (a *auditor) scan(p *auditProc) (lm, tm []match, n int) {
	fds, err := p.dir.FDs(a.fds[:0], a.dirent)
	a.fds = fds
	if err != nil {
		return nil, nil, 0
	}
	for _, fd := range fds {
		k, ok := a.key(p.dir, fd, a.pathInfo)
		if !ok {
			continue
		}
		for _, o := range a.ofds[k] {
			if same, err := linux.Kcmp(a.self, p.pid, o.fd, fd); err == nil && same {
				for _, i := range o.entries {
					lm = append(lm, match{i, fd})
				}
			}
		}
		if k.ino == 0 || len(a.tombsByIno[k.ino]) == 0 {
			continue
		}
		mnt := k.mnt
		if k.typ != "" {
			// A sockfs, pipefs or nsfs inode: its fdinfo has the mount.
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
			if a.tombs[i].dev == dev {
				tm = append(tm, match{i, fd})
			}
		}
	}
	return lm, tm, len(fds)
}

// dev returns the device of mount mnt, which p has a file open through.
func (a *auditor) dev(p *auditProc, mnt int) (uint64, bool) {
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
			a.s.log.Debug("audit: some kernel-internal mounts are unknown", "err", err)
		}
		for id, d := range m {
			a.devs[id] = d
		}
	}
	d, ok := a.devs[mnt]
	return d, ok
}

// kernelMounts is linux.KernelMounts, asked once per agent: those mounts
// live as long as the kernel.
var kernelMounts = sync.OnceValues(linux.KernelMounts)

// hidepid reports whether the /proc of p's mount namespace hides other
// processes, reading the namespace's mountinfo (once per audit) and noting
// its mounts' devices on the way.
func (a *auditor) hidepid(p *auditProc) bool {
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

// holder describes process p and its exposure.
func (a *auditor) holder(p *auditProc, scope int) proto.AuditHolder {
	h := proto.AuditHolder{PID: p.pid, UID: -1}
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
	return h
}

// identify sets h's cgroup, identity and uid from one PIDFD_GET_INFO,
// with the cgroup paths cached by cgroup id (ids are never reused). Without
// the ioctl (Linux < 6.13), or when open_by_handle_at is denied, it falls
// back to cgroupOf and /proc/PID/status.
func (a *auditor) identify(p *auditProc, h *proto.AuditHolder) {
	var info *unix.PidfdInfo
	if !oldKernel.Load() {
		info, _ = linux.PidfdGetInfo(p.pidfd, unix.PIDFD_INFO_CGROUPID|unix.PIDFD_INFO_CREDS)
	}
	cg, ok := "", false
	if info != nil && info.Mask&unix.PIDFD_INFO_CGROUPID != 0 {
		if cg, ok = a.cgroups[info.Cgroupid]; !ok {
			if path, err := a.s.resolver.PathByID(info.Cgroupid); err == nil {
				cg, ok = path, true
				a.cgroups[info.Cgroupid] = path
			}
		}
	}
	if !ok {
		if path, _, err := cgroupOf(p.pidfd, p.pid, a.s.resolver); err == nil {
			cg, ok = path, true
		}
	}
	if ok {
		h.Cgroup = cg
		h.Identity, _, _ = identityOf(cg)
		if ct := a.s.reg.lookup(cg); ct != nil {
			h.Identity = ct.identity
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

// auditFD renders the report into a sealed memfd the caller owns.
func auditFD(rep *proto.AuditReport) (int, error) {
	b, err := json.Marshal(rep)
	if err != nil {
		return -1, err
	}
	return sealedMemfd("capd-audit", b)
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
