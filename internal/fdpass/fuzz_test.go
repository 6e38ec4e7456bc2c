package fdpass

import (
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/testutil"
)

// cmsg encodes one control message the way the kernel lays it out
// (struct cmsghdr, then data, padded to CmsgSpace).
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	binary.NativeEndian.PutUint64(b, uint64(unix.CmsgLen(len(data))))
	binary.NativeEndian.PutUint32(b[8:], uint32(level))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func rights(fds ...int32) []byte {
	b := make([]byte, 4*len(fds))
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(b[4*i:], uint32(fd))
	}
	return cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, b)
}

// wantRights is parseRights written again with encoding/binary: the fds
// of every SCM_RIGHTS message up to the first header that does not fit,
// ErrControlTruncated for such a header, else ErrUnexpectedControl if any
// message was of another type.
func wantRights(oob []byte) ([]int, error) {
	var fds []int
	var err error
	hdr := unix.CmsgLen(0)
	for off := 0; len(oob)-off >= hdr; {
		l := binary.NativeEndian.Uint64(oob[off:])
		if l < uint64(hdr) || l > uint64(len(oob)-off) {
			return fds, ErrControlTruncated
		}
		level := int32(binary.NativeEndian.Uint32(oob[off+8:]))
		typ := int32(binary.NativeEndian.Uint32(oob[off+12:]))
		if level == unix.SOL_SOCKET && typ == unix.SCM_RIGHTS {
			for i := off + hdr; i+4 <= off+int(l); i += 4 {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(oob[i:]))))
			}
		} else {
			err = ErrUnexpectedControl
		}
		off += unix.CmsgSpace(int(l) - hdr)
	}
	return fds, err
}

// FuzzParseRights parses arbitrary control data as Recv does: it never
// panics or loops, returns every fd of every SCM_RIGHTS message that is
// whole (so that Recv, on an error, closes each of them), keeps the fds
// it was given in front, and reports a malformed buffer with the
// package's sentinels only.
func FuzzParseRights(f *testing.F) {
	creds := make([]byte, unix.SizeofUcred)
	for _, seed := range [][]byte{
		nil,
		rights(5),
		rights(5, 6, 7),
		slices.Concat(rights(5), rights(6, 7)),
		slices.Concat(cmsg(unix.SOL_SOCKET, unix.SCM_CREDENTIALS, creds), rights(9)),
		slices.Concat(rights(3), cmsg(unix.SOL_SOCKET, unix.SCM_CREDENTIALS, creds), rights(4)),
		rights(5, 6)[:unix.CmsgLen(8)], // the last message's padding cut off
		rights(5, 6)[:unix.CmsgLen(4)], // a header claiming more than is left
		rights(5)[:unix.CmsgLen(0)-1],  // less than a header
		cmsg(unix.SOL_IP, unix.SCM_RIGHTS, []byte{1, 2, 3, 4}),
		cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, []byte{1, 2, 3, 4, 5, 6}), // a partial fd
		{0, 0, 0, 0, 0, 0, 0, 0x80, 1, 0, 0, 0, 1, 0, 0, 0},              // a negative length as int
	} {
		f.Add(seed, uint8(0))
	}
	f.Add(rights(5), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, prior uint8) {
		// Recv's control buffer is 8-byte aligned and so is every
		// message in it (CmsgSpace); give parseRights the same.
		words := make([]uint64, (len(b)+7)/8)
		oob := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), len(b))
		copy(oob, b)
		in := make([]int, prior%8)
		for i := range in {
			in[i] = 1000 + i
		}
		orig := slices.Clone(in)

		out, err := parseRights(oob, in)
		if !slices.Equal(out[:len(orig)], orig) {
			t.Fatalf("the fds passed in became %v, want %v", out[:len(orig)], orig)
		}
		want, werr := wantRights(b)
		if !slices.Equal(out[len(orig):], want) {
			t.Fatalf("parsed fds %v, want %v", out[len(orig):], want)
		}
		if !errors.Is(err, werr) {
			t.Fatalf("error %v, want %v", err, werr)
		}
	})
}

// FuzzRecv sends real messages with fds over a socketpair and receives
// them with buffers too small, limits too low, and a credentials message
// in front (SO_PASSCRED): whatever Recv returns, each fd it received is
// either returned (carrying CLOEXEC, a copy of the fd sent) or closed.
func FuzzRecv(f *testing.F) {
	f.Add(uint8(1), uint8(2), uint8(16), uint8(1), uint8(1), false)
	f.Add(uint8(3), uint8(1), uint8(16), uint8(8), uint8(1), false)
	f.Add(uint8(6), uint8(1), uint8(16), uint8(2), uint8(1), false)
	f.Add(uint8(1), uint8(8), uint8(4), uint8(2), uint8(1), false)
	f.Add(uint8(1), uint8(1), uint8(4), uint8(4), uint8(1), true)
	f.Add(uint8(0), uint8(0), uint8(0), uint8(0), uint8(0), false)
	null, err := os.Open("/dev/null")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { null.Close() })
	var want unix.Stat_t
	if err := unix.Fstat(int(null.Fd()), &want); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, nfds, size, bufSize, oobFDs, limit uint8, passcred bool) {
		nfds, size, bufSize, oobFDs, limit = nfds%12, size%64, bufSize%80, oobFDs%16, limit%4
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sp[0])
		defer unix.Close(sp[1])
		if passcred {
			if err := unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
				t.Fatal(err)
			}
		}
		fds := make([]int, nfds)
		for i := range fds {
			fds[i] = int(null.Fd())
		}
		if err := Send(sp[0], make([]byte, size), fds...); err != nil {
			t.Fatal(err)
		}
		var oob []byte // oobFDs 15: no control buffer at all
		if oobFDs < 15 {
			oob = make([]byte, OOBSize(int(oobFDs)))
		}
		buf := make([]byte, bufSize)
		before := len(testutil.FDs())
		n, out, err := Recv(sp[1], buf, oob, []int{-7}, int(limit))
		if len(out) == 0 || out[0] != -7 {
			t.Fatalf("the fds passed in became %v", out)
		}
		got := out[1:]
		for _, fd := range got {
			fl, ferr := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			var st unix.Stat_t
			serr := unix.Fstat(fd, &st)
			unix.Close(fd)
			if ferr != nil || fl&unix.FD_CLOEXEC == 0 || serr != nil || st.Dev != want.Dev || st.Ino != want.Ino {
				t.Errorf("received fd %d: flags %#x %v, stat %v: not a CLOEXEC copy of /dev/null", fd, fl, ferr, serr)
			}
		}
		if after := len(testutil.FDs()); after != before {
			t.Fatalf("Recv = %d, %v, %v: %d fds open after closing those returned, %d before", n, got, err, after, before)
		}
		fit := nfds == 0 || unix.CmsgLen(4*int(nfds)) <= len(oob)
		switch {
		case err != nil:
			if len(got) != 0 || n != 0 {
				t.Fatalf("Recv failed (%v) but returned %d bytes and fds %v", err, n, got)
			}
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrControlTruncated) && !errors.Is(err, ErrTooManyFDs) && !errors.Is(err, ErrUnexpectedControl) {
				t.Fatalf("Recv: %v is none of the package's errors", err)
			}
			if !passcred && fit && size <= bufSize && nfds <= limit {
				t.Fatalf("Recv of %d bytes and %d fds (buffer %d, control %d, max %d): %v", size, nfds, bufSize, len(oob), limit, err)
			}
		case passcred:
			t.Fatal("Recv accepted a credentials message")
		case !fit:
			t.Fatalf("%d fds fit in %d bytes of control buffer", nfds, len(oob))
		case size > bufSize:
			t.Fatalf("Recv accepted %d bytes into %d", size, bufSize)
		case len(got) != int(nfds) || nfds > limit || n != int(size):
			t.Fatalf("Recv = %d bytes and %d fds, sent %d and %d (max %d)", n, len(got), size, nfds, limit)
		}
	})
}
