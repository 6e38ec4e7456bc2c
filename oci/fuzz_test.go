package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/capd-dev/capd/internal/proto"
)

// FuzzReadState decodes arbitrary hook stdin. A state that decodes has an
// id and encodes and decodes again to the same state; a refusal says it
// was the container state; and its annotations go through ParseRequest's
// checks.
func FuzzReadState(f *testing.F) {
	for _, s := range []string{
		`{"ociVersion":"1.0.2-dev","id":"b1","status":"creating","pid":42,"bundle":"/b","annotations":{"io.capd.acquire":"a.service:x","io.capd.required":"true","io.capd.name":"web"}}`,
		`{"ociVersion":"1.2.0","id":"c","status":"stopped","pid":0,"bundle":"/run/c","annotations":{"io.capd.acquire":" a.service:x, container:db:sock ,","io.podman.annotations.name":"db"}}`,
		`{"id":"x","annotations":{}}`,
		`{"ID":"x","Annotations":{"io.capd.acquire":"a:b"}}`,
		`{"id":"x","id":"","pid":-1}`,
		`{"id":"\u00e9\ud800","annotations":{"io.capd.acquire":"\u0000:x"}}`,
		`{"pid":1}`, `null`, `[]`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ReadState(bytes.NewReader(b))
		if err != nil {
			if st != nil || !strings.HasPrefix(err.Error(), "container state on stdin") {
				t.Fatalf("ReadState = %+v, %v: want nil and an error about the container state", st, err)
			}
			return
		}
		if st.ID == "" || len(b) > MaxState {
			t.Fatalf("ReadState accepted %d bytes with id %q", len(b), st.ID)
		}
		enc, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ReadState(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-encoded state %s: %v", enc, err)
		}
		if again.Version != st.Version || again.ID != st.ID || again.Status != st.Status || again.Pid != st.Pid ||
			again.Bundle != st.Bundle || !maps.Equal(again.Annotations, st.Annotations) {
			t.Fatalf("state %+v re-encodes as %s, which reads as %+v", st, enc, again)
		}
		checkRequest(t, st.ID, st.Annotations)
	})
}

// FuzzParseRequest reads arbitrary annotations: a request only for an
// annotated container, with a valid id and name (the first annotation in
// the order of preference that is set), 1 to MaxRefs valid references in
// their order, which written back as an annotation read the same.
func FuzzParseRequest(f *testing.F) {
	f.Add("c1", " rpm-ostreed.service:zincati-fd, container:db:sock ,", "", "web", "true", true)
	f.Add("c1", "a.service:x", "mine", "web", "", true)
	f.Add("c1", "nocolon", "", "", "", true)
	f.Add("c1", "a.service:bad/name", "", "", "yes", true)
	f.Add("-c", "a.service:x", "-dash", "", "false", true)
	f.Add("c1", strings.Repeat("a.service:x,", 33), "", "", "", true)
	f.Add("c1", "cgroup:/a/b:n,,\t\n,  ", "", ".x", "", true)
	f.Add("c1", "a.service:x", "", "", "", false)
	f.Fuzz(func(t *testing.T, id, acquire, name, runtimeName, required string, annotated bool) {
		ann := map[string]string{AnnotationRequired: required, AnnotationName: name, nameAnnotations[0]: runtimeName, "other": acquire}
		if annotated {
			ann[AnnotationAcquire] = acquire
		}
		checkRequest(t, id, ann)
	})
}

// checkRequest checks ParseRequest(id, ann) against what the annotations
// say.
func checkRequest(t *testing.T, id string, ann map[string]string) {
	t.Helper()
	req, err := ParseRequest(id, ann)
	list, annotated := ann[AnnotationAcquire]
	if annotated == errors.Is(err, ErrNotOurs) {
		t.Fatalf("ParseRequest(%q, %q) = %v, annotated %v", id, ann, err, annotated)
	}
	if err != nil {
		if req != nil {
			t.Fatalf("ParseRequest failed (%v) but returned %+v", err, req)
		}
		return
	}
	if req.ID != id || proto.ValidContainerName(id) != nil {
		t.Fatalf("request id %q for %q", req.ID, id)
	}
	want := ""
	for _, k := range append([]string{AnnotationName}, nameAnnotations...) {
		if ann[k] != "" {
			want = ann[k]
			break
		}
	}
	if req.Name != want || want != "" && proto.ValidContainerName(want) != nil {
		t.Fatalf("request name %q, want %q", req.Name, want)
	}
	if req.Required != (ann[AnnotationRequired] == "true") {
		t.Fatalf("required %v for %q", req.Required, ann[AnnotationRequired])
	}
	if len(req.Refs) < 1 || len(req.Refs) > proto.MaxRefs {
		t.Fatalf("%d refs", len(req.Refs))
	}
	var elems []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			elems = append(elems, s)
		}
	}
	refs := make([]string, len(req.Refs))
	for i, r := range req.Refs {
		refs[i] = r.String()
		if o, n, err := proto.SplitRef(refs[i]); err != nil || o != r.Owner || n != r.Name {
			t.Fatalf("ref %q splits as %q, %q, %v", refs[i], o, n, err)
		}
	}
	if strings.Join(refs, ",") != strings.Join(elems, ",") {
		t.Fatalf("refs %q from %q", refs, list)
	}
	again, err := ParseRequest(id, map[string]string{AnnotationAcquire: strings.Join(refs, ",")})
	if err != nil || len(again.Refs) != len(req.Refs) {
		t.Fatalf("refs %q written back: %+v, %v", refs, again, err)
	}
	for i := range again.Refs {
		if again.Refs[i] != req.Refs[i] {
			t.Fatalf("ref %q written back reads as %q", req.Refs[i], again.Refs[i])
		}
	}
}
