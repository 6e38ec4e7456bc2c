package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/enforce"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/activation"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// enforcer makes the store's revokes hold in the kernel with BPF LSM
// (package enforce): the store calls Enforce for every revoked entry and
// grant before it releases the fd. It owns the Enforcer, whose fds the
// agent also keeps in systemd's fd store and passes at a hand-off, so that
// the programs stay attached while the agent restarts.
type enforcer struct {
	e        *enforce.Enforcer
	log      *slog.Logger
	resolver *cgroup.Resolver
	self     uint64 // the agent's own cgroup v2 id: exempt from inode marks of grants, so it can derive others
}

// Enforce implements store.Enforcer. A grant's revoke marks the inode of
// an anonymous file too (or its holder would reopen /proc/self/fd/N and
// get a fresh description), exempting the agent, which derives the other
// consumers' grants by that reopen; an entry's revoke exempts the
// publisher's cgroup if it asked (keep-publisher).
func (f *enforcer) Enforce(e *store.Entry) {
	if e.Restrict()&proto.RestrictRevoked != 0 {
		return // a revoked grant's marker: nobody holds it
	}
	root := e.Root()
	var exempt uint64
	switch {
	case e.IsGrant():
		exempt = f.self
	case root.Restrict()&proto.RestrictKeep != 0:
		exempt = f.cgroupID(root.Cgroup())
	}
	mark := (root.Kind() == "memfd" || root.Kind() == "tmpfile") && f.e.InodeMarks()
	err := f.e.Revoke(e.FD(), e.Number(), exempt, mark)
	if err != nil {
		f.log.Error("revoke not enforced by the kernel: holders keep using their copies", "entry", e.Owner()+":"+e.Name(), "id", e.ID(), "err", err)
	}
}

// cgroupID is the cgroup v2 id (its directory's inode) of cgroup path p,
// 0 if it cannot be read (exempting nobody).
func (f *enforcer) cgroupID(p string) uint64 {
	var st unix.Stat_t
	if linux.Stat(f.resolver.Abs(p), &st) != nil {
		return 0
	}
	return st.Ino
}

// StartEnforcement adopts the programs and maps a previous agent process
// kept (among stored, which it returns without them), or loads them; and
// where the kernel refuses BPF LSM, says so: revocation stays advisory.
// Called before Restore (entries that expired meanwhile are enforced
// then), and CheckLedger after it.
func (s *Server) StartEnforcement(stored []Stored) []Stored {
	var mine []activation.File
	out := stored[:0]
	for _, st := range stored {
		if enforce.IsStored(st.Name) {
			mine = append(mine, activation.File{FD: st.FD, Name: st.Name})
		} else {
			out = append(out, st)
		}
	}
	var e *enforce.Enforcer
	var err error
	adopted := false
	if len(mine) > 0 {
		e, err = enforce.Adopt(mine)
		for _, m := range mine {
			linux.Close(m.FD) // Adopt duplicated what it took
		}
		if err != nil {
			s.log.Error("kernel-enforced revocation state passed at start cannot be adopted: loading it afresh; revocations it enforced are lifted", "err", err)
			if s.mirror != nil {
				s.mirror.Forget(names(mine))
			}
		}
		adopted = err == nil
	}
	if e == nil {
		e, err = enforce.Load()
	}
	if err != nil {
		s.enfWhy = err.Error()
		if errors.Is(err, enforce.ErrUnavailable) {
			// The kernel's choice, the same at every start: no warning.
			s.log.Info("revocation is advisory: the kernel does not run BPF LSM programs here, so holders keep using the copies they have (see docs/SECURITY.md)", "reason", err)
		} else {
			s.log.Error("revocation is advisory: loading the BPF LSM programs failed", "err", err)
		}
		return out
	}
	p, perr := cgroup.ProcPath(os.Getpid())
	f := &enforcer{e: e, log: s.log, resolver: s.resolver}
	if perr == nil {
		f.self = f.cgroupID(p)
	}
	s.enf = f
	s.enfWhy = "bpf-lsm: " + strings.Join(e.Hooks(), ",")
	s.store.SetEnforcer(f)
	s.adopted = adopted
	if adopted {
		s.log.Info("revocation is enforced by the kernel (BPF LSM), adopted from the previous agent process", "in_force", e.Len())
	} else {
		s.log.Info("revocation is enforced by the kernel (BPF LSM)", "hooks", strings.Join(e.Hooks(), ","))
	}
	switch {
	case s.mirror != nil && !adopted:
		if err := s.mirror.Keep(e.Files()); err != nil {
			s.log.Error("cannot keep the BPF LSM programs in systemd's fd store: a restart of the agent lifts every revocation", "err", err)
		}
	case s.mirror != nil:
		s.mirror.Reserve(len(e.Files())) // systemd keeps them already
	}
	return out
}

// CheckLedger compares the restored ledger of enforced revocations with
// the kernel's: with adopted maps it keeps those still in force (a file
// some holder still has); without, it says loudly which revocations are
// no longer enforced, and forgets them.
func (s *Server) CheckLedger() {
	if s.adopted && s.enf != nil {
		in, err := s.enf.e.InForce()
		if err != nil {
			s.log.Warn("cannot read the revocations in force", "err", err)
			return
		}
		var keep []store.Revoked
		for _, r := range s.store.Ledger() {
			if in[r.Seq] > 0 {
				keep = append(keep, r)
			}
		}
		s.store.SetLedger(keep)
		return
	}
	var lost, keep []store.Revoked
	for _, r := range s.store.Ledger() {
		if r.At.Before(s.started) {
			lost = append(lost, r)
		} else {
			keep = append(keep, r) // enforced by this process, at Restore
		}
	}
	s.store.SetLedger(keep)
	if len(lost) == 0 {
		return
	}
	var refs []string
	for _, r := range lost {
		refs = append(refs, fmt.Sprintf("%s:%s (%s, revoked %s)", r.Key.Owner, r.Key.Name, r.ID, r.At.UTC().Format("2006-01-02T15:04:05Z")))
	}
	s.lost = len(lost)
	s.log.Error("KERNEL ENFORCEMENT LOST: revocations the previous agent process had the kernel enforce are no longer enforced; holders of these files can use them again (restart their holders to be sure)",
		"revocations", len(lost), "revoked", strings.Join(refs, "; "))
}

// enforcementFiles are the fds the hand-off passes to the next process.
func (s *Server) enforcementFiles() []activation.File {
	if s.enf == nil {
		return nil
	}
	return s.enf.e.Files()
}

func names(fs []activation.File) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}
