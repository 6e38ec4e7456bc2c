package linux

import "testing"

// SameDescription answers alike through F_DUPFD_QUERY and through the
// kcmp(2) fallback that kernels before 6.10 take.
func TestSameDescriptionKcmp(t *testing.T) {
	a, err := MemfdCreate("a")
	if err != nil {
		t.Fatal(err)
	}
	defer Close(a)
	d, _ := DupCloexec(a, 3)
	defer Close(d)
	r, err := Reopen(a, false)
	if err != nil {
		t.Fatal(err)
	}
	defer Close(r)
	defer noDupfdQuery.Store(false)
	for _, kcmp := range []bool{false, true} {
		noDupfdQuery.Store(kcmp)
		for _, tc := range []struct {
			b    int
			want bool
		}{{a, true}, {d, true}, {r, false}} {
			if got, err := SameDescription(a, tc.b); err != nil || got != tc.want {
				t.Errorf("kcmp=%v: SameDescription(a, %d) = %v, %v; want %v", kcmp, tc.b, got, err, tc.want)
			}
		}
	}
}
