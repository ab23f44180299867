package deviceagent

import (
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// The bootloader's security counter is the manifest's security version,
// not its sequence number (a signing time, which no hardware counter can
// hold): confirming an image of security version 3 signed at a Unix-ms
// sequence raises the floor to 3; an image with a lower explicit security
// version is refused as a rollback whatever its sequence; one without a
// security version keeps the floor.
func TestSecurityCounterFromManifest(t *testing.T) {
	w := memWorld(t)
	d := w.newDevice("dev-sv", nil)
	d.start()
	w.waitReport("dev-sv", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	floor := func() (uint64, uint64) {
		t.Helper()
		bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
		if err != nil {
			t.Fatal(err)
		}
		st, err := bd.Status()
		if err != nil {
			t.Fatal(err)
		}
		return st.Floor, st.Active.SecurityCounter
	}
	seq := uint64(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	update := func(camp string, img []byte, seq, sv uint64) schemas.DeviceReport {
		t.Helper()
		w.serve(img, nil)
		env := w.envelope(img, seq, func(o *suit.CreateOptions) { o.SecurityVersion = sv }, nil)
		before := w.maxCounter("dev-sv")
		w.notice(camp, "dev-sv", false, img, env)
		return w.waitReport("dev-sv", 20*time.Second, func(r schemas.DeviceReport) bool {
			return r.Counter > before && r.Campaign == camp && (r.State == schemas.StateConfirmed || r.State == schemas.StateFailed)
		})
	}
	if r := update("sv-3", testImage(31, 20000), seq, 3); r.State != schemas.StateConfirmed {
		t.Fatalf("security version 3: %s %s (%s)", r.State, r.Code, r.Text)
	}
	d.stop()
	if f, c := floor(); f != 3 || c != 3 {
		t.Errorf("after security version 3 signed at sequence %d: floor %d, active counter %d; want 3 and 3", seq, f, c)
	}
	d.start()
	r := update("sv-2", testImage(32, 20000), seq+1000, 2)
	if r.State != schemas.StateFailed || r.Code != schemas.CodeRollback {
		t.Errorf("security version 2 under floor 3: %s %s (%s), want failed rollback", r.State, r.Code, r.Text)
	}
	if r := update("sv-none", testImage(33, 20000), seq+2000, 0); r.State != schemas.StateConfirmed {
		t.Fatalf("no security version: %s %s (%s)", r.State, r.Code, r.Text)
	}
	d.stop()
	if f, c := floor(); f != 3 || c != 3 {
		t.Errorf("after an image without security version: floor %d, active counter %d; want 3 and 3 (kept)", f, c)
	}
}
