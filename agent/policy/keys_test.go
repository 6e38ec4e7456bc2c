package policy

import (
	"strings"
	"testing"
)

// TOML keys are case-sensitive; the decoder's case-insensitive field
// matching must not let "Acquire" beside "acquire" (one of the two chosen
// by map order) or "[[Grant]]" through.
func TestKeysAreCaseSensitive(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\nAcquire = [\"c.service:y\"]\n", `capd.toml:4:1: unknown key "grant.Acquire"`},
		{"[[Grant]]\nconsumer = \"a.service\"\nacquire = [\"b.service:x\"]\n", `capd.toml:1:1: unknown key "Grant"`},
		{"[agent]\n\"max_entrie\u017f\" = 3\n", "capd.toml:2:1: unknown key \"agent.\\\"max_entrie\u017f\\\"\""},
		{"[[quota]]\ncgroup = \"/a\"\nMax_Entries = 3\n", `capd.toml:3:1: unknown key "quota.Max_Entries"`},
	} {
		_, err := Load(write(t, t.TempDir(), "capd.toml", tc.body), false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want %q", tc.body, err, tc.want)
		}
	}
}
