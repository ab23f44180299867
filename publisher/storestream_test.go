package publisher

import "testing"

func TestStoreStream(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"KV_fc_devices", true},
		{"OBJ_fc_images", true},
		{"fc_images", true},
		{"fc_audit", true},
		{"fc_events", true},
		{"KV_fc_sessions", true},
		{"fc2_images", false},
		{"KV_fc2_devices", false},
		{"fc_notices", false},
	} {
		if got := StoreStream("fc", c.name); got != c.want {
			t.Errorf("StoreStream(fc, %s) = %v, want %v", c.name, got, c.want)
		}
	}
}
