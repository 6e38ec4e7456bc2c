package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/internal/persist"
	"github.com/capd-dev/capd/agent/internal/registry"
	"github.com/capd-dev/capd/agent/internal/store"
	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/fdstore"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/poller"
	"github.com/capd-dev/capd/internal/proto"
)

// Server is a running agent.
type Server struct {
	log      *slog.Logger
	cfg      atomic.Pointer[policy.Config]
	store    *store.Store
	resolver *cgroup.Resolver
	watcher  *cgroup.Watcher
	reg      *registry.Registry
	mirror   *persist.Mirror // nil: not run by systemd with an fd store
	host     host            // the agent's own namespaces, which host administrators share
	poll     *poller.Poller  // Serve waits on the listening socket with it; Drain stops it
	fdLimit  int             // soft RLIMIT_NOFILE, raised to the hard limit
	fdStore  int             // entries systemd's fd store keeps (FileDescriptorStoreMax less the metadata); -1 without one
	reloader func() (*policy.Config, error)
	quit     chan struct{} // closed when the server stops: wakes waiting acquires
	holds    *fdpass.Holds // connections holding a thread for their next request
	stats    counters      // for the metrics endpoint
	enf      *enforcer     // nil: revokes are advisory (no BPF LSM)
	enfWhy   string        // what enforces revokes, or why nothing does
	lost     int           // enforced revocations found lifted at start
	adopted  bool          // the enforcement state came from the previous agent process
	started  time.Time     // when New made the server
	origin   int           // the mount namespace the agent was started in (see origin.go); -1: its own

	mu       sync.Mutex
	conns    map[*conn]struct{}
	perUID   map[uint32]*uidState // by accounting uid
	stopping bool
	wg       sync.WaitGroup
}

// uidState is what the agent keeps per accounting uid: its connections
// and its log limiter. It outlives the uid's last connection while the
// limiter is not idle, so that reconnecting does not refill it.
type uidState struct {
	conns int
	lim   *logLimiter
}

// maxHeld is how many connections may wait for their next request in a
// blocking recvmsg at once, each holding an OS thread for up to a tick
// after its reply before it parks on the runtime's poller (see
// fdpass.Conn): what clients sending requests back to back need to be
// answered at the speed of a blocking server, and a bound on the threads
// that costs. An idle connection holds no thread.
const maxHeld = 16

// maxIdleUIDs bounds the idle uidStates kept before forgetting the idle ones.
const maxIdleUIDs = 1024

// New prepares a server with cfg. It makes the process non-dumpable first,
// before any fd can arrive, so that other users cannot read the agent's fds
// through /proc or ptrace.
func New(cfg *policy.Config, log *slog.Logger) (*Server, error) {
	if err := linux.SetNonDumpable(); err != nil {
		return nil, err
	}
	limit, err := linux.RaiseNofile()
	if err != nil {
		return nil, err
	}
	h, err := hostNamespaces()
	if err != nil {
		return nil, fmt.Errorf("read the agent's own namespaces: %w", err)
	}
	r, err := cgroup.NewResolver()
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:      log,
		resolver: r,
		host:     h,
		fdLimit:  limit,
		fdStore:  -1,
		quit:     make(chan struct{}),
		holds:    fdpass.NewHolds(maxHeld),
		conns:    make(map[*conn]struct{}),
		perUID:   make(map[uint32]*uidState),
		origin:   -1,
		started:  time.Now(),
	}
	if s.poll, err = poller.New(); err != nil {
		r.Close()
		return nil, err
	}
	s.watcher, err = cgroup.NewWatcher(r.Mount(), s.cgroupEmptied)
	if err != nil {
		r.Close()
		s.poll.Close()
		return nil, err
	}
	s.store = store.New(s.watcher, nil)
	s.store.SetTreeCloner(s.cloneTree)
	s.reg = registry.NewRegistry(s.watcher, cgroupFS{r})
	fs, err := fdstore.Open()
	if err != nil {
		log.Warn("systemd's notification socket is unusable; entries will not survive a restart", "err", err)
	} else if fs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := fdstore.Capacity(ctx)
		cancel()
		if err != nil {
			log.Error("cannot learn how many fds systemd's fd store keeps; entries past its FileDescriptorStoreMax= would be acknowledged and lost at a restart", "err", err)
		} else {
			s.fdStore = max(n-persist.MetaFDs, 0)
		}
		s.mirror = persist.NewMirror(fs, log, s.store, s.reg, s.fdStore)
	}
	s.cfg.Store(cfg)
	s.checkCapacity(cfg)
	return s, nil
}

// SetReloader sets what a RELOAD request runs: it must read the
// configuration, Reload the server with it and return it, or return why
// not. Call it before Serve.
func (s *Server) SetReloader(f func() (*policy.Config, error)) { s.reloader = f }

// Reload swaps in a new configuration. Connections see it from their next
// request; stored entries are untouched, even where a lowered limit is now
// below usage (new publishes there are refused).
func (s *Server) Reload(cfg *policy.Config) {
	s.cfg.Store(cfg)
	s.checkCapacity(cfg)
}

// rootReserve is how many connection slots only root of the agent's user
// namespace may take, so that an admin can still run status and revoke
// while other users fill the rest.
func rootReserve(cfg *policy.Config) int { return min(8, cfg.Agent.MaxConnections/8) }

// fdReserve is how many fds the agent keeps beside its entries: one socket
// per connection plus the fds a request may carry in flight (up to
// maxRecvFDs before the surplus is closed) or, while the connection waits
// on the runtime's poller, the duplicate of its socket the poller watches
// (see fdpass.Conn), and its own.
func fdReserve(cfg *policy.Config) int { return (1+maxRecvFDs)*cfg.Agent.MaxConnections + 64 }

// capacity returns the soft RLIMIT_NOFILE and how many entries fit in it
// under cfg.
func (s *Server) capacity(cfg *policy.Config) (fdLimit, entries int) {
	return s.fdLimit, max(s.fdLimit-fdReserve(cfg), 0)
}

// maxEntries is the whole store's limit: max_entries, or what the fd limit
// or systemd's fd store leaves room for if that is less.
func (s *Server) maxEntries(cfg *policy.Config) int {
	_, room := s.capacity(cfg)
	if s.fdStore >= 0 {
		room = min(room, s.fdStore)
	}
	return min(cfg.Agent.MaxEntries, room)
}

// entriesSource names what bounds the whole store when it is not
// max_entries.
func (s *Server) entriesSource(cfg *policy.Config) string {
	if _, room := s.capacity(cfg); s.fdStore >= 0 && s.fdStore < room {
		return "FileDescriptorStoreMax"
	}
	return "RLIMIT_NOFILE"
}

// checkCapacity logs how many fds the agent can hold, and says with numbers
// when the configured limits do not fit.
func (s *Server) checkCapacity(cfg *policy.Config) {
	limit, room := s.capacity(cfg)
	s.log.Info("fd capacity", "rlimit_nofile", limit, "reserved", fdReserve(cfg), "room_for_entries", room, "max_entries", cfg.Agent.MaxEntries)
	if cfg.Agent.MaxEntries > room {
		s.log.Warn("configured limits do not fit the fd limit; the store stops at what fits",
			"max_entries", cfg.Agent.MaxEntries, "rlimit_nofile", limit,
			"reserved_for_connections", fdReserve(cfg), "entries_that_fit", room)
	}
	if s.fdStore >= 0 {
		s.log.Info("systemd's fd store", "file_descriptor_store_max", s.fdStore+persist.MetaFDs, "room_for_entries", s.fdStore)
		if cfg.Agent.MaxEntries > s.fdStore {
			s.log.Warn("max_entries does not fit systemd's fd store; the store stops at what systemd keeps (raise FileDescriptorStoreMax= to max_entries + 2)",
				"max_entries", cfg.Agent.MaxEntries, "file_descriptor_store_max", s.fdStore+persist.MetaFDs, "entries_that_fit", s.fdStore)
		}
		room = min(room, s.fdStore)
	}
	if n := s.store.Len(); n > room {
		s.log.Warn("the store holds more entries than now fit; keeping them, refusing new ones", "entries", n, "entries_that_fit", room)
	}
}

// draining reports whether Drain or Shutdown has begun.
func (s *Server) draining() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// Containers returns the number of registered containers.
func (s *Server) Containers() int { return s.reg.Len() }

// Responsive reports whether the server's and the store's locks can be
// taken within d: the watchdog's sign of life, which a deadlock fails.
func (s *Server) Responsive(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		// Taking each lock is the whole check.
		s.mu.Lock()
		s.mu.Unlock()
		s.store.Responsive()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// Entries returns the number of stored entries.
func (s *Server) Entries() int { return s.store.Len() }

// Serve accepts connections on l until Drain or Shutdown; call it once. It
// does not close l.
func (s *Server) Serve(l *Listener) error {
	for {
		if err := s.poll.Wait(l.fd); errors.Is(err, poller.ErrStopped) {
			return nil
		} else if err != nil {
			return fmt.Errorf("listening socket: %w", err)
		}
		nfd, err := linux.Accept4(l.fd)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ECONNABORTED):
				continue
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				s.log.Warn("accept failed; backing off", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return err
		}
		s.admit(nfd)
	}
}

// admit starts serving nfd unless a connection limit is reached, in which
// case the client gets one busy reply and a closed connection.
func (s *Server) admit(nfd int) {
	cfg := s.cfg.Load()
	// Credentials and a pidfd once per connection: admission counts them,
	// the connection's goroutine identifies the peer with them.
	cred, err := linux.PeerCred(nfd)
	if err != nil {
		linux.Close(nfd)
		return
	}
	pidfd, pidfdErr := peerPidfd(nfd, cred)
	acct := acctUID(cred, pidfd, s.host)
	s.mu.Lock()
	us := s.uidLocked(acct)
	var reason string
	var class connRefusal
	switch {
	case s.stopping:
		reason, class = "agent is shutting down", refusedShuttingDown
	case len(s.conns) >= cfg.Agent.MaxConnections:
		reason, class = fmt.Sprintf("agent has %d connections, its limit", len(s.conns)), refusedLimit
	case (cred.Uid != 0 || acct != 0) && len(s.conns) >= cfg.Agent.MaxConnections-rootReserve(cfg):
		reason, class = fmt.Sprintf("agent has %d connections; the last %d are kept for root", len(s.conns), rootReserve(cfg)), refusedRootReserve
	case us.conns >= cfg.Agent.MaxConnectionsPerUID:
		reason, class = fmt.Sprintf("uid %d has %d connections, its limit", acct, us.conns), refusedPerUID
		if acct != cred.Uid {
			reason = fmt.Sprintf("uid %d (which owns the user namespace of uid %d) has %d connections, its limit", acct, cred.Uid, us.conns)
		}
	}
	log := slog.New(limitedHandler{s.log.Handler(), us.lim, acct})
	if reason != "" {
		s.mu.Unlock()
		s.stats.refused[class].Add(1)
		log.Warn("connection refused", "uid", cred.Uid, "acct_uid", acct, "pid", cred.Pid, "reason", reason)
		if pidfd >= 0 {
			linux.Close(pidfd)
		}
		refuse(nfd, reason)
		return
	}
	// Admitted: on the runtime's poller from here (refuse answers on the
	// plain socket), before the connection is in s.conns for Drain to wake.
	sock, err := fdpass.NewConn(nfd, s.holds)
	if err != nil {
		s.mu.Unlock()
		log.Warn("cannot serve connection; closed it", "uid", cred.Uid, "pid", cred.Pid, "err", err)
		if pidfd >= 0 {
			linux.Close(pidfd)
		}
		return
	}
	c := &conn{srv: s, sock: sock, acct: acct, log: log, cred: cred, pidfdErr: pidfdErr}
	c.pidfd.Own(pidfd)
	s.conns[c] = struct{}{}
	us.conns++
	s.wg.Add(1)
	s.mu.Unlock()
	s.stats.connections.Add(1)
	go c.serve(cfg)
}

// refuse answers busy on nfd and closes it, so that the client reads the
// reply whether or not it has sent its request yet: after the reply, the
// agent shuts its receiving side down, which makes the client's sends fail
// (EPIPE, after which the client reads the reply) instead of queueing; it
// drains what was queued before, and closes a socket with nothing unread,
// which would otherwise reset the connection and lose the reply. Nothing
// here waits for the client.
func refuse(nfd int, reason string) {
	var b [256]byte
	m := proto.NewMessage(b[:0], 0, proto.CodeBusy)
	m.String(proto.AttrMessage, reason)
	setTimeout(nfd, unix.SO_SNDTIMEO, 100*time.Millisecond)
	fdpass.Send(nfd, m.Bytes())
	linux.Shutdown(nfd, unix.SHUT_RD)
	oob := make([]byte, fdpass.OOBSize(maxRecvFDs))
	var fdbuf [maxRecvFDs]int
	for range 64 { // a client has at most a few requests queued
		n, fds, err := fdpass.RecvFlags(nfd, b[:], oob, fdbuf[:0], maxRecvFDs, unix.MSG_DONTWAIT)
		for _, fd := range fds {
			linux.Close(fd)
		}
		var se *os.SyscallError
		if errors.As(err, &se) || (err == nil && n == 0 && len(fds) == 0) {
			break // EAGAIN: nothing queued; 0: the peer closed
		}
	}
	linux.Close(nfd)
}

// uidLocked returns the state of accounting uid acct, creating it.
func (s *Server) uidLocked(acct uint32) *uidState {
	us := s.perUID[acct]
	if us == nil {
		if len(s.perUID) >= maxIdleUIDs {
			now := time.Now()
			for u, o := range s.perUID {
				if o.conns == 0 && o.lim.idle(now) {
					delete(s.perUID, u)
				}
			}
		}
		us = &uidState{lim: newLogLimiter()}
		s.perUID[acct] = us
	}
	return us
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if us := s.perUID[c.acct]; us != nil {
		if us.conns--; us.conns <= 0 && us.lim.idle(time.Now()) {
			delete(s.perUID, c.acct)
		}
	}
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops Serve, wakes and ends every connection, waits for them and
// closes every stored fd. ctx bounds the wait for connections.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.Drain(ctx)
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if stuck, cerr := s.store.Close(cctx); cerr != nil {
		s.log.Warn("fds still being closed at shutdown; left to the kernel", "per_uid", stuck, "err", cerr)
	}
	return err
}

// Drain stops Serve and ends every connection (their clients reconnect),
// waiting for them up to ctx, but keeps the store: for Handoff. A second
// Drain or Shutdown does nothing more.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return nil
	}
	s.stopping = true
	close(s.quit)
	s.poll.Stop()
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("connections still open at shutdown: %w", ctx.Err())
	}
	return err
}

// Close releases the server's own fds after Shutdown. If connections
// outlived Shutdown's deadline, it leaves the fds they may still use open
// (the process is about to exit anyway) and says so.
func (s *Server) Close() error {
	s.mu.Lock()
	busy := len(s.conns)
	s.mu.Unlock()
	if busy > 0 {
		return fmt.Errorf("%d connections still running; server fds left open", busy)
	}
	s.reg.Close()
	if s.mirror != nil {
		s.mirror.Close()
	}
	s.watcher.Close()
	s.poll.Close()
	if s.enf != nil {
		s.enf.e.Close() // systemd's copies (or the next process's) keep the programs attached
	}
	if s.origin >= 0 {
		linux.Close(s.origin)
		s.origin = -1
	}
	return s.resolver.Close()
}

// limits are the limits of one publish under cfg.
func (s *Server) limits(cfg *policy.Config) *store.Limits {
	max := s.maxEntries(cfg)
	return &store.Limits{
		Max:          max,
		Reserve:      cfg.Agent.AdminReserve(max),
		PerUID:       cfg.Agent.MaxEntriesPerUID,
		PinnedPerUID: cfg.Agent.MaxPinnedPerUID,
		Node:         cfg.NodeLimits,

		MaxGrants:     cfg.Agent.MaxGrants,
		MaxGrantDepth: cfg.Agent.MaxGrantDepth,
	}
}

// enforcement says what a revoke does on this agent: "enforced" when the
// kernel refuses a revoked description to every holder (BPF LSM),
// "advisory" when the agent only stops handing it out and verifying it.
func (s *Server) enforcement() string {
	if s.enf != nil {
		return "enforced"
	}
	return "advisory"
}

// synced brings systemd's copy of the metadata up to date, if there is
// one, and waits until systemd confirmed every change so far.
func (s *Server) synced() error {
	if s.mirror == nil {
		return nil
	}
	return s.mirror.Sync()
}

// durable syncs and reports whether the change to entry id reached
// systemd's fd store and was confirmed.
func (s *Server) durable(id string) error {
	if s.mirror == nil {
		return nil
	}
	return s.mirror.Durable(id)
}

// cgroupEmptied is the watcher's report that cgroup p has no processes
// left: the store drops the unpinned entries it owns, and a container
// registered there ends.
func (s *Server) cgroupEmptied(p string, epoch uint64) {
	if n := s.store.OwnerEmptied(p, epoch); n > 0 {
		s.log.Info("owner cgroup emptied; dropped its unpinned entries", "cgroup", p, "dropped", n)
	}
	if ct := s.reg.Emptied(p, epoch); ct != nil {
		n := s.store.DropOwned(ct.Cgroup)
		s.synced()
		s.log.Info("container has no processes left; unregistered", "id", ct.ID, "identity", ct.Identity, "dropped", n)
	}
}

// Stored is one fd handed to the agent at start, by name (see Restore).
type Stored = persist.Stored

// Restore rebuilds the store and registry from the fds passed at start
// (systemd's fd store, or a hand-off; owned by Restore from here on) and
// returns how many entries it restored (see persist.Restore).
func (s *Server) Restore(stored []Stored) int {
	return persist.Restore(s.log, stored, s.store, s.reg, s.mirror)
}

// Handoff freezes the store and returns the fds, with their names, that a
// new agent process restores everything from (see persist.Handoff). The
// fds stay open until the process execs; if it does not, it must exit. On
// error it has released what it took.
func (s *Server) Handoff() (names []string, fds []int, err error) {
	return persist.Handoff(s.store, s.reg, s.mirror)
}

// cgroupFS is what the registry reads of cgroups: the v2 hierarchy.
type cgroupFS struct{ r *cgroup.Resolver }

func (c cgroupFS) ID(p string) (uint64, error) {
	var st unix.Stat_t
	if err := linux.Stat(c.r.Abs(p), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (c cgroupFS) Populated(p string) (bool, error) { return cgroup.Populated(c.r.Abs(p)) }

func setTimeout(fd, opt int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return linux.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv)
}
