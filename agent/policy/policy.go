// Package policy loads the admin's capd configuration (one TOML file plus
// drop-ins in conf.d/) and answers the questions the agent asks: may this
// consumer identity take this entry (on every acquire), and how many entries
// and pins may a cgroup hold (on every publish)?
//
// Policy is default deny: nothing is granted unless a [[grant]] names it, and
// root gets no implicit grants. A Config is immutable once loaded, so the
// agent swaps whole Configs atomically on reload. The package owns no fds.
package policy

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/capd-dev/capd/cgroup"

	"github.com/capd-dev/capd/internal/proto"
)

// DefaultPath is where the agent looks for its configuration.
const DefaultPath = "/etc/capd/capd.toml"

// Agent settings and their defaults.
const (
	DefaultMaxConnections       = 512
	DefaultMaxConnectionsPerUID = 64
	DefaultIdleTimeout          = 60 * time.Second
	DefaultSendTimeout          = 5 * time.Second
	DefaultMaxEntries           = 8192
	// Limits of an owner cgroup that no [[quota]] names.
	DefaultCgroupMaxEntries = 1024
	DefaultCgroupMaxPinned  = 256
	// Limits of one uid that is not a host administrator.
	DefaultMaxEntriesPerUID = 1024
	DefaultMaxPinnedPerUID  = 256
	// Grants of one entry (its consumers) or of one grant (its
	// delegations), and how deep delegations go.
	DefaultMaxGrants     = 64
	DefaultMaxGrantDepth = 3
)

// Unlimited is a Limits value that does not limit.
const Unlimited = -1

// Config is one loaded configuration.
type Config struct {
	Agent   AgentConfig   `toml:"agent"`
	NRI     NRIConfig     `toml:"nri"`
	Metrics MetricsConfig `toml:"metrics"`
	Grants  []Grant       `toml:"grant"`
	Quotas  []Quota       `toml:"quota"`
	// Files lists the files this Config was read from, in order.
	Files []string `toml:"-"`
	// Warnings are what loading found suspicious but not wrong, each with
	// its file, line and column: patterns that can never match.
	Warnings []string `toml:"-"`

	byCgroup map[string]Limits // explicit quotas by cgroup path
	byUnit   map[string]Limits // explicit quotas by unit name
	listenAt string            // FILE:LINE:COL of the metrics.listen in force
}

// AgentConfig holds the agent's own limits.
type AgentConfig struct {
	// MaxConnections bounds concurrent client connections.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerUID bounds concurrent connections of one uid.
	MaxConnectionsPerUID int `toml:"max_connections_per_uid"`
	// IdleTimeout closes connections that send nothing for this long.
	IdleTimeout Duration `toml:"idle_timeout"`
	// SendTimeout gives up on a client that does not read its reply.
	SendTimeout Duration `toml:"send_timeout"`
	// MaxEntries bounds the whole store.
	MaxEntries int `toml:"max_entries"`
	// DefaultMaxEntries and DefaultMaxPinned limit an owner cgroup (the
	// cgroup of a publishing unit, or a plain cgroup identity's own) that
	// no [[quota]] names.
	DefaultMaxEntries int `toml:"default_max_entries"`
	DefaultMaxPinned  int `toml:"default_max_pinned"`
	// MaxEntriesPerUID and MaxPinnedPerUID limit what one uid (the owner
	// of a user namespace for the uids inside it) may hold, wherever it
	// publishes; host administrators are exempt.
	MaxEntriesPerUID int `toml:"max_entries_per_uid"`
	MaxPinnedPerUID  int `toml:"max_pinned_per_uid"`
	// MaxGrants bounds the per-consumer grants of one entry, and the
	// delegations made from one grant; MaxGrantDepth how deep grants go
	// (1: the consumers' own; 2: one delegation from them; ...). A grant
	// counts as an entry of the consumer or delegator that made it.
	MaxGrants     int `toml:"max_grants"`
	MaxGrantDepth int `toml:"max_grant_depth"`
}

// NRIConfig configures capd-nri, the NRI plugin that registers the
// containers of a Kubernetes node (containerd) with the agent. The agent
// itself does not read it.
type NRIConfig struct {
	// Enable must be set for capd-nri to run.
	Enable bool `toml:"enable"`
	// Socket is the runtime's NRI socket.
	Socket string `toml:"socket"`
	// PluginName and PluginIndex register the plugin with NRI (the index
	// orders plugins: two digits).
	PluginName  string `toml:"plugin_name"`
	PluginIndex string `toml:"plugin_index"`
	// AgentSocket and Binary are the agent's socket and the static capd
	// binary as the runtime sees them (host paths): both are bound into
	// annotated containers at /run/capd.
	AgentSocket string `toml:"agent_socket"`
	Binary      string `toml:"binary"`
}

// The NRI defaults.
const (
	DefaultNRISocket      = "/var/run/nri/nri.sock"
	DefaultNRIPluginName  = "capd"
	DefaultNRIPluginIndex = "50"
	DefaultNRIBinary      = "/usr/bin/capd"
	DefaultNRIAgentSocket = "/run/capd/capd.sock"
)

// MetricsConfig configures the agent's metrics endpoint (docs/METRICS.md):
// Prometheus's text format over HTTP/1.x, GET /metrics, on a unix socket,
// a TCP address or both. Each is off unless set; the agent reads them at
// start only (a reload that changes them says a restart is needed).
type MetricsConfig struct {
	// Socket is the path of a unix stream socket, mode 0600: only root
	// connects (a scraper running as root, or a proxy such as socat).
	Socket string `toml:"socket"`
	// Listen is a TCP address, IP:PORT (an IP literal; port 0 picks one,
	// which the agent logs), for Prometheus, which cannot scrape a unix
	// socket. It must be a loopback address unless AllowRemote is set.
	Listen string `toml:"listen"`
	// AllowRemote allows a Listen address that is not loopback. The
	// endpoint has no authentication and no TLS, and it shows what only
	// host administrators see on the agent's socket (status): how much the
	// host holds and how often which actions are refused, as they happen.
	AllowRemote bool `toml:"allow_remote"`
}

// ListenAddr is Listen parsed; the zero AddrPort when Listen is "". Load
// has validated it.
func (m *MetricsConfig) ListenAddr() netip.AddrPort {
	a, _ := netip.ParseAddrPort(m.Listen)
	return a
}

// maxSocketPath is the longest unix socket path bind(2) takes (sun_path
// less its terminating NUL).
const maxSocketPath = 107

// AdminReserve is how many entries of the whole store only host
// administrators may fill: the last eighth, at most 256.
func (a *AgentConfig) AdminReserve(max int) int { return min(256, max/8) }

// Quota limits the entries held by a cgroup and everything below it. Cgroup
// names one cgroup v2 path; Unit names every cgroup called so ("x.service",
// "machine.slice"), wherever it sits. A limit left out does not limit.
type Quota struct {
	Cgroup     string `toml:"cgroup"`
	Unit       string `toml:"unit"`
	MaxPinned  *int   `toml:"max_pinned"`
	MaxEntries *int   `toml:"max_entries"`
}

// Target is the quota's "cgroup=PATH" or "unit=NAME".
func (q *Quota) Target() string {
	if q.Unit != "" {
		return "unit=" + q.Unit
	}
	return "cgroup=" + q.Cgroup
}

// Limits are the limits on one cgroup node: entries (pinned or not) and
// pins, counted over the node and all its descendants. Unlimited where no
// limit applies. Source says where each came from, for messages.
type Limits struct {
	MaxEntries, MaxPinned       int
	EntriesSource, PinnedSource string
}

func (l *Limits) tighten(o Limits) {
	if o.MaxEntries != Unlimited && (l.MaxEntries == Unlimited || o.MaxEntries < l.MaxEntries) {
		l.MaxEntries, l.EntriesSource = o.MaxEntries, o.EntriesSource
	}
	if o.MaxPinned != Unlimited && (l.MaxPinned == Unlimited || o.MaxPinned < l.MaxPinned) {
		l.MaxPinned, l.PinnedSource = o.MaxPinned, o.PinnedSource
	}
}

// NodeLimits returns the limits on cgroup path p. Explicit quotas for the
// path and for its unit name combine, the tightest winning; an owner
// cgroup that has none gets the defaults. The whole store's max_entries is
// not included: the agent applies it separately.
func (c *Config) NodeLimits(p string, owner bool) Limits {
	l := Limits{MaxEntries: Unlimited, MaxPinned: Unlimited}
	q, explicit := c.byCgroup[p]
	if explicit {
		l.tighten(q)
	}
	if u, ok := c.byUnit[path.Base(p)]; ok && p != "/" {
		l.tighten(u)
		explicit = true
	}
	if !explicit && owner && p != "/" {
		l = Limits{
			MaxEntries: c.Agent.DefaultMaxEntries, EntriesSource: "default_max_entries",
			MaxPinned: c.Agent.DefaultMaxPinned, PinnedSource: "default_max_pinned",
		}
	}
	return l
}

// Grant lets identities matching Consumer acquire the entries matching
// Acquire. AllowKinds lets it deliver kinds of fd that are not confined to
// a container's root ("dir", "path") to consumers in containers.
//
// PerConsumer gives each consumer a grant of its own (its own open file
// description: a reopened file, a directory as a detached mount), which
// the publisher can tell apart and revoke alone; Restrict withholds more
// ("read-only"; for directories also "nosuid", "nodev", "noexec") and
// implies it. DelegateTo lets the consumer delegate the entries to
// identities matching these patterns, as grants derived from its own.
type Grant struct {
	Consumer    Pattern    `toml:"consumer"`
	Acquire     []EntryRef `toml:"acquire"`
	AllowKinds  []string   `toml:"allow_kinds"`
	PerConsumer bool       `toml:"per_consumer"`
	Restrict    []string   `toml:"restrict"`
	DelegateTo  []Pattern  `toml:"delegate_to"`

	restrict proto.Restrict // Restriction, computed once when loaded
}

// Restriction is the proto.Restrict bits of the grant's Restrict (checked
// when loaded), with RestrictOwn if it asks for anything.
func (g *Grant) Restriction() proto.Restrict { return g.restrict }

// restriction computes Restriction from Restrict and PerConsumer.
func (g *Grant) restriction() proto.Restrict {
	var r proto.Restrict
	for _, n := range g.Restrict {
		b, _ := proto.ParseRestrict(n)
		r |= b
	}
	if r != 0 || g.PerConsumer {
		r |= proto.RestrictOwn
	}
	return r
}

// Pattern is an identity glob: "zincati.service", "container:web-*",
// "cgroup:/machine.slice/*". '*' matches any run of characters except '/'
// and ':', '?' one such character, [...] a class (path.Match syntax,
// negated with [^...]). Pattern and identity are matched part by part
// between the ':' that separate an identity's kind from its name, so a
// wildcard never crosses into or out of a kind prefix: "*.service" matches
// unit identities only, never "container:x.service", and "*" matches no
// "container:", "cgroup:", "pod:" or "machine:" identity.
type Pattern string

// UnmarshalText validates the pattern.
func (p *Pattern) UnmarshalText(b []byte) error {
	s := string(b)
	if err := ValidPattern(s); err != nil {
		return err
	}
	*p = Pattern(s)
	return nil
}

// Match reports whether identity matches the pattern.
func (p Pattern) Match(identity string) bool {
	ps, is := string(p), identity
	for {
		pp, prest, pmore := strings.Cut(ps, ":")
		ip, irest, imore := strings.Cut(is, ":")
		if ok, _ := path.Match(pp, ip); !ok || pmore != imore {
			return false
		}
		if !pmore {
			return true
		}
		ps, is = prest, irest
	}
}

// ValidPattern reports why s is not a usable identity pattern.
func ValidPattern(s string) error {
	if s == "" {
		return errors.New("empty identity pattern")
	}
	if len(s) > proto.MaxIdentity {
		return fmt.Errorf("identity pattern longer than %d bytes", proto.MaxIdentity)
	}
	for _, part := range strings.Split(s, ":") {
		if _, err := path.Match(part, ""); err != nil {
			return fmt.Errorf("identity pattern %q: %w (a class cannot hold ':')", s, err)
		}
	}
	return negation(s)
}

// negation rejects fnmatch's "[!...]", which path.Match would read as a
// class containing '!': capd's classes negate with "[^...]".
func negation(s string) error {
	if strings.Contains(s, "[!") {
		return fmt.Errorf("pattern %q: negate a class with [^...], not [!...]", s)
	}
	return nil
}

// EntryRef is an "OWNER:NAME" pattern; both halves may use globs.
type EntryRef struct {
	Owner Pattern
	Name  string
}

var lastKeyRE = regexp.MustCompile(`\(last key "([^"]+)"\)`)

var nameGlob = regexp.MustCompile(`^[A-Za-z0-9._@+=*?\[\]!^-]+$`)

// UnmarshalText splits at the last ':' and validates both halves.
func (r *EntryRef) UnmarshalText(b []byte) error {
	s := string(b)
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return fmt.Errorf("entry %q is not OWNER:NAME (e.g. rpm-ostreed.service:zincati-fd)", s)
	}
	owner, name := s[:i], s[i+1:]
	if err := ValidPattern(owner); err != nil {
		return fmt.Errorf("entry %q: %w", s, err)
	}
	if !nameGlob.MatchString(name) {
		return fmt.Errorf("entry %q: name may use only letters, digits, . _ - @ + = and globs", s)
	}
	if _, err := path.Match(name, ""); err != nil {
		return fmt.Errorf("entry %q: %w", s, err)
	}
	if err := negation(name); err != nil {
		return fmt.Errorf("entry %q: %w", s, err)
	}
	r.Owner, r.Name = Pattern(owner), name
	return nil
}

// Match reports whether owner:name matches the reference.
func (r EntryRef) Match(owner, name string) bool {
	if ok, _ := path.Match(r.Name, name); !ok {
		return false
	}
	return r.Owner.Match(owner)
}

func (r EntryRef) String() string { return string(r.Owner) + ":" + r.Name }

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalText parses a positive duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %q must be positive", b)
	}
	*d = Duration(v)
	return nil
}

// Default returns the deny-all configuration with default limits.
func Default() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	a := &c.Agent
	if a.MaxConnections == 0 {
		a.MaxConnections = DefaultMaxConnections
	}
	if a.MaxConnectionsPerUID == 0 {
		a.MaxConnectionsPerUID = DefaultMaxConnectionsPerUID
	}
	if a.IdleTimeout == 0 {
		a.IdleTimeout = Duration(DefaultIdleTimeout)
	}
	if a.SendTimeout == 0 {
		a.SendTimeout = Duration(DefaultSendTimeout)
	}
	if a.MaxEntries == 0 {
		a.MaxEntries = DefaultMaxEntries
	}
	if a.DefaultMaxEntries == 0 {
		a.DefaultMaxEntries = DefaultCgroupMaxEntries
	}
	if a.DefaultMaxPinned == 0 {
		a.DefaultMaxPinned = DefaultCgroupMaxPinned
	}
	if a.MaxEntriesPerUID == 0 {
		a.MaxEntriesPerUID = DefaultMaxEntriesPerUID
	}
	if a.MaxPinnedPerUID == 0 {
		a.MaxPinnedPerUID = DefaultMaxPinnedPerUID
	}
	if a.MaxGrants == 0 {
		a.MaxGrants = DefaultMaxGrants
	}
	if a.MaxGrantDepth == 0 {
		a.MaxGrantDepth = DefaultMaxGrantDepth
	}
	n := &c.NRI
	for _, d := range []struct {
		v   *string
		def string
	}{
		{&n.Socket, DefaultNRISocket}, {&n.PluginName, DefaultNRIPluginName}, {&n.PluginIndex, DefaultNRIPluginIndex},
		{&n.Binary, DefaultNRIBinary}, {&n.AgentSocket, DefaultNRIAgentSocket},
	} {
		if *d.v == "" {
			*d.v = d.def
		}
	}
	if c.byCgroup == nil {
		c.byCgroup = map[string]Limits{}
		c.byUnit = map[string]Limits{}
	}
}

// Load reads file and then every *.toml in conf.d/ beside it, in lexical
// order. Grants from all files add up; a later [agent], [nri] or [metrics]
// setting overrides an earlier one. If file does not exist and missingOK is set, Load returns the
// deny-all default (drop-ins are still read). Errors name the file, and the
// line and key where the TOML decoder knows them.
func Load(file string, missingOK bool) (*Config, error) {
	c := &Config{}
	if err := c.loadFile(file); err != nil {
		if !(missingOK && errors.Is(err, os.ErrNotExist)) {
			return nil, err
		}
	}
	dropins, err := DropIns(file)
	if err != nil {
		return nil, err
	}
	for _, f := range dropins {
		if err := c.loadFile(f); err != nil {
			return nil, err
		}
	}
	if err := c.checkMetrics(); err != nil {
		return nil, err
	}
	c.setDefaults()
	return c, nil
}

// System drop-in directories, read for the default configuration file, in
// ascending precedence as systemd reads its own: a file in /etc overrides
// one of the same name in /run, which overrides /usr/lib.
var systemDropIns = []string{"/usr/lib/capd/conf.d", "/run/capd/conf.d", "/etc/capd/conf.d"}

// DropIns lists the *.toml drop-ins read after file, in the order read:
// for DefaultPath those of /usr/lib/capd/conf.d, /run/capd/conf.d and
// /etc/capd/conf.d, a name in a later directory replacing the same name in
// an earlier one, sorted by name; for any other file those of conf.d beside
// it.
func DropIns(file string) ([]string, error) {
	dirs := []string{filepath.Join(filepath.Dir(file), "conf.d")}
	if filepath.Clean(file) == DefaultPath {
		dirs = systemDropIns
	}
	byName := map[string]string{}
	for _, d := range dirs {
		found, err := filepath.Glob(filepath.Join(d, "*.toml"))
		if err != nil {
			return nil, fmt.Errorf("list drop-ins: %w", err)
		}
		for _, f := range found {
			byName[filepath.Base(f)] = f
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = byName[n]
	}
	return out, nil
}

// MaxFileSize bounds one configuration file.
const MaxFileSize = 1 << 20

// ErrNotRegular refuses a configuration file that is not a regular file (a
// FIFO would block the reload, a device never end).
var ErrNotRegular = errors.New("not a regular file")

// readFile reads a configuration file without blocking on it: only a
// regular file (symlinks followed) of at most MaxFileSize bytes.
func readFile(file string) ([]byte, error) {
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w (%s)", file, ErrNotRegular, st.Mode().Type())
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", file, st.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: grew past %d bytes while read", file, MaxFileSize)
	}
	return data, nil
}

func (c *Config) loadFile(file string) error {
	data, err := readFile(file)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var one Config
	at := scanPositions(file, data)
	md, err := toml.Decode(string(data), &one)
	if err != nil {
		var pe toml.ParseError
		switch {
		case errors.As(err, &pe) && pe.Position.Line > 0:
			return fmt.Errorf("%s:%d:%d: %w", file, pe.Position.Line, max(pe.Position.Col, 1), err)
		case errors.As(err, &pe) && pe.LastKey != "":
			return fmt.Errorf("%s: %w", at.atGeneric(pe.LastKey), err)
		}
		// Type errors carry only "(last key "a.b")" in their text.
		if m := lastKeyRE.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s: %w", at.atGeneric(m[1]), err)
		}
		return fmt.Errorf("%s: %w", file, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return fmt.Errorf("%s: unknown key %q", at.atKey(k), k.String())
	}
	for _, k := range md.Keys() {
		if caseFolded(k) {
			return fmt.Errorf("%s: unknown key %q (keys are case-sensitive)", at.atKey(k), k.String())
		}
	}
	for i, g := range one.Grants {
		el := fmt.Sprintf("grant#%d", i+1)
		if g.Consumer == "" {
			return fmt.Errorf("%s: grant #%d: missing key \"consumer\"", at.at(el), i+1)
		}
		if len(g.Acquire) == 0 {
			return fmt.Errorf("%s: grant #%d (consumer %q): missing or empty key \"acquire\"", at.at(el), i+1, g.Consumer)
		}
		for _, n := range g.Restrict {
			b, err := proto.ParseRestrict(n)
			switch {
			case b == proto.RestrictOwn:
				err = fmt.Errorf("%q is per_consumer = true; restrict takes read-only, nosuid, nodev, noexec", n)
			case b == proto.RestrictKeep:
				err = fmt.Errorf("%q is the publisher's to ask for; restrict takes read-only, nosuid, nodev, noexec", n)
			case err != nil:
				err = fmt.Errorf("unknown restriction %q (want read-only, nosuid, nodev, noexec)", n)
			}
			if err != nil {
				return fmt.Errorf("%s: grant #%d (consumer %q): restrict: %w", at.at(el+".restrict"), i+1, g.Consumer, err)
			}
		}
		one.Grants[i].restrict = one.Grants[i].restriction()
		for _, k := range g.AllowKinds {
			if !slices.Contains(unconfinedKinds, k) {
				return fmt.Errorf("%s: grant #%d (consumer %q): allow_kinds: unknown kind %q (want %s)", at.at(el+".allow_kinds"), i+1, g.Consumer, k, Kinds())
			}
		}
		if why := neverMatches(string(g.Consumer)); why != "" {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: grant #%d: consumer %q can never match: %s", at.at(el+".consumer"), i+1, g.Consumer, why))
		}
		for _, r := range g.Acquire {
			if why := neverMatches(string(r.Owner)); why != "" {
				c.Warnings = append(c.Warnings, fmt.Sprintf("%s: grant #%d: entry %q can never match: its owner %s", at.at(el+".acquire"), i+1, r.String(), why))
			}
		}
	}
	if c.byCgroup == nil {
		c.byCgroup = map[string]Limits{}
		c.byUnit = map[string]Limits{}
	}
	for i := range one.Quotas {
		if err := c.addQuota(&one.Quotas[i]); err != nil {
			return fmt.Errorf("%s: quota #%d: %w", at.at(fmt.Sprintf("quota#%d", i+1)), i+1, err)
		}
	}
	a := one.Agent
	for _, v := range []struct {
		key string
		n   int
	}{{"max_connections", a.MaxConnections}, {"max_connections_per_uid", a.MaxConnectionsPerUID}, {"max_entries", a.MaxEntries},
		{"default_max_entries", a.DefaultMaxEntries}, {"default_max_pinned", a.DefaultMaxPinned},
		{"max_entries_per_uid", a.MaxEntriesPerUID}, {"max_pinned_per_uid", a.MaxPinnedPerUID},
		{"max_grants", a.MaxGrants}, {"max_grant_depth", a.MaxGrantDepth}} {
		if v.n < 0 || (v.n == 0 && md.IsDefined("agent", v.key)) {
			return fmt.Errorf("%s: agent.%s must be positive, not %d", at.at("agent."+v.key), v.key, v.n)
		}
	}
	c.Grants = append(c.Grants, one.Grants...)
	c.Quotas = append(c.Quotas, one.Quotas...)
	if md.IsDefined("agent", "max_connections") {
		c.Agent.MaxConnections = a.MaxConnections
	}
	if md.IsDefined("agent", "max_connections_per_uid") {
		c.Agent.MaxConnectionsPerUID = a.MaxConnectionsPerUID
	}
	if md.IsDefined("agent", "idle_timeout") {
		c.Agent.IdleTimeout = a.IdleTimeout
	}
	if md.IsDefined("agent", "send_timeout") {
		c.Agent.SendTimeout = a.SendTimeout
	}
	if md.IsDefined("agent", "max_entries") {
		c.Agent.MaxEntries = a.MaxEntries
	}
	if md.IsDefined("agent", "default_max_entries") {
		c.Agent.DefaultMaxEntries = a.DefaultMaxEntries
	}
	if md.IsDefined("agent", "default_max_pinned") {
		c.Agent.DefaultMaxPinned = a.DefaultMaxPinned
	}
	if md.IsDefined("agent", "max_entries_per_uid") {
		c.Agent.MaxEntriesPerUID = a.MaxEntriesPerUID
	}
	if md.IsDefined("agent", "max_pinned_per_uid") {
		c.Agent.MaxPinnedPerUID = a.MaxPinnedPerUID
	}
	if md.IsDefined("agent", "max_grants") {
		c.Agent.MaxGrants = a.MaxGrants
	}
	if md.IsDefined("agent", "max_grant_depth") {
		c.Agent.MaxGrantDepth = a.MaxGrantDepth
	}
	n := one.NRI
	for _, v := range []struct {
		key      string
		dst, src *string
	}{
		{"socket", &c.NRI.Socket, &n.Socket}, {"plugin_name", &c.NRI.PluginName, &n.PluginName},
		{"plugin_index", &c.NRI.PluginIndex, &n.PluginIndex}, {"agent_socket", &c.NRI.AgentSocket, &n.AgentSocket},
		{"binary", &c.NRI.Binary, &n.Binary},
	} {
		if !md.IsDefined("nri", v.key) {
			continue
		}
		switch path := v.key != "plugin_name" && v.key != "plugin_index"; {
		case path && !filepath.IsAbs(*v.src):
			return fmt.Errorf("%s: nri.%s must be an absolute path, not %q", at.at("nri."+v.key), v.key, *v.src)
		case v.key == "plugin_index" && (len(*v.src) != 2 || strings.Trim(*v.src, "0123456789") != ""):
			return fmt.Errorf("%s: nri.plugin_index must be two digits, not %q", at.at("nri."+v.key), *v.src)
		case v.key == "plugin_name" && (*v.src == "" || strings.ContainsAny(*v.src, "/ ")):
			return fmt.Errorf("%s: nri.plugin_name %q is not a plugin name", at.at("nri."+v.key), *v.src)
		}
		*v.dst = *v.src
	}
	if md.IsDefined("nri", "enable") {
		c.NRI.Enable = n.Enable
	}
	mc := one.Metrics
	if md.IsDefined("metrics", "socket") {
		switch p := mc.Socket; {
		case p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p):
			return fmt.Errorf("%s: metrics.socket must be a clean absolute path, not %q", at.at("metrics.socket"), p)
		case len(p) > maxSocketPath:
			return fmt.Errorf("%s: metrics.socket is %d bytes long; a unix socket path has at most %d", at.at("metrics.socket"), len(p), maxSocketPath)
		}
		c.Metrics.Socket = mc.Socket
	}
	if md.IsDefined("metrics", "listen") {
		if mc.Listen != "" {
			a, err := netip.ParseAddrPort(mc.Listen)
			switch {
			case err != nil:
				return fmt.Errorf("%s: metrics.listen %q is not IP:PORT (like 127.0.0.1:9417 or [::1]:9417; a host name is not taken): %v", at.at("metrics.listen"), mc.Listen, err)
			case a.Addr().Zone() != "":
				return fmt.Errorf("%s: metrics.listen %q: an address with a zone is not supported", at.at("metrics.listen"), mc.Listen)
			}
		}
		c.Metrics.Listen, c.listenAt = mc.Listen, at.at("metrics.listen")
	}
	if md.IsDefined("metrics", "allow_remote") {
		c.Metrics.AllowRemote = mc.AllowRemote
	}
	c.Files = append(c.Files, file)
	return nil
}

// checkMetrics validates what the files set together: a metrics.listen
// address beyond loopback needs allow_remote, which any file may set.
func (c *Config) checkMetrics() error {
	m := &c.Metrics
	if m.Listen == "" || m.AllowRemote {
		return nil
	}
	if a := m.ListenAddr().Addr(); !a.Unmap().IsLoopback() {
		return fmt.Errorf("%s: metrics.listen %q is not a loopback address: set metrics.allow_remote = true to serve metrics beyond this host (the endpoint has no authentication and no TLS, and shows what only host administrators see on the agent's socket)", c.listenAt, m.Listen)
	}
	return nil
}

// caseFolded reports whether a part of key k names a setting only when
// compared without case ("Consumer", "[[Grant]]"). TOML keys are
// case-sensitive, but the decoder also matches fields case-insensitively:
// "acquire" and "Acquire" in one table would land in one field, the
// winner chosen by map order. Keys that name nothing are not its concern
// (md.Undecoded reports them).
func caseFolded(k toml.Key) bool {
	t := reflect.TypeFor[Config]()
	for _, part := range k {
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		var next reflect.Type
		folded := false
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" {
				name = f.Name
			}
			switch {
			case !f.IsExported() || name == "-":
			case name == part:
				next = f.Type
			case strings.EqualFold(name, part):
				folded = true
			}
		}
		if next == nil {
			return folded
		}
		t = next
	}
	return false
}

// addQuota validates q and indexes it. A target may be named once across
// all files.
func (c *Config) addQuota(q *Quota) error {
	switch {
	case q.Cgroup != "" && q.Unit != "":
		return fmt.Errorf("set either \"cgroup\" or \"unit\", not both")
	case q.Cgroup == "" && q.Unit == "":
		return fmt.Errorf("missing key \"cgroup\" or \"unit\"")
	case q.MaxEntries == nil && q.MaxPinned == nil:
		return fmt.Errorf("%s: set max_entries, max_pinned or both", q.Target())
	case q.MaxEntries != nil && *q.MaxEntries < 0, q.MaxPinned != nil && *q.MaxPinned < 0:
		return fmt.Errorf("%s: limits must be 0 or more", q.Target())
	}
	l := Limits{MaxEntries: Unlimited, MaxPinned: Unlimited}
	src := "quota " + q.Target()
	if q.MaxEntries != nil {
		l.MaxEntries, l.EntriesSource = *q.MaxEntries, src
	}
	if q.MaxPinned != nil {
		l.MaxPinned, l.PinnedSource = *q.MaxPinned, src
	}
	index, key := c.byCgroup, q.Cgroup
	if q.Unit != "" {
		if !cgroup.ValidUnitName(q.Unit) || !(strings.HasSuffix(q.Unit, ".service") || strings.HasSuffix(q.Unit, ".scope") || strings.HasSuffix(q.Unit, ".slice")) {
			return fmt.Errorf("unit %q is not a .service, .scope or .slice unit name", q.Unit)
		}
		index, key = c.byUnit, q.Unit
	} else if !strings.HasPrefix(q.Cgroup, "/") || path.Clean(q.Cgroup) != q.Cgroup || strings.HasPrefix(q.Cgroup, "/sys/fs/cgroup") {
		return fmt.Errorf("cgroup %q is not a clean absolute cgroup v2 path (like /system.slice)", q.Cgroup)
	}
	if _, dup := index[key]; dup {
		return fmt.Errorf("%s has a quota already", q.Target())
	}
	index[key] = l
	return nil
}
