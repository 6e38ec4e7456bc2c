package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"go.yaml.in/yaml/v3"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/nri"
)

// The Kubernetes manifests of deploy/kubernetes: well-formed YAML, and
// consistent with each other and with capd: what the DaemonSet runs, the
// host paths it shares, and the ConfigMap's drop-ins as the policy loader
// reads them. No cluster is needed.

const deployDir = "../deploy/kubernetes"

// k8sObject is the part of a Kubernetes object these tests read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Namespace   string            `yaml:"namespace"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		podSpec  `yaml:",inline"` // a Pod's
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	HostPID           bool           `yaml:"hostPID"`
	HostNetwork       bool           `yaml:"hostNetwork"`
	PriorityClassName string         `yaml:"priorityClassName"`
	Tolerations       []toleration   `yaml:"tolerations"`
	InitContainers    []k8sContainer `yaml:"initContainers"`
	Containers        []k8sContainer `yaml:"containers"`
	Volumes           []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
			Type string `yaml:"type"`
		} `yaml:"hostPath"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type toleration struct {
	Key      string `yaml:"key"`
	Operator string `yaml:"operator"`
}

type k8sContainer struct {
	Name         string   `yaml:"name"`
	Image        string   `yaml:"image"`
	Command      []string `yaml:"command"`
	Args         []string `yaml:"args"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	ReadinessProbe *struct {
		Exec struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"readinessProbe"`
}

// yamlDoc is one document of a file, with where it comes from.
type yamlDoc struct {
	where string
	obj   k8sObject
}

// decodeYAML decodes every document of data, failing on a syntax error or
// a document that is no Kubernetes object (apiVersion, kind, name).
func decodeYAML(t *testing.T, where string, data []byte) []yamlDoc {
	t.Helper()
	var docs []yamlDoc
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 1; ; i++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", where, i, err)
		}
		var obj k8sObject
		if err := node.Decode(&obj); err != nil {
			t.Fatalf("%s: document %d: %v", where, i, err)
		}
		if obj.APIVersion == "" || obj.Kind == "" || obj.Metadata.Name == "" {
			t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", where, i)
		}
		docs = append(docs, yamlDoc{where: where, obj: obj})
	}
	return docs
}

// deployDocs returns every YAML document under deploy/kubernetes.
func deployDocs(t *testing.T) []yamlDoc {
	t.Helper()
	var docs []yamlDoc
	err := filepath.WalkDir(deployDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		docs = append(docs, decodeYAML(t, p, data)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// only returns the one object of kind among docs.
func only(t *testing.T, docs []yamlDoc, kind string) k8sObject {
	t.Helper()
	var found []k8sObject
	for _, d := range docs {
		if d.obj.Kind == kind {
			found = append(found, d.obj)
		}
	}
	if len(found) != 1 {
		t.Fatalf("deploy/kubernetes has %d %s objects, want 1", len(found), kind)
	}
	return found[0]
}

// hostPath returns the host path behind path p in container c of spec,
// through the longest mount that holds p, or "" if none is a hostPath.
func hostPath(spec *podSpec, c *k8sContainer, p string) string {
	best, rest := "", ""
	for _, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) > len(best) {
			best, rest = m.Name, strings.TrimPrefix(p, mp)
		}
	}
	for _, v := range spec.Volumes {
		if v.Name == best && best != "" && v.HostPath != nil {
			return path.Clean(v.HostPath.Path) + rest
		}
	}
	return ""
}

func mounted(c *k8sContainer, volume, at string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && path.Clean(m.MountPath) == at {
			return true
		}
	}
	return false
}

func TestDeployManifests(t *testing.T) {
	docs := deployDocs(t)
	ns := only(t, docs, "Namespace").Metadata.Name
	for _, d := range docs {
		if d.obj.Kind != "Namespace" && d.obj.Metadata.Namespace != ns {
			t.Errorf("%s: %s %s is in namespace %q, want %q", d.where, d.obj.Kind, d.obj.Metadata.Name, d.obj.Metadata.Namespace, ns)
		}
	}
	ds := only(t, docs, "DaemonSet")
	spec := &ds.Spec.Template.Spec
	if !spec.HostPID || spec.HostNetwork {
		t.Errorf("DaemonSet: hostPID %v, hostNetwork %v; want the host's pids and a network of its own", spec.HostPID, spec.HostNetwork)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("DaemonSet: priorityClassName %q", spec.PriorityClassName)
	}
	if !slices.Contains(spec.Tolerations, toleration{Operator: "Exists"}) {
		t.Errorf("DaemonSet: no toleration of every taint: %+v", spec.Tolerations)
	}

	// Two containers of one image run capd agent and capd-nri with the
	// default configuration file, which the image ships (Containerfile).
	var agent, plugin *k8sContainer
	images := map[string]bool{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		images[c.Image] = true
		cmd := append(slices.Clone(c.Command), c.Args...)
		switch {
		case len(cmd) >= 4 && slices.Equal(cmd[:4], []string{"/usr/bin/capd", "agent", "--config", policy.DefaultPath}):
			agent = c
		case slices.Equal(cmd, []string{"/usr/bin/capd-nri", "--config", policy.DefaultPath}):
			plugin = c
		}
	}
	for _, c := range spec.InitContainers {
		images[c.Image] = true
	}
	if agent == nil || plugin == nil {
		t.Fatalf("DaemonSet: want containers running [/usr/bin/capd agent --config %[1]s ...] and [/usr/bin/capd-nri --config %[1]s]", policy.DefaultPath)
	}
	if len(images) != 1 {
		t.Errorf("DaemonSet: images %v, want one", images)
	}
	containerfile, err := os.ReadFile(filepath.Join(deployDir, "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"COPY bin/capd bin/capd-full bin/capd-nri /usr/bin/", "COPY dist/capd.toml " + policy.DefaultPath} {
		if !bytes.Contains(containerfile, []byte(want)) {
			t.Errorf("Containerfile: no %q", want)
		}
	}
	for _, c := range []*k8sContainer{agent, plugin} {
		if c.ReadinessProbe == nil || !slices.Equal(c.ReadinessProbe.Exec.Command, []string{"/usr/bin/capd", "status"}) {
			t.Errorf("container %s: readiness probe is not capd status", c.Name)
		}
	}

	hostPaths := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[path.Clean(v.HostPath.Path)] = true
		}
	}
	for _, p := range []string{"/var/run/nri", "/run/capd", "/sys/fs/cgroup"} {
		if !hostPaths[p] {
			t.Errorf("DaemonSet: no hostPath volume %s (has %v)", p, hostPaths)
		}
	}

	// The ConfigMap, mounted at /etc/capd/conf.d in both, is a set of
	// drop-ins that the policy loader takes, after the image's capd.toml.
	var cmName, cmVolume string
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil {
			cmName, cmVolume = v.ConfigMap.Name, v.Name
		}
	}
	cm := only(t, docs, "ConfigMap")
	if cm.Metadata.Name != cmName {
		t.Errorf("DaemonSet mounts ConfigMap %q, deploy/kubernetes has %q", cmName, cm.Metadata.Name)
	}
	confD := path.Join(path.Dir(policy.DefaultPath), "conf.d")
	for _, c := range []*k8sContainer{agent, plugin} {
		if !mounted(c, cmVolume, confD) {
			t.Errorf("container %s does not mount the ConfigMap at %s", c.Name, confD)
		}
	}
	dir := t.TempDir()
	shipped, err := os.ReadFile("../dist/capd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "capd.toml"), shipped, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "conf.d"), 0o755)
	for name, text := range cm.Data {
		if !strings.HasSuffix(name, ".toml") || strings.Contains(name, "/") {
			t.Errorf("ConfigMap key %q is no drop-in name (*.toml)", name)
		}
		if err := os.WriteFile(filepath.Join(dir, "conf.d", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := policy.Load(filepath.Join(dir, "capd.toml"), false)
	if err != nil {
		t.Fatalf("the ConfigMap's drop-ins: %v", err)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("the ConfigMap's drop-ins: %q", cfg.Warnings)
	}
	n := cfg.NRI
	if !n.Enable {
		t.Errorf("the ConfigMap does not set [nri] enable = true")
	}
	if !slices.ContainsFunc(cfg.Grants, func(g policy.Grant) bool { return g.Consumer == "pod:payments/*" }) {
		t.Errorf("the ConfigMap has no example grant to pod:payments/*: %+v", cfg.Grants)
	}

	// The plugin reaches containerd's socket and the agent's at the paths
	// the host has them (no --dial), and the agent listens there.
	if got := hostPath(spec, plugin, n.Socket); got != n.Socket {
		t.Errorf("nri.socket %s is %q on the host in container %s", n.Socket, got, plugin.Name)
	}
	if got := hostPath(spec, plugin, n.AgentSocket); got != n.AgentSocket {
		t.Errorf("nri.agent_socket %s is %q on the host in container %s", n.AgentSocket, got, plugin.Name)
	}
	// The agent listens on --socket, alone in its directory (which
	// containerd binds into pods), and host clients reach it through
	// the usual path, a symlink the install initContainer makes.
	sock := ""
	for i, a := range agent.Command {
		if a == "--socket" && i+1 < len(agent.Command) {
			sock = agent.Command[i+1]
		}
	}
	if got := hostPath(spec, agent, sock); sock == "" || got != n.AgentSocket {
		t.Errorf("the agent listens on %q, which is %q on the host; nri.agent_socket is %s", sock, got, n.AgentSocket)
	}
	if filepath.Dir(n.AgentSocket) == filepath.Dir(client.DefaultSocket) {
		t.Errorf("nri.agent_socket %s shares its directory with %s: the whole directory is bound into pods", n.AgentSocket, client.DefaultSocket)
	}
	if got := hostPath(spec, agent, "/sys/fs/cgroup"); got != "/sys/fs/cgroup" {
		t.Errorf("the agent's /sys/fs/cgroup is %q on the host", got)
	}

	// nri.binary, which containerd binds into pods from the host, is where
	// an initContainer moves the image's capd to.
	// capd-full goes beside it (capd executes it for every command but
	// the start-up ones).
	mvRE := regexp.MustCompile(`(?m)^\s*mv(?: -f)? \S+ (\S+)\s*$`)
	for bin, want := range map[string]string{"capd": n.Binary, "capd-full": filepath.Join(filepath.Dir(n.Binary), "capd-full")} {
		copied := false
		for i := range spec.InitContainers {
			c := &spec.InitContainers[i]
			script := strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
			if !strings.Contains(script, "cp /usr/bin/"+bin+" ") {
				continue
			}
			for _, m := range mvRE.FindAllStringSubmatch(script, -1) {
				if hostPath(spec, c, m[1]) == want {
					copied = true
				}
			}
		}
		if !copied {
			t.Errorf("no initContainer copies /usr/bin/%s to %s on the host", bin, want)
		}
	}
}

// The YAML examples of the README's Kubernetes section are well-formed, and
// the annotations of their pods are what capd-nri accepts.
func TestDeployREADMEExamples(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Kubernetes nodes\n")
	if !ok {
		t.Fatal("README has no Kubernetes nodes section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) < 2 {
		t.Fatalf("README, Kubernetes nodes: %d yaml examples, want 2 or more", len(blocks))
	}
	pods := 0
	for i, b := range blocks {
		for _, d := range decodeYAML(t, fmt.Sprintf("README, yaml example %d", i+1), []byte(b[1])) {
			ann, spec := d.obj.Metadata.Annotations, &d.obj.Spec.podSpec
			if d.obj.Kind != "Pod" {
				ann, spec = d.obj.Spec.Template.Metadata.Annotations, &d.obj.Spec.Template.Spec
			}
			for _, c := range spec.Containers {
				// What capd-nri makes of them, by its own parser.
				r, err := nri.Request(&api.PodSandbox{Name: d.obj.Metadata.Name, Namespace: d.obj.Metadata.Namespace, Annotations: ann}, &api.Container{Id: "id", Name: c.Name})
				if err != nil {
					t.Errorf("%s/%s container %s: %v", d.obj.Metadata.Namespace, d.obj.Metadata.Name, c.Name, err)
				}
				if r == nil {
					continue
				}
				pods++
				if len(c.Command) == 0 || !strings.Contains(strings.Join(c.Command, " "), "/run/capd/capd ") {
					t.Errorf("%s/%s container %s: does not run /run/capd/capd", d.obj.Metadata.Namespace, d.obj.Metadata.Name, c.Name)
				}
			}
		}
	}
	if pods < 3 {
		t.Errorf("README, Kubernetes nodes: %d annotated containers in the examples, want 3 (acquire from the host, publish, acquire from a pod)", pods)
	}
}
