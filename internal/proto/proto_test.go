package proto

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	m := NewMessage(nil, OpPublish, CodeExists)
	m.String(AttrName, "zincati-fd")
	m.U32(AttrFlags, FlagPin)
	m.U64(AttrTTL, 1500)
	start := m.Begin(AttrEntry)
	m.String(AttrOwner, "a.service")
	m.Empty(AttrMore)
	m.End(start)
	h, attrs, err := ParseHeader(m.Bytes())
	if err != nil || h != (Header{Version: 1, Op: OpPublish, Code: CodeExists}) {
		t.Fatalf("header %+v, %v", h, err)
	}
	it := Attrs(attrs)
	var got []string
	for typ, v, ok := it.Next(); ok; typ, v, ok = it.Next() {
		switch typ {
		case AttrName:
			got = append(got, string(v))
		case AttrFlags:
			u, err := U32(v)
			if err != nil || u != FlagPin {
				t.Fatalf("flags %d %v", u, err)
			}
		case AttrTTL:
			u, err := U64(v)
			if err != nil || u != 1500 {
				t.Fatalf("ttl %d %v", u, err)
			}
		case AttrEntry:
			in := Attrs(v)
			for typ, v, ok := in.Next(); ok; typ, v, ok = in.Next() {
				got = append(got, strconv.Itoa(int(typ)), string(v))
			}
		}
	}
	if it.Err() != nil || strings.Join(got, ",") != "zincati-fd,2,a.service,13," {
		t.Fatalf("decoded %q, err %v", got, it.Err())
	}
}

func TestMalformed(t *testing.T) {
	if _, _, err := ParseHeader([]byte{1, 2}); !errors.Is(err, ErrMalformed) {
		t.Errorf("short header: %v", err)
	}
	if _, _, err := ParseHeader([]byte{2, 1, 0, 0, 0, 0, 0, 0}); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("version 2: %v", err)
	}
	if _, _, err := ParseHeader([]byte{1, 1, 0, 0, 0, 0, 0, 1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("reserved: %v", err)
	}
	for _, b := range [][]byte{{1}, {1, 0, 9, 0}, {1, 0, 2, 0, 'x'}} {
		it := Attrs(b)
		for _, _, ok := it.Next(); ok; _, _, ok = it.Next() {
		}
		if !errors.Is(it.Err(), ErrMalformed) {
			t.Errorf("attrs %v: %v", b, it.Err())
		}
	}
	if _, err := U32([]byte{1, 2}); !errors.Is(err, ErrMalformed) {
		t.Errorf("u32: %v", err)
	}
}

func TestErrorsMatchByCode(t *testing.T) {
	err := error(Errorf(CodeNotFound, "a.service:x is not published"))
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) {
		t.Fatal("errors.Is by code broken")
	}
	if err.Error() != "not-found: a.service:x is not published" {
		t.Fatalf("message %q", err)
	}
	if Code(99).String() != "error-99" {
		t.Fatal(Code(99).String())
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"zincati-fd", "a", "foo.op_fd@1+x=y", strings.Repeat("n", 255)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", "a/b", "a b", "*", "é", strings.Repeat("n", 256)} {
		if ValidName(bad) == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
	o, n, err := SplitRef("cgroup:/a/b:name")
	if err != nil || o != "cgroup:/a/b" || n != "name" {
		t.Fatalf("SplitRef = %q %q %v", o, n, err)
	}
	for _, bad := range []string{"noref", ":name", "a.service:", "a.service:b/c"} {
		if _, _, err := SplitRef(bad); err == nil {
			t.Errorf("SplitRef(%q) accepted", bad)
		}
	}
}
