package publisher

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestCountKeysFailedBefore: a device that refused an image because it
// failed on it before is counted as such, not as a failure of the
// campaign (which would count towards its failure threshold).
func TestCountKeysFailedBefore(t *testing.T) {
	for _, tc := range []struct {
		st   string // the stored JSON of a DeviceState
		want []string
	}{
		{`{"state":"failed","code":"failed-before"}`, []string{"failed-before"}},
		{`{"state":"failed","code":"digest"}`, []string{"failed", "failed.digest"}},
		{`{"state":"rolled-back","code":"boot-failed"}`, []string{"rolled-back", "failed.boot-failed"}},
		{`{"state":"confirmed"}`, []string{"confirmed"}},
	} {
		var st DeviceState
		if err := json.Unmarshal([]byte(tc.st), &st); err != nil {
			t.Fatal(err)
		}
		if got := countKeys(st); !slices.Equal(got, tc.want) {
			t.Errorf("countKeys(%s) = %v, want %v", tc.st, got, tc.want)
		}
	}
}
