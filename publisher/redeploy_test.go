package publisher

import (
	"slices"
	"testing"
)

// TestCountKeysFailedBefore: a device that refused an image because it
// failed on it before is counted as such, not as a failure of the
// campaign (which would count towards its failure threshold).
func TestCountKeysFailedBefore(t *testing.T) {
	for _, tc := range []struct {
		st   DeviceState
		want []string
	}{
		{DeviceState{State: "failed", Code: "failed-before"}, []string{"failed-before"}},
		{DeviceState{State: "failed", Code: "digest"}, []string{"failed", "failed.digest"}},
		{DeviceState{State: "rolled-back", Code: "boot-failed"}, []string{"rolled-back", "failed.boot-failed"}},
		{DeviceState{State: "confirmed"}, []string{"confirmed"}},
	} {
		if got := countKeys(tc.st); !slices.Equal(got, tc.want) {
			t.Errorf("countKeys(%+v) = %v, want %v", tc.st, got, tc.want)
		}
	}
}
