package metrics

import "strconv"

// The metric types Text writes.
const (
	Counter = "counter"
	Gauge   = "gauge"
)

// Text builds a text exposition: each family's HELP and TYPE lines, then
// its samples. It appends to a buffer the caller may reuse.
type Text struct {
	b []byte
}

// Reset starts a new exposition in b's storage.
func (t *Text) Reset(b []byte) { t.b = b[:0] }

// Bytes returns the exposition so far.
func (t *Text) Bytes() []byte { return t.b }

// Family starts metric family name of type typ (Counter, Gauge) with help
// text, which is escaped as the format wants.
func (t *Text) Family(name, typ, help string) {
	t.b = append(t.b, "# HELP "...)
	t.b = append(t.b, name...)
	t.b = append(t.b, ' ')
	for i := 0; i < len(help); i++ {
		switch c := help[i]; c {
		case '\\':
			t.b = append(t.b, `\\`...)
		case '\n':
			t.b = append(t.b, `\n`...)
		default:
			t.b = append(t.b, c)
		}
	}
	t.b = append(t.b, "\n# TYPE "...)
	t.b = append(t.b, name...)
	t.b = append(t.b, ' ')
	t.b = append(t.b, typ...)
	t.b = append(t.b, '\n')
}

// Sample writes one sample of name with value v and labels given as name,
// value pairs; label values are escaped.
func (t *Text) Sample(name string, v uint64, labels ...string) {
	t.b = append(t.b, name...)
	if len(labels) > 0 {
		t.b = append(t.b, '{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				t.b = append(t.b, ',')
			}
			t.b = append(t.b, labels[i]...)
			t.b = append(t.b, `="`...)
			for j := 0; j < len(labels[i+1]); j++ {
				switch c := labels[i+1][j]; c {
				case '\\':
					t.b = append(t.b, `\\`...)
				case '"':
					t.b = append(t.b, `\"`...)
				case '\n':
					t.b = append(t.b, `\n`...)
				default:
					t.b = append(t.b, c)
				}
			}
			t.b = append(t.b, '"')
		}
		t.b = append(t.b, '}')
	}
	t.b = append(t.b, ' ')
	t.b = strconv.AppendUint(t.b, v, 10)
	t.b = append(t.b, '\n')
}
