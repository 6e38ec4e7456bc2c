package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/hooks"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/oci"
)

// Annotations a pod carries. The per-container forms name the container
// after the slash: io.capd.acquire/container.web applies to container web
// only, and wins over the pod-wide io.capd.acquire for it.
const (
	containerPrefix = "/container."
)

// Dir is where a container finds capd: the binary, and the agent's socket
// in AgentDir (which CAPD_SOCKET names).
const (
	Dir      = "/run/capd"
	AgentDir = Dir + "/agent"
)

// Options configure a Plugin.
type Options struct {
	Log *slog.Logger
	// AgentSocket is the agent's socket as the runtime (the host) sees it:
	// it is bound into containers, and the plugin dials it.
	AgentSocket string
	// Binary is the static capd binary, as the host sees it, bound into
	// containers at /run/capd/capd.
	Binary string
	// Dial connects to the agent (default: client.Dial(AgentSocket)); the
	// plugin may run in a container of its own where the host path differs.
	Dial func() (*client.Client, error)
}

// Plugin handles NRI events for capd.
type Plugin struct {
	opt  Options
	log  *slog.Logger
	full string // capd-full beside Binary on the host, "" if there is none

	cmu sync.Mutex // guards c
	c   *client.Client

	mu   sync.Mutex
	ctrs map[string]*tracked // by container id: the registered ones
}

// tracked is a registered container: what registering it again needs.
type tracked struct {
	reg   client.Registration
	pod   string // the pod sandbox id
	pidfd linux.FD
}

// New returns a plugin; Run connects it to the runtime.
func New(opt Options) *Plugin {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Dial == nil {
		sock := opt.AgentSocket
		opt.Dial = func() (*client.Client, error) { return client.Dial(sock) }
	}
	if err := socketDirAlone(opt.AgentSocket); err != nil {
		opt.Log.Error("annotated containers will be refused", "err", err)
	}
	p := &Plugin{opt: opt, log: opt.Log, ctrs: make(map[string]*tracked)}
	// capd-full runs every command but the start-up ones; containers get
	// it beside capd when the host has it.
	full := filepath.Join(filepath.Dir(opt.Binary), hooks.FullName)
	if st, err := os.Stat(full); opt.Binary != "" && err == nil && st.Mode().IsRegular() {
		p.full = full
	}
	return p
}

// Request is what a container's pod annotations ask of capd, nil for a
// container capd has nothing to do with; an error for annotations capd
// cannot follow (they fail the container's creation).
func Request(pod *api.PodSandbox, ctr *api.Container) (*client.Registration, error) {
	ann := pod.GetAnnotations()
	get := func(key string) (string, bool) {
		if v, ok := ann[key+containerPrefix+ctr.GetName()]; ok {
			return v, true
		}
		v, ok := ann[key]
		return v, ok
	}
	acquire, ok := get(oci.AnnotationAcquire)
	if !ok {
		return nil, nil
	}
	required, _ := get(oci.AnnotationRequired)
	r := &client.Registration{ID: ctr.GetId(), Name: ctr.GetName(), Pod: pod.GetNamespace() + "/" + pod.GetName()}
	if strings.TrimSpace(acquire) == "" {
		// capd, and nothing to acquire yet: a pod that only publishes.
		if required != "" && required != "false" {
			return nil, fmt.Errorf("pod %s container %s: %s without entries to acquire", r.Pod, r.Name, oci.AnnotationRequired)
		}
		return r, nil
	}
	req, err := oci.ParseRequest(ctr.GetId(), map[string]string{oci.AnnotationAcquire: acquire, oci.AnnotationRequired: required})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s container %s: %w", pod.GetNamespace(), pod.GetName(), ctr.GetName(), err)
	}
	r.Required = req.Required
	for _, ref := range req.Refs {
		r.Refs = append(r.Refs, client.Ref(ref))
	}
	return r, nil
}

// client returns the connection to the agent, dialling it if needed.
func (p *Plugin) client() (*client.Client, error) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if p.c == nil {
		c, err := p.opt.Dial()
		if err != nil {
			return nil, fmt.Errorf("connect to the capd agent at %s: %w", p.opt.AgentSocket, err)
		}
		p.c = c
	}
	return p.c, nil
}

// CreateContainer gives an annotated container /run/capd, after checking
// with the agent, for a container that requires its entries, that it
// could acquire them all.
func (p *Plugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	r, err := Request(pod, ctr)
	if err != nil || r == nil {
		return nil, nil, err // a bad annotation fails the container: its author wants capd
	}
	if r.Required {
		c, err := p.client()
		if err == nil {
			_, _, err = c.CheckRegistration(r)
		}
		if err != nil {
			p.log.Warn("container refused: it requires capd entries it cannot have", "pod", r.Pod, "container", r.Name, "err", err)
			return nil, nil, fmt.Errorf("capd: pod %s container %s: %w", r.Pod, r.Name, err)
		}
	}
	// The socket's directory is bound into the container: it must hold
	// the socket alone (not the policy's drop-ins, not a metrics socket).
	if err := socketDirAlone(p.opt.AgentSocket); err != nil {
		p.log.Error("container refused: the agent's socket does not have a directory of its own", "pod", r.Pod, "container", r.Name, "err", err)
		return nil, nil, fmt.Errorf("capd: pod %s container %s: %w", r.Pod, r.Name, err)
	}
	return p.adjustment(), nil, nil
}

// socketDirAlone checks that the directory of sock holds nothing but sock.
func socketDirAlone(sock string) error {
	dir := filepath.Dir(sock)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("the agent's socket directory: %w", err)
	}
	for _, e := range ents {
		if e.Name() != filepath.Base(sock) {
			return fmt.Errorf("%s holds %s besides the agent's socket and would be bound into the container: give the socket a directory of its own ([nri] agent_socket, and the agent's --socket)", dir, e.Name())
		}
	}
	return nil
}

// adjustment gives a container capd: a tmpfs at /run/capd holding the
// static binary and, read-only, the directory of the agent's socket (the
// directory, not the socket file, so that an agent restarted on a new
// socket file is still reached), with CAPD_SOCKET naming the socket in it.
func (p *Plugin) adjustment() *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	ro := []string{"rbind", "ro", "nosuid", "nodev"}
	adj.AddMount(&api.Mount{Destination: Dir, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "noexec", "mode=0755", "size=64k"}})
	adj.AddMount(&api.Mount{Destination: AgentDir, Type: "bind", Source: filepath.Dir(p.opt.AgentSocket), Options: ro})
	adj.AddMount(&api.Mount{Destination: Dir + "/capd", Type: "bind", Source: p.opt.Binary, Options: ro})
	if p.full != "" {
		adj.AddMount(&api.Mount{Destination: Dir + "/" + hooks.FullName, Type: "bind", Source: p.full, Options: ro})
	}
	adj.AddEnv("CAPD_SOCKET", AgentDir+"/"+filepath.Base(p.opt.AgentSocket))
	return adj
}

// StartContainer registers an annotated container by a pidfd of its init,
// which exists now and has not run the workload yet.
func (p *Plugin) StartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	r, err := p.registration(pod, ctr)
	if err != nil || r == nil {
		return nil
	}
	p.register(r, pod.GetId(), int(ctr.GetPid()), false)
	return nil
}

// registration is Request with the cgroup the runtime reports for the
// container, which the agent checks the init's against.
func (p *Plugin) registration(pod *api.PodSandbox, ctr *api.Container) (*client.Registration, error) {
	r, err := Request(pod, ctr)
	if err != nil || r == nil {
		return nil, err
	}
	if r.Cgroup, err = cgroupPath(ctr.GetLinux().GetCgroupsPath()); err != nil {
		p.log.Warn("container not registered: the runtime reports no usable cgroup for it", "pod", r.Pod, "container", r.Name, "err", err)
		return nil, err
	}
	return r, nil
}

// register registers r, whose init is pid, and tracks it.
func (p *Plugin) register(r *client.Registration, podID string, pid int, running bool) {
	pidfd, err := linux.PidfdOpen(pid)
	if err != nil {
		p.log.Warn("container not registered: its init is gone", "pod", r.Pod, "container", r.Name, "pid", pid, "err", err)
		return
	}
	t := &tracked{reg: *r, pod: podID}
	t.reg.Running = running
	t.pidfd.Own(pidfd)
	p.mu.Lock()
	if old := p.ctrs[r.ID]; old != nil {
		old.pidfd.Close()
	}
	p.ctrs[r.ID] = t
	p.mu.Unlock()
	p.send(t)
}

// send registers t with the agent.
//
// It sends a copy of t's pidfd, taken under the table's lock: the table's
// own may be closed meanwhile (the container removed), and its number
// reused for another container's pidfd, which must never be sent in its
// place.
func (p *Plugin) send(t *tracked) {
	var pidfd linux.FD
	p.mu.Lock()
	reg := t.reg
	if t.pidfd.Valid() {
		if n, err := linux.DupCloexec(t.pidfd.Int(), 3); err == nil {
			pidfd.Own(n)
		}
	}
	p.mu.Unlock()
	defer pidfd.Close()
	if !pidfd.Valid() {
		return // removed meanwhile: nothing to register
	}
	c, err := p.client()
	if err == nil {
		var identity string
		identity, _, err = c.Register(&reg, pidfd.Int())
		if err == nil {
			level := slog.LevelInfo
			if reg.Running {
				level = slog.LevelDebug // again, after a reconnect: usually nothing new
			}
			p.log.Log(context.Background(), level, "container registered", "pod", reg.Pod, "container", reg.Name, "id", reg.ID, "identity", identity)
			return
		}
	}
	p.log.Warn("container not registered with the capd agent; its processes have no pod identity until it is", "pod", reg.Pod, "container", reg.Name, "err", err)
}

// StopContainer asks the agent to forget the container once its processes
// are gone (the agent refuses while any remains, and ends the registration
// itself when the cgroup empties).
func (p *Plugin) StopContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.unregister(ctr.GetId(), false)
	return nil, nil
}

// RemoveContainer forgets the container.
func (p *Plugin) RemoveContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.unregister(ctr.GetId(), true)
	return nil
}

// RemovePodSandbox forgets the pod's containers.
func (p *Plugin) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	p.mu.Lock()
	var ids []string
	for id, t := range p.ctrs {
		if t.pod == pod.GetId() {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	for _, id := range ids {
		p.unregister(id, true)
	}
	return nil
}

func (p *Plugin) unregister(id string, forget bool) {
	p.mu.Lock()
	t := p.ctrs[id]
	if t != nil && forget {
		delete(p.ctrs, id)
		t.pidfd.Close()
	}
	p.mu.Unlock()
	if t == nil {
		return
	}
	c, err := p.client()
	if err == nil {
		err = c.Unregister(id)
	}
	switch {
	case err == nil, errors.Is(err, client.ErrNotFound):
	case errors.Is(err, client.ErrPermissionDenied):
		p.log.Debug("container still has processes; the agent keeps it registered until they are gone", "id", id)
	default:
		p.log.Warn("cannot unregister container", "id", id, "err", err)
	}
}

// Synchronize registers the running annotated containers: at every
// connection to the runtime (a restart of this plugin or of containerd).
func (p *Plugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	byID := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		byID[pod.GetId()] = pod
	}
	n := 0
	for _, ctr := range ctrs {
		pod := byID[ctr.GetPodSandboxId()]
		if pod == nil || ctr.GetState() != api.ContainerState_CONTAINER_RUNNING || ctr.GetPid() == 0 {
			continue
		}
		r, err := p.registration(pod, ctr)
		if err != nil || r == nil {
			continue
		}
		p.register(r, pod.GetId(), int(ctr.GetPid()), true)
		n++
	}
	p.log.Info("synchronized with the runtime", "pods", len(pods), "containers", len(ctrs), "registered", n)
	return nil, nil
}

// Resync registers every tracked container again, for an agent that
// restarted (registering is idempotent for the same id and cgroup).
func (p *Plugin) Resync() {
	p.mu.Lock()
	all := make([]*tracked, 0, len(p.ctrs))
	for _, t := range p.ctrs {
		t.reg.Running = true
		all = append(all, t)
	}
	p.mu.Unlock()
	for _, t := range all {
		p.send(t)
	}
}

// WatchAgent keeps one connection to the agent open and, whenever the
// agent closes it (its idle timeout, or a restart), connects again and
// registers every tracked container again; it returns only when ctx ends
// while the agent is unreachable (a plugin stops by exiting). A restarted
// agent without systemd's fd store has forgotten the registrations; with
// it, registering again changes nothing.
func (p *Plugin) WatchAgent(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		c, err := p.opt.Dial()
		if err == nil {
			_, err = c.Whoami()
		}
		if err != nil {
			if c != nil {
				c.Close()
			}
			p.log.Debug("capd agent unreachable; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		// The request connection is left alone: a request in flight on it
		// must not fail, and after an agent restart the client connects
		// again by itself (a REGISTER is safe to send again).
		p.Resync()
		c.WaitClosed()
		c.Close()
	}
}

// Close releases the pidfds.
func (p *Plugin) Close() {
	p.mu.Lock()
	for id, t := range p.ctrs {
		t.pidfd.Close()
		delete(p.ctrs, id)
	}
	p.mu.Unlock()
	p.cmu.Lock()
	if p.c != nil {
		p.c.Close()
		p.c = nil
	}
	p.cmu.Unlock()
}
