package nri

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/fdpass"
	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// registered is one REGISTER with a pidfd the fake agent received: the
// container id it named and the pid the pidfd it carried refers to.
type registered struct {
	id  string
	pid int
}

// fakeAgent listens on a SEQPACKET socket in dir and answers every request
// with ok. A REGISTER with CHECK is held until release is closed (it
// keeps the plugin's client busy); each REGISTER with an fd is recorded.
type fakeAgent struct {
	path     string
	lfd      int
	checking chan struct{} // a CHECK arrived
	release  chan struct{}
	mu       sync.Mutex
	regs     []registered
	done     chan struct{}
}

func newFakeAgent(t *testing.T, dir string) *fakeAgent {
	t.Helper()
	a := &fakeAgent{path: filepath.Join(dir, "capd.sock"), checking: make(chan struct{}, 1), release: make(chan struct{}), done: make(chan struct{})}
	fd, err := linux.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := linux.Bind(fd, &unix.SockaddrUnix{Name: a.path}); err != nil {
		linux.Close(fd)
		t.Fatal(err)
	}
	if err := linux.Listen(fd, 8); err != nil {
		linux.Close(fd)
		t.Fatal(err)
	}
	a.lfd = fd
	go a.serve()
	return a
}

func (a *fakeAgent) serve() {
	defer close(a.done)
	c, err := linux.Accept4(a.lfd)
	if err != nil {
		return
	}
	defer linux.Close(c)
	in := make([]byte, proto.MaxRequest)
	oob := make([]byte, fdpass.OOBSize(4))
	for {
		n, fds, err := fdpass.Recv(c, in, oob, nil, 1)
		if err != nil || (n == 0 && len(fds) == 0) {
			return
		}
		h, attrs, _ := proto.ParseHeader(in[:n])
		var id string
		var flags uint32
		it := proto.Attrs(attrs)
		for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
			switch t {
			case proto.AttrContainerID:
				id = string(v)
			case proto.AttrFlags:
				flags, _ = proto.U32(v)
			}
		}
		if h.Op == proto.OpRegister && flags&proto.FlagCheck != 0 {
			a.checking <- struct{}{}
			<-a.release
		}
		for _, fd := range fds {
			pid, _ := linux.PidfdPid(fd)
			a.mu.Lock()
			a.regs = append(a.regs, registered{id, pid})
			a.mu.Unlock()
			linux.Close(fd)
		}
		m := proto.NewMessage(nil, h.Op, proto.CodeOK)
		if h.Op == proto.OpRegister {
			m.String(proto.AttrIdentity, "x")
		}
		if fdpass.Send(c, m.Bytes()) != nil {
			return
		}
	}
}

func (a *fakeAgent) registrations() []registered {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.regs)
}

func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// send borrows a tracked container's pidfd number (t.pidfd.Int())
// outside p.mu and then waits for the client's lock; unregister (forget)
// and register (replacing) close that pidfd meanwhile, and the next pidfd
// the plugin opens (another pod's container) takes the number. The agent
// then receives container A's registration with container B's pidfd:
// B's cgroup becomes pod:nsA/podA/a (and, as RUNNING, without the
// single-process check). Here: a CHECK keeps the client busy, Resync
// captures A's number, RemoveContainer(A) closes it, StartContainer(B)
// reuses it.
func TestResyncSendsTheRightPidfd(t *testing.T) {
	dir := t.TempDir()
	a := newFakeAgent(t, dir)
	defer func() {
		linux.Close(a.lfd)
		<-a.done
	}()
	p := New(Options{AgentSocket: a.path, Binary: "/bin/true", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer p.Close()
	ctx := context.Background()

	procA, procB := sleeper(t), sleeper(t)
	podA := &api.PodSandbox{Id: "sa", Name: "a", Namespace: "nsa", Annotations: map[string]string{"io.capd.acquire": ""}}
	podB := &api.PodSandbox{Id: "sb", Name: "b", Namespace: "nsb", Annotations: map[string]string{"io.capd.acquire": ""}}
	podC := &api.PodSandbox{Id: "sc", Name: "c", Namespace: "nsc", Annotations: map[string]string{"io.capd.acquire": "x.service:y", "io.capd.required": "true"}}
	ctrA := &api.Container{Id: "A", Name: "a", PodSandboxId: "sa", Pid: uint32(procA.Process.Pid), Linux: &api.LinuxContainer{CgroupsPath: "/kubepods/a"}}
	ctrB := &api.Container{Id: "B", Name: "b", PodSandboxId: "sb", Pid: uint32(procB.Process.Pid), Linux: &api.LinuxContainer{CgroupsPath: "/kubepods/b"}}
	ctrC := &api.Container{Id: "C", Name: "c", PodSandboxId: "sc"}

	p.StartContainer(ctx, podA, ctrA)
	p.mu.Lock()
	numA := p.ctrs["A"].pidfd.Int()
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.CreateContainer(ctx, podC, ctrC) }() // holds the client
	select {
	case <-a.checking:
	case <-time.After(5 * time.Second):
		t.Fatal("no CHECK reached the fake agent")
	}
	wg.Add(1)
	go func() { defer wg.Done(); p.Resync() }() // takes A's pidfd number, waits for the client
	time.Sleep(200 * time.Millisecond)
	wg.Add(1)
	go func() { defer wg.Done(); p.RemoveContainer(ctx, podA, ctrA) }() // closes A's pidfd, waits for the client
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		gone := p.ctrs["A"] == nil
		p.mu.Unlock()
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("RemoveContainer did not forget A")
		}
	}
	wg.Add(1)
	go func() { defer wg.Done(); p.StartContainer(ctx, podB, ctrB) }() // opens B's pidfd
	var numB int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		if tb := p.ctrs["B"]; tb != nil {
			numB = tb.pidfd.Int()
		}
		p.mu.Unlock()
		if numB != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("StartContainer did not track B")
		}
	}
	close(a.release)
	wg.Wait()
	if numB != numA {
		t.Skipf("B's pidfd is %d, not A's old %d: no fd number reuse this time", numB, numA)
	}
	for _, r := range a.registrations() {
		if r.id == "A" && r.pid == procB.Process.Pid {
			t.Errorf("container A (pod:nsa/a/a) was registered with a pidfd of container B's init (pid %d): B's cgroup would get A's identity", r.pid)
		}
	}
	t.Logf("registrations: %+v (A pid %d, B pid %d)", a.registrations(), procA.Process.Pid, procB.Process.Pid)
}

// the plugin binds the whole directory of agent_socket into every
// annotated container and only logs a warning (at New) when it holds
// more. With the default agent_socket (/run/capd/capd.sock) that directory
// is /run/capd: the system drop-in directory /run/capd/conf.d (policy)
// and the documented metrics socket /run/capd/metrics.sock (mode 0600,
// which root in a pod, uid 0 of the host's user namespace, connects to
// through a read-only bind) reach every annotated pod. A directory that
// holds anything but the socket must not be bound.
func TestSocketDirectoryHoldsOnlyTheSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "capd.sock")
	for _, f := range []string{sock, filepath.Join(dir, "metrics.sock")} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := New(Options{AgentSocket: sock, Binary: "/bin/true", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial: func() (*client.Client, error) { t.Fatal("the agent was asked"); return nil, nil }})
	defer p.Close()
	pod := &api.PodSandbox{Id: "p1", Name: "web", Namespace: "payments", Annotations: map[string]string{"io.capd.acquire": "a.service:x"}}
	adj, _, err := p.CreateContainer(context.Background(), pod, &api.Container{Id: "c1", Name: "app"})
	for _, m := range adj.GetMounts() {
		if m.Type == "bind" && m.Source == dir {
			t.Errorf("%s (holding conf.d and metrics.sock besides the socket) is bound into the pod at %s (CreateContainer err %v)", dir, m.Destination, err)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "directory of its own") {
		t.Errorf("CreateContainer with a crowded socket directory: %v, want a refusal saying the socket needs a directory of its own", err)
	}
}
