package nri

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.LeakCheck(m)) }

// A pod's annotations say what each of its containers asks for: the
// per-container form wins over the pod-wide one, and a container of an
// unannotated pod is none of capd's business.
func TestRequest(t *testing.T) {
	pod := func(ann map[string]string) *api.PodSandbox {
		return &api.PodSandbox{Id: "p1", Name: "web", Namespace: "payments", Annotations: ann}
	}
	ctr := &api.Container{Id: "c1", Name: "app"}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want *client.Registration
		err  bool
	}{
		{"unannotated", nil, nil, false},
		{"pod-wide", map[string]string{"io.capd.acquire": "a.service:x, b.service:y"},
			&client.Registration{ID: "c1", Name: "app", Pod: "payments/web", Refs: []client.Ref{{Owner: "a.service", Name: "x"}, {Owner: "b.service", Name: "y"}}}, false},
		{"per container wins", map[string]string{"io.capd.acquire": "a.service:x", "io.capd.acquire/container.app": "c.service:z", "io.capd.required/container.app": "true"},
			&client.Registration{ID: "c1", Name: "app", Pod: "payments/web", Refs: []client.Ref{{Owner: "c.service", Name: "z"}}, Required: true}, false},
		{"another container's", map[string]string{"io.capd.acquire/container.db": "c.service:z"}, nil, false},
		{"required pod-wide", map[string]string{"io.capd.acquire": "a.service:x", "io.capd.required": "true"},
			&client.Registration{ID: "c1", Name: "app", Pod: "payments/web", Refs: []client.Ref{{Owner: "a.service", Name: "x"}}, Required: true}, false},
		{"publish only", map[string]string{"io.capd.acquire/container.app": ""},
			&client.Registration{ID: "c1", Name: "app", Pod: "payments/web"}, false},
		{"required without entries", map[string]string{"io.capd.acquire": "", "io.capd.required": "true"}, nil, true},
		{"bad ref", map[string]string{"io.capd.acquire": "nocolon"}, nil, true},
		{"bad required", map[string]string{"io.capd.acquire": "a.service:x", "io.capd.required": "yes"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Request(pod(tc.ann), ctr)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			switch {
			case got == nil && tc.want == nil:
			case got == nil || tc.want == nil || got.ID != tc.want.ID || got.Name != tc.want.Name || got.Pod != tc.want.Pod ||
				got.Required != tc.want.Required || !slices.Equal(got.Refs, tc.want.Refs):
				t.Fatalf("request = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// An annotated container that does not require its entries gets
// /run/capd (a tmpfs with the binary and the socket's directory bound in
// read-only, CAPD_SOCKET naming the socket) without asking the agent;
// others get nothing.
func TestCreateContainerMounts(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/capd.sock", nil, 0o600) // the socket, alone in its directory
	p := New(Options{AgentSocket: dir + "/capd.sock", Binary: "/usr/bin/capd",
		Dial: func() (*client.Client, error) { t.Fatal("the agent was asked"); return nil, nil }})
	defer p.Close()
	pod := &api.PodSandbox{Id: "p1", Name: "web", Namespace: "payments", Annotations: map[string]string{"io.capd.acquire": "a.service:x"}}
	adj, _, err := p.CreateContainer(context.Background(), pod, &api.Container{Id: "c1", Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range adj.GetMounts() {
		got = append(got, m.Type+" "+m.Source+" "+m.Destination)
		if m.Type == "bind" && !slices.Contains(m.Options, "ro") {
			t.Errorf("mount %s is not read-only: %v", m.Destination, m.Options)
		}
	}
	want := []string{"tmpfs tmpfs /run/capd", "bind " + dir + " /run/capd/agent", "bind /usr/bin/capd /run/capd/capd"}
	if !slices.Equal(got, want) {
		t.Fatalf("mounts %q, want %q", got, want)
	}
	if env := adj.GetEnv(); len(env) != 1 || env[0].Key != "CAPD_SOCKET" || env[0].Value != "/run/capd/agent/capd.sock" {
		t.Fatalf("env %v, want CAPD_SOCKET=/run/capd/agent/capd.sock", env)
	}
	pod.Annotations = nil
	if adj, _, err := p.CreateContainer(context.Background(), pod, &api.Container{Id: "c2", Name: "app"}); err != nil || adj != nil {
		t.Fatalf("unannotated: %v, %v", adj, err)
	}
}
