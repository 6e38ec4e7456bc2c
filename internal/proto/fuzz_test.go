package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"regexp"
	"strings"
	"testing"
)

// The seeds in code are the shapes of real requests; testdata/fuzz holds
// more, found by fuzzing.
func addMessageSeeds(f *testing.F) {
	acquire := NewMessage(nil, OpAcquire, 0)
	acquire.String(AttrOwner, "rpm-ostreed.service")
	acquire.String(AttrName, "zincati-fd")
	acquire.U64(AttrWait, 1500)
	publish := NewMessage(nil, OpPublish, 0)
	publish.String(AttrName, "sock")
	publish.U32(AttrFlags, FlagPin|FlagReplace)
	publish.U64(AttrTTL, 60_000)
	publish.String(AttrAllow, "container:web-*")
	publish.String(AttrAllow, "cgroup:/machine.slice/*")
	register := NewMessage(nil, OpRegister, 0)
	register.String(AttrContainerID, "b1")
	register.String(AttrContainerName, "web")
	register.String(AttrRef, "cgroup:/a/b:name")
	list := NewMessage(nil, OpList, CodeNotFound)
	e := list.Begin(AttrEntry)
	list.String(AttrOwner, "a.service")
	list.Empty(AttrMore)
	list.End(e)
	for _, b := range [][]byte{
		acquire.Bytes(), publish.Bytes(), register.Bytes(), list.Bytes(),
		{}, {1}, {1, 4, 0, 0, 0, 0, 0}, {2, 1, 0, 0, 0, 0, 0, 0},
		{1, 1, 0, 0, 0, 0, 0, 1}, {1, 4, 0, 0, 0, 0, 0, 0, 1, 0, 9, 0, 'x'},
		{1, 4, 0, 0, 0, 0, 0, 0, 1, 0},
	} {
		f.Add(b)
	}
}

// FuzzParseHeader decodes arbitrary datagrams as the agent does: the
// header, then every attribute. A header is accepted exactly when it is
// version 1 with zero reserved bytes, errors match the package's
// sentinels, and a message that decodes re-encodes to the same bytes.
func FuzzParseHeader(f *testing.F) {
	addMessageSeeds(f)
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, attrs, err := ParseHeader(msg)
		if len(msg) < HeaderSize {
			if !errors.Is(err, ErrMalformed) || h != (Header{}) || attrs != nil {
				t.Fatalf("%d bytes: %+v %q %v, want ErrMalformed", len(msg), h, attrs, err)
			}
			return
		}
		want := Header{Version: msg[0], Op: Op(msg[1]), Code: Code(binary.LittleEndian.Uint16(msg[2:]))}
		if h != want {
			t.Fatalf("header %+v, want %+v", h, want)
		}
		switch {
		case msg[0] != Version:
			if !errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrMalformed) || attrs != nil {
				t.Fatalf("version %d: %q %v, want ErrUnsupportedVersion only", msg[0], attrs, err)
			}
			return
		case binary.LittleEndian.Uint32(msg[4:]) != 0:
			if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupportedVersion) || attrs != nil {
				t.Fatalf("reserved %x: %q %v, want ErrMalformed only", msg[4:8], attrs, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("valid header %x: %v", msg[:HeaderSize], err)
		}
		if !bytes.Equal(attrs, msg[HeaderSize:]) || len(attrs) > 0 && &attrs[0] != &msg[HeaderSize] {
			t.Fatal("attributes are not the bytes after the header")
		}
		if m := NewMessage(nil, h.Op, h.Code); !bytes.Equal(m.Bytes(), msg[:HeaderSize]) {
			t.Fatalf("header %+v re-encodes as %x, not %x", h, m.Bytes(), msg[:HeaderSize])
		}
		walk(t, attrs, 0)
	})
}

// FuzzAttrs walks arbitrary bytes as attributes, and every value as
// nested attributes and as each kind of value: the iterator never returns
// bytes past the end of its buffer (the fuzzer's bytes sit in a larger
// array, so a short overrun would not fault), stops with an ErrMalformed
// exactly when the lengths do not add up, and the value checks agree with
// the documented alphabets.
func FuzzAttrs(f *testing.F) {
	addMessageSeeds(f)
	for _, s := range []string{"a.service:zincati-fd", "cgroup:/a/b:n", ":x", "x:", "a:b/c", "web-1", ".x", "-x", "x" + strings.Repeat("y", 128)} {
		f.Add(append([]byte{byte(AttrRef), 0, byte(len(s)), byte(len(s) >> 8)}, s...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Room after the input, so that a value sliced past len (but
		// within cap) would not fault: walk catches it.
		buf := make([]byte, len(b), len(b)+64)
		copy(buf, b)
		walk(t, buf, 0)
	})
}

// walk iterates the attributes in b (and, to a depth, each value as
// nested attributes): each value is exactly the bytes its header
// describes and within b, the value decoders agree on it, the iteration
// stops with ErrMalformed exactly where no whole attribute is left, and
// what decoded re-encodes to the same bytes.
func walk(t *testing.T, b []byte, depth int) {
	t.Helper()
	it := Attrs(b)
	m := NewMessage(nil, 0, 0)
	off := 0
	for typ, v, ok := it.Next(); ok; typ, v, ok = it.Next() {
		if off+4 > len(b) {
			t.Fatalf("attribute at %d of %d bytes has no room for its header", off, len(b))
		}
		if wt := Attr(binary.LittleEndian.Uint16(b[off:])); typ != wt {
			t.Fatalf("type %d at %d, want %d", typ, off, wt)
		}
		n := int(binary.LittleEndian.Uint16(b[off+2:]))
		if len(v) != n || off+4+n > len(b) {
			t.Fatalf("attribute %d at %d: %d bytes of %d claimed, buffer %d", typ, off, len(v), n, len(b))
		}
		if n > 0 && &v[0] != &b[off+4] {
			t.Fatalf("attribute %d at %d: value is not the bytes after its header", typ, off)
		}
		values(t, v)
		if depth < 3 {
			walk(t, v, depth+1)
		}
		m.String(typ, string(v))
		off += 4 + n
	}
	switch rest := len(b) - off; {
	case rest == 0:
		if it.Err() != nil {
			t.Fatalf("all %d bytes decoded, yet %v", len(b), it.Err())
		}
	case !errors.Is(it.Err(), ErrMalformed):
		t.Fatalf("%d bytes left undecoded with error %v, want ErrMalformed", rest, it.Err())
	case rest >= 4 && int(binary.LittleEndian.Uint16(b[off+2:])) <= rest-4:
		t.Fatalf("stopped at %d before a complete attribute: %v", off, it.Err())
	}
	// The iterator stays stopped.
	if _, _, ok := it.Next(); ok {
		t.Fatal("Next returned an attribute after reporting the end")
	}
	if enc := m.Bytes()[HeaderSize:]; !bytes.Equal(enc, b[:off]) {
		t.Fatalf("attributes re-encode as\n%x\nnot\n%x", enc, b[:off])
	}
}

var (
	nameRE      = regexp.MustCompile(`^[A-Za-z0-9._@+=-]{1,255}$`)
	containerRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// values checks the decoders of attribute values against v.
func values(t *testing.T, v []byte) {
	t.Helper()
	u32, err := U32(v)
	switch {
	case len(v) == 4 && (err != nil || u32 != binary.LittleEndian.Uint32(v)):
		t.Fatalf("U32(%x) = %d, %v", v, u32, err)
	case len(v) != 4 && (!errors.Is(err, ErrMalformed) || u32 != 0):
		t.Fatalf("U32 of %d bytes = %d, %v, want ErrMalformed", len(v), u32, err)
	}
	if err == nil {
		m := NewMessage(nil, 0, 0)
		m.U32(1, u32)
		if !bytes.Equal(m.Bytes()[HeaderSize+4:], v) {
			t.Fatalf("U32 %d re-encodes to %x, not %x", u32, m.Bytes()[HeaderSize+4:], v)
		}
	}
	u64, err := U64(v)
	switch {
	case len(v) == 8 && (err != nil || u64 != binary.LittleEndian.Uint64(v)):
		t.Fatalf("U64(%x) = %d, %v", v, u64, err)
	case len(v) != 8 && (!errors.Is(err, ErrMalformed) || u64 != 0):
		t.Fatalf("U64 of %d bytes = %d, %v, want ErrMalformed", len(v), u64, err)
	}
	if err == nil {
		m := NewMessage(nil, 0, 0)
		m.U64(1, u64)
		if !bytes.Equal(m.Bytes()[HeaderSize+4:], v) {
			t.Fatalf("U64 %d re-encodes to %x, not %x", u64, m.Bytes()[HeaderSize+4:], v)
		}
	}

	s := string(v)
	if err, want := ValidName(s), nameRE.MatchString(s); (err == nil) != want {
		t.Fatalf("ValidName(%q) = %v, want valid %v", s, err, want)
	}
	if err, want := ValidContainerName(s), containerRE.MatchString(s); (err == nil) != want {
		t.Fatalf("ValidContainerName(%q) = %v, want valid %v", s, err, want)
	}
	owner, name, err := SplitRef(s)
	i := strings.LastIndexByte(s, ':')
	valid := i > 0 && i <= MaxIdentity && nameRE.MatchString(s[i+1:])
	switch {
	case valid != (err == nil):
		t.Fatalf("SplitRef(%q) = %q, %q, %v; want valid %v", s, owner, name, err, valid)
	case err == nil && (owner+":"+name != s || owner == "" || strings.Contains(name, ":")):
		t.Fatalf("SplitRef(%q) = %q, %q", s, owner, name)
	case err != nil && (owner != "" || name != ""):
		t.Fatalf("SplitRef(%q) failed (%v) but returned %q, %q", s, err, owner, name)
	}
}
