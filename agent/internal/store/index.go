package store

import (
	"hash/maphash"
	"iter"
)

// index finds entries by owner and name: an open-addressing hash table of
// entry pointers (linear probing, deletion by backward shift), 8 bytes a
// slot, where a Go map would keep a copy of both key strings beside each
// pointer (40 bytes a slot). The hash is seeded per table, so clients
// cannot choose names that collide.
type index struct {
	seed  maphash.Seed
	slots []*Entry // nil, or a power of two long
	n     int
}

const minSlots = 8

func newIndex() index { return index{seed: maphash.MakeSeed()} }

func (x *index) hash(owner, name string) uint64 {
	return maphash.String(x.seed, owner)*0x9e3779b97f4a7c15 ^ maphash.String(x.seed, name)
}

func (x *index) home(e *Entry) int {
	return int(x.hash(e.Owner(), e.name) & uint64(len(x.slots)-1))
}

// Len is the number of entries.
func (x *index) Len() int { return x.n }

// get returns the entry owner:name, nil if there is none.
func (x *index) get(owner, name string) *Entry {
	if x.n == 0 {
		return nil
	}
	mask := len(x.slots) - 1
	for i := int(x.hash(owner, name)) & mask; x.slots[i] != nil; i = (i + 1) & mask {
		if e := x.slots[i]; e.name == name && e.Owner() == owner {
			return e
		}
	}
	return nil
}

// put inserts e, whose key must not be in the table.
func (x *index) put(e *Entry) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.resize(max(minSlots, 2*len(x.slots)))
	}
	x.place(e)
	x.n++
}

func (x *index) place(e *Entry) {
	mask := len(x.slots) - 1
	i := x.home(e)
	for x.slots[i] != nil {
		i = (i + 1) & mask
	}
	x.slots[i] = e
}

// del removes e, if it is in the table.
func (x *index) del(e *Entry) {
	if x.n == 0 {
		return
	}
	mask := len(x.slots) - 1
	i := x.home(e)
	for x.slots[i] != e {
		if x.slots[i] == nil {
			return
		}
		i = (i + 1) & mask
	}
	// Move back every entry of the run after i that may live at i: one
	// whose home is not cyclically within (i, j].
	for j := (i + 1) & mask; x.slots[j] != nil; j = (j + 1) & mask {
		if h := x.home(x.slots[j]); (j-h)&mask >= (j-i)&mask {
			x.slots[i] = x.slots[j]
			i = j
		}
	}
	x.slots[i] = nil
	x.n--
	if len(x.slots) > minSlots && x.n*8 < len(x.slots) {
		x.resize(len(x.slots) / 2)
	}
}

func (x *index) resize(n int) {
	old := x.slots
	x.slots = make([]*Entry, n)
	for _, e := range old {
		if e != nil {
			x.place(e)
		}
	}
}

// all yields every entry, in no order; the table must not change meanwhile.
func (x *index) all() iter.Seq[*Entry] {
	return func(yield func(*Entry) bool) {
		for _, e := range x.slots {
			if e != nil && !yield(e) {
				return
			}
		}
	}
}
