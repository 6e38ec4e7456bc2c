package oci

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestReadState(t *testing.T) {
	st, err := ReadState(strings.NewReader(`{"ociVersion":"1.0.2-dev","id":"b1","status":"creating","pid":42,"bundle":"/b","annotations":{"io.capd.acquire":"a.service:x"}}`))
	if err != nil || st.ID != "b1" || st.Pid != 42 || st.Bundle != "/b" || st.Annotations[AnnotationAcquire] != "a.service:x" {
		t.Fatalf("ReadState = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "{", `{"pid":1}`, strings.Repeat(" ", MaxState+1)} {
		if _, err := ReadState(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadState(%.20q...) accepted", bad)
		}
	}
}

func TestParseRequest(t *testing.T) {
	if _, err := ParseRequest("c1", map[string]string{"other": "x"}); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("unannotated: %v", err)
	}
	r, err := ParseRequest("c1", map[string]string{
		AnnotationAcquire:                   " rpm-ostreed.service:zincati-fd, container:db:sock ,",
		AnnotationRequired:                  "true",
		"io.kubernetes.cri-o.ContainerName": "web",
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "c1" || r.Name != "web" || !r.Required || len(r.Refs) != 2 ||
		r.Refs[0].String() != "rpm-ostreed.service:zincati-fd" || r.Refs[1] != (Ref{"container:db", "sock"}) {
		t.Fatalf("request %+v", r)
	}
	r, err = ParseRequest("c1", map[string]string{AnnotationAcquire: "a.service:x", AnnotationName: "mine", "io.kubernetes.cri-o.ContainerName": "web"})
	if err != nil || r.Name != "mine" || r.Required {
		t.Fatalf("io.capd.name first: %+v, %v", r, err)
	}
	for _, ann := range []map[string]string{
		{AnnotationAcquire: ""},
		{AnnotationAcquire: "nocolon"},
		{AnnotationAcquire: "a.service:bad/name"},
		{AnnotationAcquire: "a.service:x", AnnotationRequired: "yes"},
		{AnnotationAcquire: "a.service:x", AnnotationName: "-dash"},
		{AnnotationAcquire: "a.service:x", AnnotationName: "a/b"},
		{AnnotationAcquire: strings.Repeat("a.service:x,", 33)},
	} {
		if _, err := ParseRequest("c1", ann); err == nil || errors.Is(err, ErrNotOurs) {
			t.Errorf("ParseRequest(%v) = %v, want an error", ann, err)
		}
	}
	if _, err := ParseRequest("../x", map[string]string{AnnotationAcquire: "a.service:x"}); err == nil {
		t.Error("a bad container id was accepted")
	}
}

func TestReadBundle(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"root":{"path":"rootfs","readonly":true}}`), 0o644)
	b, err := ReadBundle(dir)
	if err != nil || b.Root != filepath.Join(dir, "rootfs") || !b.ReadOnly {
		t.Fatalf("ReadBundle = %+v, %v", b, err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"root":{"path":"/abs/root"}}`), 0o644)
	if b, err := ReadBundle(dir); err != nil || b.Root != "/abs/root" {
		t.Fatalf("absolute root: %+v, %v", b, err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{}`), 0o644)
	if _, err := ReadBundle(dir); err == nil {
		t.Fatal("a config without root was accepted")
	}
}

// The hooks.d file matches exactly the io.capd.acquire key, as podman
// applies it: unanchored regular expressions on keys and values.
func TestHooksD(t *testing.T) {
	b, err := HooksD("/usr/bin/capd", []string{"capd", "hook"}, nil, false, false)
	if err != nil {
		t.Fatal(err)
	}
	var c HookConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Version != "1.0.0" || c.Hook.Path != "/usr/bin/capd" || strings.Join(c.Stages, ",") != "createRuntime" {
		t.Fatalf("hooks.d config %s", b)
	}
	if b, _ := HooksD("/usr/bin/capd", []string{"capd", "hook"}, nil, false, true); !strings.Contains(string(b), `"poststop"`) {
		t.Fatalf("hooks.d config with poststop %s", b)
	}
	for key, want := range map[string]bool{
		"io.capd.acquire": true, "xio.capd.acquire": false, "io.capd.acquire.extra": false, "io-capd-acquire": false,
	} {
		matched := false
		for k, v := range c.When.Annotations {
			if regexp.MustCompile(k).MatchString(key) && regexp.MustCompile(v).MatchString("a.service:x") {
				matched = true
			}
		}
		if matched != want {
			t.Errorf("annotation %q matched = %v, want %v", key, matched, want)
		}
	}
	if _, err := HooksD("capd", nil, nil, false, false); err == nil {
		t.Error("a relative hook path was accepted")
	}
}
