package enforce

import (
	"fmt"
	"os"
	"testing"

	"github.com/capd-dev/capd/internal/testutil"
)

// roles are the helper programs the test binary runs as when re-executed
// with CAPD_ENFORCE_ROLE set (registered by the vmguest tests).
var roles = map[string]func() int{}

func TestMain(m *testing.M) {
	if role := os.Getenv("CAPD_ENFORCE_ROLE"); role != "" {
		f := roles[role]
		if f == nil {
			fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
			os.Exit(2)
		}
		os.Exit(f())
	}
	os.Exit(testutil.LeakCheck(m))
}
