package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

type fileID struct{ dev, ino uint64 }

// audit finds every process holding a copy of a store entry, and of
// recently removed entries, and says how exposed each holder is. It walks
// /proc once: for each process it first takes a pidfd, then lists its fds
// and stats each (the link target's device and inode); only fds on the
// file of an entry are compared with the entry's fd by kcmp(KCMP_FILE).
// A process whose pidfd shows it exited by the end of its scan is left out,
// so a recycled pid is never reported.
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

	byFile := make(map[fileID][]int) // index into live
	for i, e := range live {
		byFile[fileID{e.dev, e.ino}] = append(byFile[fileID{e.dev, e.ino}], i)
	}
	tombByFile := make(map[fileID][]int)
	for i, t := range tombs {
		tombByFile[fileID{t.dev, t.ino}] = append(tombByFile[fileID{t.dev, t.ino}], i)
	}
	liveHolders := make([][]proto.AuditHolder, len(live))
	tombHolders := make([][]proto.AuditHolder, len(tombs))
	hidden := map[string]bool{} // mount namespace -> /proc has hidepid

	proc, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := proc.Readdirnames(-1)
	proc.Close()
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == self {
			continue
		}
		pidfd, err := linux.PidfdOpen(pid)
		if err != nil {
			continue // exited
		}
		rep.Processes++
		lh, th, nfd := s.scanProcess(pid, live, byFile, tombByFile)
		rep.FDs += nfd
		if len(lh)+len(th) > 0 {
			h := s.holder(pid, pidfd, hidden, rep.PtraceScope)
			if alive, _ := linux.PidfdAlive(pidfd); alive {
				for _, m := range lh {
					hh := h
					hh.FD = m.fd
					liveHolders[m.i] = append(liveHolders[m.i], hh)
				}
				for _, m := range th {
					hh := h
					hh.FD = m.fd
					tombHolders[m.i] = append(tombHolders[m.i], hh)
				}
			}
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

// scanProcess lists pid's fds and returns those holding a live entry's
// open file description, those on a removed entry's file, and the number
// of fds seen.
func (s *Server) scanProcess(pid int, live []*entry, byFile, tombByFile map[fileID][]int) (lm, tm []match, n int) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, 0
	}
	f := os.NewFile(uintptr(dfd), dir)
	fds, _ := f.Readdirnames(-1)
	var st unix.Stat_t
	for _, name := range fds {
		fd, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		n++
		if unix.Fstatat(dfd, name, &st, 0) != nil {
			continue
		}
		id := fileID{st.Dev, st.Ino}
		for _, i := range byFile[id] {
			if same, err := linux.Kcmp(os.Getpid(), pid, live[i].fd, fd); err == nil && same {
				lm = append(lm, match{i, fd})
			}
		}
		for _, i := range tombByFile[id] {
			tm = append(tm, match{i, fd})
		}
	}
	f.Close()
	return lm, tm, n
}

// holder describes process pid (held by pidfd) and its exposure.
func (s *Server) holder(pid, pidfd int, hidden map[string]bool, scope int) proto.AuditHolder {
	h := proto.AuditHolder{PID: pid, UID: -1}
	if p, _, err := cgroupOf(pidfd, pid, s.resolver); err == nil {
		h.Cgroup = p
		h.Identity, _ = cgroup.Owner(p)
		if ct := s.reg.lookup(p); ct != nil {
			h.Identity = ct.identity
		}
	}
	if uid, ok := procUID(pid); ok {
		h.UID = uid
	}
	var st unix.Stat_t
	if h.UID > 0 && unix.Stat("/proc/"+strconv.Itoa(pid), &st) == nil {
		// Linux makes a non-dumpable process's /proc files root's.
		d := st.Uid != 0
		h.Dumpable = &d
	}
	if ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt"); err == nil {
		hid, ok := hidden[ns]
		if !ok {
			hid = procHasHidepid(pid)
			hidden[ns] = hid
		}
		h.ProcHidden = hid
	}
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
		h.Exposure = append(h.Exposure, "dumpable: any process of uid "+uid+" may reopen /proc/"+strconv.Itoa(pid)+"/fd/N")
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

// procUID reads the real uid from /proc/PID/status.
func procUID(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				uid, err := strconv.Atoi(f[0])
				return uid, err == nil
			}
		}
	}
	return 0, false
}

// procHasHidepid reports whether the /proc in pid's mount namespace (the
// last mount on /proc, which hides those below it) hides other processes.
func procHasHidepid(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		return false
	}
	hidden := false
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || f[4] != "/proc" {
			continue
		}
		hidden = strings.Contains(l, "hidepid=invisible") || strings.Contains(l, "hidepid=noaccess") ||
			strings.Contains(l, "hidepid=2") || strings.Contains(l, "hidepid=4") || strings.Contains(l, "hidepid=ptraceable")
	}
	return hidden
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
