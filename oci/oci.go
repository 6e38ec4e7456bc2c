// Package oci reads what an OCI runtime hands a hook (the runtime-spec
// State on stdin, the bundle's config.json), the annotations capd acts on,
// and writes the oci-hooks(5) JSON that makes podman and CRI-O run capd's
// hook. It is pure data handling: no fds, no system calls beyond reading
// files.
package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/capd-dev/capd/internal/proto"
)

// Annotations capd reads.
const (
	// AnnotationAcquire lists the entries the container wants:
	// "OWNER:NAME[,OWNER:NAME...]". Only annotated containers are handled.
	AnnotationAcquire = "io.capd.acquire"
	// AnnotationRequired ("true") makes an unreachable agent or a denied
	// entry abort container creation.
	AnnotationRequired = "io.capd.required"
	// AnnotationName names the container for policy (container:NAME)
	// where the runtime does not.
	AnnotationName = "io.capd.name"
)

// nameAnnotations are where runtimes put a container's name, in order of
// preference after AnnotationName.
var nameAnnotations = []string{
	"io.kubernetes.cri-o.ContainerName",
	"io.kubernetes.cri.container-name",
	"io.podman.annotations.name",
	"nerdctl/name",
}

// MaxState bounds the state document read from stdin.
const MaxState = 1 << 20

// ErrNotOurs means the container carries no io.capd.acquire annotation.
var ErrNotOurs = errors.New("container not annotated " + AnnotationAcquire)

// ReadState decodes the runtime-spec State a hook receives on stdin.
func ReadState(r io.Reader) (*specs.State, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxState+1))
	if err != nil {
		return nil, fmt.Errorf("read container state: %w", err)
	}
	if len(b) > MaxState {
		return nil, fmt.Errorf("container state on stdin is larger than %d bytes", MaxState)
	}
	var st specs.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("container state on stdin: %w", err)
	}
	if st.ID == "" {
		return nil, errors.New("container state on stdin has no id")
	}
	return &st, nil
}

// Ref is one requested entry.
type Ref struct{ Owner, Name string }

func (r Ref) String() string { return r.Owner + ":" + r.Name }

// Request is what a container's annotations ask of capd.
type Request struct {
	ID       string
	Name     string // "" when no annotation names the container
	Refs     []Ref
	Required bool
}

// ParseRequest reads the capd annotations of a container. It returns
// ErrNotOurs for a container without io.capd.acquire.
func ParseRequest(id string, ann map[string]string) (*Request, error) {
	list, ok := ann[AnnotationAcquire]
	if !ok {
		return nil, ErrNotOurs
	}
	if err := proto.ValidContainerName(id); err != nil {
		return nil, fmt.Errorf("container id: %w", err)
	}
	req := &Request{ID: id}
	for _, k := range append([]string{AnnotationName}, nameAnnotations...) {
		if v := ann[k]; v != "" {
			if err := proto.ValidContainerName(v); err != nil {
				return nil, fmt.Errorf("annotation %s: %w", k, err)
			}
			req.Name = v
			break
		}
	}
	switch v := ann[AnnotationRequired]; v {
	case "", "false":
	case "true":
		req.Required = true
	default:
		return nil, fmt.Errorf("annotation %s=%q: want true or false", AnnotationRequired, v)
	}
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		owner, name, err := proto.SplitRef(s)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", AnnotationAcquire, err)
		}
		req.Refs = append(req.Refs, Ref{owner, name})
	}
	if len(req.Refs) == 0 {
		return nil, fmt.Errorf("annotation %s is empty: want OWNER:NAME[,OWNER:NAME...]", AnnotationAcquire)
	}
	if len(req.Refs) > proto.MaxRefs {
		return nil, fmt.Errorf("annotation %s lists %d entries, more than %d", AnnotationAcquire, len(req.Refs), proto.MaxRefs)
	}
	return req, nil
}

// Bundle is what the hook needs from a bundle's config.json.
type Bundle struct {
	// Root is the absolute path of the container's root filesystem, as
	// the runtime's mount namespace sees it.
	Root     string
	ReadOnly bool
	// Sysctls says the runtime writes sysctls after the hooks run (it then
	// needs /proc/sys, which procfs subset=pid would hide).
	Sysctls bool
}

// ReadBundle reads bundle/config.json.
func ReadBundle(bundle string) (*Bundle, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	defer f.Close()
	var spec struct {
		Root  *specs.Root `json:"root"`
		Linux *struct {
			Sysctl map[string]string `json:"sysctl"`
		} `json:"linux"`
	}
	if err := json.NewDecoder(io.LimitReader(f, 16<<20)).Decode(&spec); err != nil {
		return nil, fmt.Errorf("bundle %s config.json: %w", bundle, err)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("bundle %s config.json has no root.path", bundle)
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	b := &Bundle{Root: filepath.Clean(root), ReadOnly: spec.Root.Readonly}
	b.Sysctls = spec.Linux != nil && len(spec.Linux.Sysctl) > 0
	return b, nil
}

// HookConfig is one oci-hooks(5) file.
type HookConfig struct {
	Version string     `json:"version"`
	Hook    specs.Hook `json:"hook"`
	When    HookWhen   `json:"when"`
	Stages  []string   `json:"stages"`
}

// HookWhen is the condition of an oci-hooks(5) file.
type HookWhen struct {
	Always      bool              `json:"always,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// HooksD returns the oci-hooks(5) JSON that runs the hook at path (with
// args, args[0] being the program name) at createRuntime, and with
// poststop at poststop too, for containers annotated io.capd.acquire.
// poststop is not needed: the agent ends a registration when the
// container's cgroup empties, and a poststop hook costs another fork and
// exec per container. hooks.d matches annotation keys and values with
// unanchored regular expressions, so the key is anchored. With always set,
// the hook runs for every container instead.
func HooksD(path string, args []string, env []string, always, poststop bool) ([]byte, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("hook path %q is not absolute", path)
	}
	c := HookConfig{
		Version: "1.0.0",
		Hook:    specs.Hook{Path: path, Args: args, Env: env},
		When:    HookWhen{Annotations: map[string]string{`^io\.capd\.acquire$`: `.+`}},
		Stages:  []string{"createRuntime"},
	}
	if poststop {
		c.Stages = append(c.Stages, "poststop")
	}
	if always {
		c.When = HookWhen{Always: true}
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
