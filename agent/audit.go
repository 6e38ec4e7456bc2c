package agent

import (
	"github.com/capd-dev/capd/agent/internal/audit"
	"github.com/capd-dev/capd/internal/proto"
)

// audit finds every process holding a copy of a store entry, and of
// recently removed entries, and says how exposed each holder is (see
// package audit). It holds a reference on every entry while it runs, so
// that their fds stay open.
func (s *Server) audit() (*proto.AuditReport, error) {
	live, tombs := s.store.Hold()
	defer s.store.ReleaseAll(live)
	items := make([]audit.Item, len(live))
	for i, e := range live {
		items[i] = audit.Item{Owner: e.Owner(), Name: e.Name(), Kind: e.Kind(), FD: e.FD()}
	}
	ts := make([]audit.Tomb, len(tombs))
	for i, t := range tombs {
		ts[i] = audit.Tomb{Owner: t.Owner, Name: t.Name, Kind: t.Kind, Dev: t.Dev, Ino: t.Ino, Removed: t.Removed}
	}
	return audit.Run(audit.Env{
		Log:      s.log,
		PathByID: s.resolver.PathByID,
		CgroupOf: func(pidfd, pid int) (string, error) {
			p, _, err := cgroupOf(pidfd, pid, s.resolver)
			return p, err
		},
		Identity:  func(cg string) string { return s.reg.Identify(cg).Name },
		OldKernel: oldKernel.Load(),
	}, items, ts)
}
