package deviceagent

import (
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// TestRepeatedNoticeReportsOutcome: a notice sent again for an update the
// device has finished (a new publisher leader that may have missed the
// outcome) is answered with the outcome, with a newer counter, and starts
// nothing: no chunk is fetched again.
func TestRepeatedNoticeReportsOutcome(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(3, 20000+7)
	cs := w.serve(v2, nil)
	d := w.newDevice("dev-rn", nil)
	d.start()
	w.waitReport("dev-rn", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	env := w.envelope(v2, 2, nil, nil)
	w.notice("camp-rn", "dev-rn", false, v2, env)
	first := w.waitState("dev-rn", schemas.StateConfirmed, 20*time.Second)
	w.notice("camp-rn", "dev-rn", false, v2, env)
	again := w.waitReport("dev-rn", 5*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.Counter > first.Counter
	})
	if again.Campaign != "camp-rn" || again.ActiveVersion != 2 {
		t.Errorf("repeated outcome %+v: want confirmed on version 2 for camp-rn", again)
	}
	d.stop()
	for _, r := range w.reportsOf("dev-rn") {
		if r.Counter > first.Counter && r.State != schemas.StateConfirmed {
			t.Errorf("after the repeated notice the device reported %v (%q): want only the outcome", r.State, r.Text)
		}
	}
	for i, n := range cs.Served() {
		if n != 1 {
			t.Errorf("chunk %d served %d times", i, n)
		}
	}
}
