package tests

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/cgroup"
	"github.com/capd-dev/capd/internal/testutil"
)

// A Kubernetes node for the tests, without a kubelet: a real containerd
// (scripts/install-k8s-deps.sh builds it, with its runc shim, ctr and
// crictl, into a cache) with its CRI plugin and NRI, driven through crictl
// as the kubelet drives it through CRI. Pods use the host network (no CNI)
// and the cgroupfs driver, below a cgroup of the node's own. Everything
// the node writes is under one short directory (socket paths are limited
// to 108 bytes), /var/tmp/capdk8s-PID-N:
//
//	containerd.toml  the config, 'containerd config default' with every
//	                 host path moved here (see nodeConfig)
//	containerd.log   containerd's output (logged when a test fails)
//	containerd.sock  CRI and containerd's API; crictl.yaml points at it
//	nri.sock         NRI: a plugin connects here (NRISocket)
//	nri/plugins      plugins containerd starts itself (NRIPluginDir)
//	root, state      containerd's; runc's state is in runc, shim sockets in s
//	logs             the pods' logs; specs: the JSON given to crictl
//
// The node's cleanup removes every pod, stops containerd, kills shims it
// left, unmounts what is still mounted below the directory, removes the
// node's cgroups and the directory.

// k8sTimeout bounds every wait for containerd and every crictl call: this
// 2-core machine can be loaded by other tests.
const k8sTimeout = 60 * time.Second

// CRI's namespace modes (runtime.v1.NamespaceMode).
const (
	nsPod       = 0
	nsContainer = 1
	nsNode      = 2
)

// node is one containerd with CRI and NRI.
type node struct {
	t      testing.TB
	bin    string // the cached binaries
	dir    string // everything of this node
	cgroup string // the node's cgroup, e.g. /capdk8s-123-1; pods go below it

	mu         sync.Mutex
	pods       map[string]*criPodConfig // by pod id: what RunPod gave crictl
	containerd *exec.Cmd                // nil while stopped
	exited     chan struct{}            // closed when containerd has been waited for
}

// nodeOption changes the node's containerd config (the TOML document as
// a map) before containerd first starts.
type nodeOption func(cfg map[string]any)

// withNRI sets key of containerd's NRI plugin config, e.g.
// withNRI("plugin_request_timeout", "5s").
func withNRI(key string, value any) nodeOption {
	return func(cfg map[string]any) { tomlTable(cfg, "plugins", "io.containerd.nri.v1.nri")[key] = value }
}

var nodeSeq atomic.Int64

// k8sCache is the cache directory of install-k8s-deps.sh (binaries in
// bin, images in images), as it prints it: the versions are written in
// the script only.
var k8sCache = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(root, "scripts/install-k8s-deps.sh"), "--print-dir").Output()
	if err != nil {
		return "", fmt.Errorf("scripts/install-k8s-deps.sh --print-dir: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
})

// requireK8s fails the test unless everything a node needs is installed,
// and returns the cache directory.
func requireK8s(t testing.TB) string {
	t.Helper()
	testutil.RequireRoot(t)
	cache, err := k8sCache()
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "crictl"} {
		if _, err := os.Stat(filepath.Join(cache, "bin", b)); err != nil {
			missing = append(missing, filepath.Join(cache, "bin", b))
		}
	}
	for _, tool := range []string{"runc", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing = append(missing, "/bin/busybox")
	}
	if len(missing) > 0 {
		t.Fatalf("the Kubernetes node tests need containerd, its shim, ctr, crictl, runc, gcc and a static busybox; missing %s: run scripts/install-k8s-deps.sh (make test-deps runs it)", strings.Join(missing, ", "))
	}
	return cache
}

// newNode starts a node and waits until CRI is ready and the images are
// imported. Its cleanup leaves nothing behind.
func newNode(t testing.TB, opts ...nodeOption) *node {
	t.Helper()
	cache := requireK8s(t)
	images, err := k8sImageArchives(filepath.Join(cache, "images"))
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("capdk8s-%d-%d", os.Getpid(), nodeSeq.Add(1))
	n := &node{t: t, bin: filepath.Join(cache, "bin"), dir: filepath.Join("/var/tmp", name), cgroup: "/" + name, pods: map[string]*criPodConfig{}}
	// The longest socket path: the shim's, s/ and a sha256 in hex.
	if l := len(filepath.Join(n.dir, "s", strings.Repeat("0", 64))); l >= 108 {
		t.Fatalf("node directory %s is too long for the shims' socket paths (%d bytes)", n.dir, l)
	}
	if err := os.Mkdir(n.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.cleanup)
	v2, err := cgroup.V2Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	// runc creates the node's cgroup in the v1 hierarchies, below it the
	// pods'; the v2 one is created here so that it is the node's own.
	if err := os.Mkdir(filepath.Join(v2, n.cgroup), 0o755); err != nil {
		t.Fatal(err)
	}
	n.writeConfig(opts)
	start := time.Now()
	n.startContainerd()
	ready := time.Since(start)
	errs := make(chan error, len(images))
	for _, img := range images {
		go func() { _, err := n.ctr("images", "import", img); errs <- err }()
	}
	for range images {
		if err := <-errs; err != nil {
			t.Fatalf("import an image: %v", err)
		}
	}
	t.Logf("node %s: CRI ready in %v, images imported in %v (CRI_CONFIG_FILE=%s)", n.dir, ready.Round(time.Millisecond),
		(time.Since(start) - ready).Round(time.Millisecond), n.path("crictl.yaml"))
	return n
}

func (n *node) path(rel ...string) string { return filepath.Join(append([]string{n.dir}, rel...)...) }

// NRISocket is where NRI plugins connect.
func (n *node) NRISocket() string { return n.path("nri.sock") }

// NRIPluginDir is where containerd looks for plugins to start itself
// (NAME-INDEX executables), when it starts.
func (n *node) NRIPluginDir() string { return n.path("nri/plugins") }

// Cgroup is the node's cgroup (relative to a hierarchy's root), the
// parent of every pod's.
func (n *node) Cgroup() string { return n.cgroup }

// Log is what containerd logged so far.
func (n *node) Log() string {
	b, _ := os.ReadFile(n.path("containerd.log"))
	return string(b)
}

// writeConfig writes containerd.toml and crictl.yaml.
func (n *node) writeConfig(opts []nodeOption) {
	n.t.Helper()
	out, err := exec.Command(filepath.Join(n.bin, "containerd"), "config", "default").Output()
	if err != nil {
		n.t.Fatalf("containerd config default: %v", err)
	}
	var cfg map[string]any
	if err := toml.Unmarshal(out, &cfg); err != nil {
		n.t.Fatalf("containerd config default: %v", err)
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		n.t.Fatal(err)
	}
	if err := nodeConfig(cfg, n.dir, runc); err != nil {
		n.t.Fatalf("containerd config: %v\n(containerd config default printed:\n%s)", err, out)
	}
	for _, o := range opts {
		o(cfg)
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(cfg); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(n.path("containerd.toml"), b.Bytes(), 0o644); err != nil {
		n.t.Fatal(err)
	}
	for _, d := range []string{"nri/plugins", "nri/conf.d", "cni/bin", "cni/net.d", "cdi", "logs", "specs"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			n.t.Fatal(err)
		}
	}
	sock := "unix://" + n.path("containerd.sock")
	crictl := fmt.Sprintf("runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: %d\n", sock, sock, int(k8sTimeout.Seconds()))
	if err := os.WriteFile(n.path("crictl.yaml"), []byte(crictl), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// nodeConfig turns containerd's default config into the node's: every
// path below dir, CRI with the local pause image, runc at runc (cgroupfs),
// NRI on dir/nri.sock, and what this host needs (no CAP_SYS_RESOURCE: an
// oom_score_adj below containerd's own fails runc; no AppArmor). Every
// key it sets must be in the default, and no host path may be left: a
// new containerd that moved or added one fails here, not on the host.
func nodeConfig(cfg map[string]any, dir, runc string) error {
	const (
		cri     = "io.containerd.cri.v1.runtime"
		images  = "io.containerd.cri.v1.images"
		nri     = "io.containerd.nri.v1.nri"
		runcOpt = "options"
	)
	p := func(rel string) string { return filepath.Join(dir, rel) }
	runtimes := []string{"plugins", cri, "containerd", "runtimes", "runc"}
	sets := []struct {
		key   []string
		value any
	}{
		{[]string{"root"}, p("root")},
		{[]string{"state"}, p("state")},
		{[]string{"temp"}, p("tmp")},
		{[]string{"plugins", "io.containerd.server.v1.grpc", "address"}, p("containerd.sock")},
		{[]string{"plugins", "io.containerd.server.v1.ttrpc", "address"}, p("containerd.sock.ttrpc")},
		{[]string{"plugins", images, "pinned_images", "sandbox"}, k8sPauseImage},
		{[]string{"plugins", cri, "disable_apparmor"}, true},
		{[]string{"plugins", cri, "restrict_oom_score_adj"}, true},
		{[]string{"plugins", cri, "cdi_spec_dirs"}, []any{p("cdi")}},
		{[]string{"plugins", cri, "netns_mounts_under_state_dir"}, true},
		{[]string{"plugins", cri, "cni", "bin_dirs"}, []any{p("cni/bin")}},
		{[]string{"plugins", cri, "cni", "conf_dir"}, p("cni/net.d")},
		{append(runtimes, runcOpt, "BinaryName"), runc},
		{append(runtimes, runcOpt, "Root"), p("runc")},
		{append(runtimes, runcOpt, "SystemdCgroup"), false},
		// A test node's database need not survive a power cut: no
		// fsync, which is what makes image import slow on a busy disk.
		{[]string{"plugins", "io.containerd.metadata.v1.bolt", "no_sync"}, true},
		{[]string{"plugins", nri, "disable"}, false},
		{[]string{"plugins", nri, "disable_connections"}, false},
		{[]string{"plugins", nri, "socket_path"}, p("nri.sock")},
		{[]string{"plugins", nri, "plugin_path"}, p("nri/plugins")},
		{[]string{"plugins", nri, "plugin_config_path"}, p("nri/conf.d")},
		{[]string{"plugins", "io.containerd.internal.v1.opt", "path"}, p("opt")},
		{[]string{"plugins", "io.containerd.image-verifier.v1.bindir", "bin_dir"}, p("opt/image-verifier/bin")},
		{[]string{"plugins", "io.containerd.shim.v1.manager", "socket_dir"}, p("s")},
	}
	for _, s := range sets {
		t := cfg
		for i, k := range s.key[:len(s.key)-1] {
			next, ok := t[k].(map[string]any)
			if !ok {
				return fmt.Errorf("no table [%s]", strings.Join(s.key[:i+1], "."))
			}
			t = next
		}
		last := s.key[len(s.key)-1]
		if _, ok := t[last]; !ok {
			return fmt.Errorf("no key %s", strings.Join(s.key, "."))
		}
		t[last] = s.value
	}
	cfg["imports"] = []any{}
	// Stream processors name host paths (ocicrypt's keys); the node
	// needs none.
	delete(cfg, "stream_processors")
	var left []string
	walkTOML(cfg, nil, func(key []string, s string) {
		path := s
		if _, v, ok := strings.Cut(s, "="); ok && !strings.HasPrefix(s, "/") {
			path = v // an environment variable's value
		}
		if strings.HasPrefix(path, "/") && path != runc && path != dir && !strings.HasPrefix(path, dir+"/") {
			left = append(left, fmt.Sprintf("%s = %q", strings.Join(key, "."), s))
		}
	})
	if len(left) > 0 {
		return fmt.Errorf("host paths left in the config (move them in nodeConfig): %s", strings.Join(left, ", "))
	}
	return nil
}

// walkTOML calls f with every string in v and its key.
func walkTOML(v any, key []string, f func(key []string, s string)) {
	switch v := v.(type) {
	case string:
		f(key, v)
	case []any:
		for _, e := range v {
			walkTOML(e, key, f)
		}
	case map[string]any:
		for k, e := range v {
			walkTOML(e, append(slices.Clip(key), k), f)
		}
	}
}

// tomlTable returns the table at key in cfg, creating what is missing.
func tomlTable(cfg map[string]any, key ...string) map[string]any {
	t := cfg
	for _, k := range key {
		next, ok := t[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			t[k] = next
		}
		t = next
	}
	return t
}

// startContainerd starts containerd on the node's config and waits until
// CRI reports the runtime ready and the NRI socket is there.
func (n *node) startContainerd() {
	n.t.Helper()
	log, err := os.OpenFile(n.path("containerd.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(n.bin, "containerd"), "--config", n.path("containerd.toml"), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = n.env()
	// Its own session: the shims it starts outlive it, as on a node.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n.mu.Lock()
	n.containerd, n.exited = cmd, exited
	n.mu.Unlock()

	var last string
	for deadline := time.Now().Add(k8sTimeout); ; {
		select {
		case <-exited:
			n.mu.Lock()
			n.containerd = nil
			n.mu.Unlock()
			n.t.Fatalf("containerd exited (%v) before CRI was ready; its log:\n%s", cmd.ProcessState, tail(n.Log(), 40))
		default:
		}
		if socketExists(n.NRISocket()) {
			if out, err := n.crictl("info"); err != nil {
				last = err.Error()
			} else if ready, err := runtimeReady(out); err != nil {
				n.t.Fatal(err)
			} else if ready {
				return
			} else {
				last = "RuntimeReady is not true: " + out
			}
		} else {
			last = "no NRI socket " + n.NRISocket()
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("containerd is not ready after %v: %s; its log:\n%s", k8sTimeout, last, tail(n.Log(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func socketExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// runtimeReady reads crictl info's RuntimeReady condition.
func runtimeReady(info string) (bool, error) {
	var v struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return false, fmt.Errorf("crictl info: %w\n%s", err, info)
	}
	for _, c := range v.Status.Conditions {
		if c.Type == "RuntimeReady" {
			return c.Status, nil
		}
	}
	return false, nil
}

// env is containerd's environment: the cached binaries (its shim) first
// on PATH, nothing of a service manager's.
func (n *node) env() []string {
	env := []string{"PATH=" + n.bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if k != "PATH" && k != "NOTIFY_SOCKET" && !strings.HasPrefix(k, "LISTEN_") && !strings.HasPrefix(k, "CONTAINERD_") {
			env = append(env, e)
		}
	}
	return env
}

// stopContainerd ends containerd (SIGTERM, then SIGKILL after 10 s) and
// waits for it. The shims and so the pods keep running.
func (n *node) stopContainerd() {
	n.mu.Lock()
	cmd, exited := n.containerd, n.exited
	n.containerd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		n.t.Errorf("containerd (pid %d) did not exit 10 s after SIGTERM: killed", cmd.Process.Pid)
		cmd.Process.Kill()
		<-exited
	}
}

// Restart stops containerd and starts it again on the same state, as a
// node's containerd is restarted: the pods keep running and CRI finds
// them again.
func (n *node) Restart() {
	n.t.Helper()
	start := time.Now()
	n.stopContainerd()
	n.startContainerd()
	n.t.Logf("containerd restarted in %v", time.Since(start).Round(time.Millisecond))
}

// ContainerdPid is containerd's pid, 0 while it is stopped.
func (n *node) ContainerdPid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.containerd == nil {
		return 0
	}
	return n.containerd.Process.Pid
}

// crictl runs crictl on the node and returns its stdout; an error carries
// its stderr (the reason CRI gave).
func (n *node) crictl(args ...string) (string, error) {
	return n.run(filepath.Join(n.bin, "crictl"), append([]string{"--config", n.path("crictl.yaml")}, args...)...)
}

// ctr runs ctr in containerd's k8s.io namespace, CRI's.
func (n *node) ctr(args ...string) (string, error) {
	return n.run(filepath.Join(n.bin, "ctr"), append([]string{"--address", n.path("containerd.sock"), "--namespace", "k8s.io"}, args...)...)
}

func (n *node) run(bin string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = k8sTimeout
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Crictl runs crictl on the node (anything the methods below lack) and
// fails the test if it fails.
func (n *node) Crictl(args ...string) string {
	n.t.Helper()
	out, err := n.crictl(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// The CRI messages crictl reads as JSON (runtime.v1's field names), as
// much of them as the tests use.
type criPodConfig struct {
	Metadata     criMetadata       `json:"metadata"`
	LogDirectory string            `json:"log_directory"`
	Labels       map[string]string `json:"labels,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Linux        criPodLinux       `json:"linux"`
}

type criMetadata struct {
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Attempt   uint32 `json:"attempt"`
}

type criPodLinux struct {
	CgroupParent    string         `json:"cgroup_parent"`
	SecurityContext criPodSecurity `json:"security_context"`
}

type criPodSecurity struct {
	NamespaceOptions criNamespaces `json:"namespace_options"`
}

type criNamespaces struct {
	Network int `json:"network"`
	Pid     int `json:"pid"`
	Ipc     int `json:"ipc"`
}

type criContainerConfig struct {
	Metadata    criMetadata       `json:"metadata"`
	Image       criImage          `json:"image"`
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	WorkingDir  string            `json:"working_dir,omitempty"`
	Envs        []criKeyValue     `json:"envs,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	LogPath     string            `json:"log_path"`
	Linux       criCtrLinux       `json:"linux"`
}

type criImage struct {
	Image string `json:"image"`
}

type criKeyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type criCtrLinux struct {
	SecurityContext criCtrSecurity `json:"security_context"`
}

type criCtrSecurity struct {
	NamespaceOptions criNamespaces `json:"namespace_options"`
}

// PodSpec is the config the kubelet would give for pod namespace/name: a
// fresh uid, the kubelet's labels, host network (a host-network pod has no
// hostname of its own), a pid namespace per container, and the cgroup
// parent the kubelet's cgroupfs driver would choose, below the node's
// cgroup: NODE/kubepods/besteffort/podUID.
func (n *node) PodSpec(name, namespace string, annotations map[string]string) *criPodConfig {
	uid := newUID()
	return &criPodConfig{
		Metadata:     criMetadata{Name: name, UID: uid, Namespace: namespace},
		LogDirectory: n.path("logs", namespace+"_"+name+"_"+uid),
		Labels: map[string]string{
			"io.kubernetes.pod.name":      name,
			"io.kubernetes.pod.namespace": namespace,
			"io.kubernetes.pod.uid":       uid,
		},
		Annotations: annotations,
		Linux: criPodLinux{
			CgroupParent:    n.cgroup + "/kubepods/besteffort/pod" + uid,
			SecurityContext: criPodSecurity{NamespaceOptions: criNamespaces{Network: nsNode, Pid: nsContainer, Ipc: nsPod}},
		},
	}
}

// newUID is a random UUID, as the API server gives a pod.
func newUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// RunPod runs a pod (PodSpec) and returns its id.
func (n *node) RunPod(name, namespace string, annotations map[string]string) string {
	n.t.Helper()
	id, err := n.RunPodSpec(n.PodSpec(name, namespace, annotations))
	if err != nil {
		n.t.Fatal(err)
	}
	return id
}

// RunPodSpec runs the pod spec describes (crictl runp) and returns its id,
// or the error CRI gave.
func (n *node) RunPodSpec(spec *criPodConfig) (string, error) {
	n.t.Helper()
	if err := os.MkdirAll(spec.LogDirectory, 0o755); err != nil {
		n.t.Fatal(err)
	}
	file := n.writeSpec("pod-"+spec.Metadata.UID, spec)
	out, err := n.crictl("runp", file)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(out)
	n.mu.Lock()
	n.pods[id] = spec
	n.mu.Unlock()
	return id, nil
}

// writeSpec writes v as JSON for crictl, which reads files.
func (n *node) writeSpec(name string, v any) string {
	n.t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		n.t.Fatal(err)
	}
	f := n.path("specs", name+".json")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		n.t.Fatal(err)
	}
	return f
}

// ContainerSpec is the config the kubelet would give for container
// ctrName running cmd (the image's /bin/sh when empty) in the busybox
// image, in the pod's namespaces, logging to ctrName_0.log in the pod's
// log directory.
func (n *node) ContainerSpec(ctrName string, annotations map[string]string, cmd ...string) *criContainerConfig {
	return &criContainerConfig{
		Metadata:    criMetadata{Name: ctrName},
		Image:       criImage{Image: k8sBusyboxImage},
		Command:     cmd,
		Labels:      map[string]string{"io.kubernetes.container.name": ctrName},
		Annotations: annotations,
		LogPath:     ctrName + "_0.log",
		Linux: criCtrLinux{SecurityContext: criCtrSecurity{
			NamespaceOptions: criNamespaces{Network: nsNode, Pid: nsContainer, Ipc: nsPod},
		}},
	}
}

// CreateContainer creates container ctrName in pod podID (podName in
// namespace) and returns its id, or the error CRI gave (an NRI plugin's
// refusal among them).
func (n *node) CreateContainer(podID, podName, namespace, ctrName string, annotations map[string]string, cmd ...string) (string, error) {
	n.t.Helper()
	n.mu.Lock()
	pod := n.pods[podID]
	n.mu.Unlock()
	if pod == nil {
		n.t.Fatalf("CreateContainer: pod %s was not started by RunPod", podID)
	}
	if pod.Metadata.Name != podName || pod.Metadata.Namespace != namespace {
		n.t.Fatalf("CreateContainer: pod %s is %s/%s, not %s/%s", podID, pod.Metadata.Namespace, pod.Metadata.Name, namespace, podName)
	}
	return n.CreateContainerSpec(podID, n.ContainerSpec(ctrName, annotations, cmd...))
}

// CreateContainerSpec creates the container spec describes in pod podID
// (crictl create) and returns its id, or the error CRI gave.
func (n *node) CreateContainerSpec(podID string, spec *criContainerConfig) (string, error) {
	n.t.Helper()
	n.mu.Lock()
	pod := n.pods[podID]
	n.mu.Unlock()
	if pod == nil {
		n.t.Fatalf("CreateContainerSpec: pod %s was not started by RunPod", podID)
	}
	// The kubelet labels a container with its pod, as here.
	labels := map[string]string{
		"io.kubernetes.pod.name":      pod.Metadata.Name,
		"io.kubernetes.pod.namespace": pod.Metadata.Namespace,
		"io.kubernetes.pod.uid":       pod.Metadata.UID,
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	c := *spec
	c.Labels = labels
	podFile := n.writeSpec("pod-"+pod.Metadata.UID, pod)
	ctrFile := n.writeSpec(fmt.Sprintf("ctr-%s-%s-%d", pod.Metadata.UID, c.Metadata.Name, c.Metadata.Attempt), &c)
	out, err := n.crictl("create", podID, ctrFile, podFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// Start starts a created container (crictl start).
func (n *node) Start(ctrID string) error {
	_, err := n.crictl("start", ctrID)
	return err
}

// Run creates and starts a container, failing the test if either fails.
func (n *node) Run(podID, podName, namespace, ctrName string, annotations map[string]string, cmd ...string) string {
	n.t.Helper()
	id, err := n.CreateContainer(podID, podName, namespace, ctrName, annotations, cmd...)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := n.Start(id); err != nil {
		n.t.Fatal(err)
	}
	return id
}

// Logs is what the container wrote, stdout and stderr (crictl logs).
func (n *node) Logs(ctrID string) string {
	n.t.Helper()
	var b bytes.Buffer
	cmd := exec.Command(filepath.Join(n.bin, "crictl"), "--config", n.path("crictl.yaml"), "logs", ctrID)
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("crictl logs %s: %v: %s", ctrID, err, b.String())
	}
	return b.String()
}

// WaitLogs waits until the container's logs contain substr and returns
// them.
func (n *node) WaitLogs(ctrID, substr string) string {
	n.t.Helper()
	deadline := time.Now().Add(k8sTimeout)
	for {
		logs := n.Logs(ctrID)
		if strings.Contains(logs, substr) {
			return logs
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("container %s logged no %q in %v; its logs:\n%s", ctrID, substr, k8sTimeout, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Exec runs cmd in the container (crictl exec) and returns what it
// wrote, stdout then stderr; an error says how it exited.
func (n *node) Exec(ctrID string, cmd ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	c := exec.Command(filepath.Join(n.bin, "crictl"), append([]string{"--config", n.path("crictl.yaml"), "exec", ctrID}, cmd...)...)
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	// crictl's own messages (logrus lines) go to the same stderr.
	var own, theirs []string
	for _, line := range strings.SplitAfter(stderr.String(), "\n") {
		if strings.HasPrefix(line, "time=\"") && strings.Contains(line, " level=") {
			own = append(own, strings.TrimSpace(line))
		} else {
			theirs = append(theirs, line)
		}
	}
	out := stdout.String() + strings.Join(theirs, "")
	if err != nil {
		return out, fmt.Errorf("crictl exec %s %q: %v: %s", ctrID, cmd, err, strings.Join(own, "; "))
	}
	return out, nil
}

// StopContainer stops a container (crictl stop, SIGKILL after timeout).
func (n *node) StopContainer(ctrID string, timeout time.Duration) {
	n.t.Helper()
	n.Crictl("stop", "--timeout", strconv.Itoa(int(timeout.Seconds())), ctrID)
}

// RemoveContainer removes a container, stopping it first (crictl rm -f).
func (n *node) RemoveContainer(ctrID string) {
	n.t.Helper()
	n.Crictl("rm", "--force", ctrID)
}

// StopPod stops a pod's containers and its sandbox (crictl stopp).
func (n *node) StopPod(podID string) {
	n.t.Helper()
	n.Crictl("stopp", podID)
}

// RemovePod removes a pod and its containers, stopping them first (crictl
// rmp -f).
func (n *node) RemovePod(podID string) {
	n.t.Helper()
	n.Crictl("rmp", "--force", podID)
	n.mu.Lock()
	delete(n.pods, podID)
	n.mu.Unlock()
}

// PodIDs are the ids of the pods CRI knows, ready or not.
func (n *node) PodIDs() []string {
	n.t.Helper()
	return strings.Fields(n.Crictl("pods", "--quiet"))
}

// ContainerIDs are the ids of the containers CRI knows, in any state.
func (n *node) ContainerIDs() []string {
	n.t.Helper()
	return strings.Fields(n.Crictl("ps", "--all", "--quiet"))
}

// criContainer is what crictl inspect tells of a container.
type criContainer struct {
	ID          string
	PodID       string
	Name        string
	State       string // CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN
	ExitCode    int
	Reason      string // why it exited (Completed, Error, OOMKilled)
	Annotations map[string]string
	Pid         int         // its init process while it runs (0 otherwise)
	CgroupsPath string      // the runtime spec's linux.cgroupsPath (cgroupfs: the path itself)
	Cgroup      string      // the v2 cgroup of Pid (/proc/PID/cgroup's 0:: line), "" when unknown
	Spec        *specs.Spec // the OCI runtime spec it was created with (NRI's adjustments included)
}

// Inspect tells what CRI knows of a container (crictl inspect).
func (n *node) Inspect(ctrID string) criContainer {
	n.t.Helper()
	out := n.Crictl("inspect", "--output", "json", ctrID)
	var v struct {
		Status struct {
			ID       string `json:"id"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			State       string            `json:"state"`
			ExitCode    int               `json:"exitCode"`
			Reason      string            `json:"reason"`
			Annotations map[string]string `json:"annotations"`
		} `json:"status"`
		Info struct {
			SandboxID   string      `json:"sandboxID"`
			Pid         int         `json:"pid"`
			RuntimeSpec *specs.Spec `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		n.t.Fatalf("crictl inspect %s: %v\n%s", ctrID, err, out)
	}
	c := criContainer{
		ID: v.Status.ID, PodID: v.Info.SandboxID, Name: v.Status.Metadata.Name,
		State: v.Status.State, ExitCode: v.Status.ExitCode, Reason: v.Status.Reason,
		Annotations: v.Status.Annotations, Pid: v.Info.Pid, Spec: v.Info.RuntimeSpec,
	}
	if c.State != "CONTAINER_RUNNING" {
		c.Pid = 0
	}
	if c.Spec != nil && c.Spec.Linux != nil {
		c.CgroupsPath = c.Spec.Linux.CgroupsPath
	}
	if c.Pid > 0 {
		c.Cgroup = cgroupV2Of(c.Pid)
	}
	return c
}

// cgroupV2Of is pid's v2 cgroup, "" if it is gone.
func cgroupV2Of(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// criPod is what crictl inspectp tells of a pod.
type criPod struct {
	ID          string
	State       string // SANDBOX_READY or SANDBOX_NOTREADY
	Pid         int    // the pause process while the pod is ready
	Annotations map[string]string
}

// InspectPod tells what CRI knows of a pod (crictl inspectp).
func (n *node) InspectPod(podID string) criPod {
	n.t.Helper()
	out := n.Crictl("inspectp", "--output", "json", podID)
	var v struct {
		Status struct {
			ID          string            `json:"id"`
			State       string            `json:"state"`
			Annotations map[string]string `json:"annotations"`
		} `json:"status"`
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		n.t.Fatalf("crictl inspectp %s: %v\n%s", podID, err, out)
	}
	return criPod{ID: v.Status.ID, State: v.Status.State, Pid: v.Info.Pid, Annotations: v.Status.Annotations}
}

// WaitExit waits until the container has exited and returns its exit
// code.
func (n *node) WaitExit(ctrID string) int {
	n.t.Helper()
	deadline := time.Now().Add(k8sTimeout)
	for {
		c := n.Inspect(ctrID)
		if c.State == "CONTAINER_EXITED" {
			return c.ExitCode
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("container %s is still %s after %v", ctrID, c.State, k8sTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanup removes everything the node made: pods, containerd, shims,
// mounts, cgroups, its directory. What it cannot remove fails the test.
func (n *node) cleanup() {
	t := n.t
	if t.Failed() {
		t.Logf("containerd's log (%s), last lines:\n%s", n.path("containerd.log"), tail(n.Log(), 60))
	}
	n.mu.Lock()
	cmd, exited := n.containerd, n.exited
	n.mu.Unlock()
	if cmd != nil {
		select {
		case <-exited:
			t.Errorf("node cleanup: containerd had exited (%v); its log:\n%s", cmd.ProcessState, tail(n.Log(), 40))
			cmd = nil
		default:
		}
	}
	if cmd != nil {
		out, err := n.crictl("pods", "--quiet")
		if err != nil {
			t.Errorf("node cleanup: %v", err)
		}
		for _, id := range strings.Fields(out) {
			if _, err := n.crictl("stopp", id); err != nil {
				t.Errorf("node cleanup: %v", err)
			}
			if _, err := n.crictl("rmp", "--force", id); err != nil {
				t.Errorf("node cleanup: %v", err)
			}
		}
	}
	n.stopContainerd()
	for _, pid := range n.shims() {
		t.Logf("node cleanup: killing shim %d left running", pid)
		unix.Kill(pid, unix.SIGKILL)
	}
	n.removeCgroups()
	n.unmount()
	if err := os.RemoveAll(n.dir); err != nil {
		t.Errorf("node cleanup: %v", err)
	}
}

// shims are the pids of the runc shims serving this node's containerd.
func (n *node) shims() []int {
	sock := n.path("containerd.sock")
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) == "containerd-shim-runc-v2" && slices.Contains(args, sock) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroups kills what is left in the node's cgroup, in every
// hierarchy, and removes it, deepest first.
func (n *node) removeCgroups() {
	for _, mnt := range cgroupMounts() {
		root := filepath.Join(mnt, n.cgroup)
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					n.t.Logf("node cleanup: killing %d left in %s", pid, d)
					unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 500; try++ { // 5 s for killed processes to go
				if err = unix.Rmdir(dirs[i]); err == nil || !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				n.t.Errorf("node cleanup: rmdir %s: %v", dirs[i], err)
			}
		}
	}
}

// cgroupMounts are the mount points of every cgroup hierarchy.
func cgroupMounts() []string {
	var out []string
	for _, m := range mounts() {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, m.point)
		}
	}
	return out
}

type mountEntry struct{ point, fstype string }

// mounts reads this process's mount table (/proc/self/mountinfo).
func mounts() []mountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mountEntry
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(s.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmount unmounts everything below the node's directory, deepest first.
func (n *node) unmount() {
	var points []string
	for _, m := range mounts() {
		if strings.HasPrefix(m.point, n.dir+"/") {
			points = append(points, m.point)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range points {
		if err := unix.Unmount(p, 0); err != nil {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				n.t.Errorf("node cleanup: umount %s: %v", p, err)
			}
		}
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
