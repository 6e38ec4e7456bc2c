package store

import (
	"fmt"
	"strconv"
	"strings"
)

// IDPrefix starts every entry id.
const IDPrefix = "e-"

// EntryID is the id of the n-th entry published: "e-N", N unique for the
// store's whole life, then the owner and name as far as a systemd FDNAME
// allows ([A-Za-z0-9_.-], 255 bytes; other bytes become '_'), so that an
// operator recognises them ("systemd-analyze fdstore capd").
func EntryID(n uint64, owner, name string) string {
	b := []byte(IDPrefix + strconv.FormatUint(n, 10) + "." + owner + "." + name)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			b[i] = '_'
		}
	}
	return string(b[:min(len(b), 255)])
}

// ParseEntryID returns the N of an entry id "e-N" or "e-N.ANYTHING".
func ParseEntryID(id string) (uint64, error) {
	n, ok := strings.CutPrefix(id, IDPrefix)
	if i := strings.IndexByte(n, '.'); i >= 0 {
		n = n[:i]
	}
	v, err := strconv.ParseUint(n, 10, 64)
	if !ok || err != nil || n == "" || n[0] == '0' || len(id) > 255 {
		return 0, fmt.Errorf("entry id %q is not %sN[.OWNER.NAME]", id, IDPrefix)
	}
	return v, nil
}
