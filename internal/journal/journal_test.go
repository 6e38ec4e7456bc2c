package journal

import "testing"

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{
		"identity":    "CAPD_IDENTITY",
		"acct_uid":    "CAPD_ACCT_UID",
		"max-entries": "CAPD_MAX_ENTRIES",
		"é":           "CAPD__",
	} {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}
