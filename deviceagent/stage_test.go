package deviceagent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// twoStage adds a bootloader stage (its own flash, version 1 confirmed)
// to device d, whose agent then boots the chain bootloader, application.
func (w *world) twoStage(d *device, bl1 []byte) *bootctl.Flash {
	w.t.Helper()
	f, err := bootctl.NewMemFlash(testGeom)
	if err != nil {
		w.t.Fatal(err)
	}
	bd, err := bootctl.Open(f, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx := context.Background()
	if err := bd.Stage(ctx, 0, bl1, bootctl.CandidateInfo{Version: 1, SecurityCounter: 1, Digest: sha256.Sum256(bl1)}); err != nil {
		w.t.Fatal(err)
	}
	if _, err := bd.Boot(ctx); err != nil {
		w.t.Fatal(err)
	}
	if err := bd.Confirm(); err != nil {
		w.t.Fatal(err)
	}
	prev := d.tune
	d.tune = func(c *Config) {
		b, err := bootctl.Open(f, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
		if err != nil {
			w.t.Fatal(err)
		}
		c.Stages = []Stage{{Component: "bootloader", Boot: b}}
		if prev != nil {
			prev(c)
		}
	}
	return f
}

func stageActive(t *testing.T, f *bootctl.Flash) bootctl.Status {
	t.Helper()
	bd, err := bootctl.Open(f, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		t.Fatal(err)
	}
	st, err := bd.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBootloaderStageUpdate: a manifest for the "bootloader" component
// updates a two-stage device's bootloader stage (the application stays),
// and a power cut at every flash operation of the stage's install (the
// chain's boot copying it into place), followed by a reset, ends with the
// new bootloader confirmed and the application running throughout.
func TestBootloaderStageUpdate(t *testing.T) {
	w := memWorld(t)
	bl1, bl2 := testImage(21, 12000), testImage(22, 13000)
	w.serve(bl2, nil)
	env := w.envelope(bl2, 2, func(o *suit.CreateOptions) { o.Component = "bootloader" }, nil)

	// Without a cut; the install's flash operations are counted.
	d := w.newDevice("dev-bl", nil)
	bf := w.twoStage(d, bl1)
	var installOps uint64
	var before uint64
	d.tune = func(prev func(*Config)) func(*Config) {
		return func(c *Config) {
			prev(c)
			c.OnState = func(r Record) {
				switch r.State {
				case schemas.StateRebooting:
					before = bf.Stats().Ops()
				case schemas.StateTrial:
					if installOps == 0 {
						installOps = bf.Stats().Ops() - before
					}
				}
			}
		}
	}(d.tune)
	d.start()
	w.notice("camp-bl", "dev-bl", false, bl2, env)
	r := w.waitReport("dev-bl", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed || r.State == schemas.StateRolledBack
	})
	d.stop()
	if r.State != schemas.StateConfirmed {
		t.Fatalf("ended %s %s: %s\n%s", r.State, r.Code, r.Text, w.dump("dev-bl"))
	}
	if st := stageActive(t, bf); st.Active.Digest != sha256.Sum256(bl2) || st.Trial {
		t.Fatalf("bootloader stage: %+v", st.Active)
	}
	if a := d.active(); a.Version != 1 || a.Digest != sha256.Sum256(w.v1) {
		t.Fatalf("the application changed: %+v", a)
	}
	if installOps == 0 {
		t.Fatal("no flash operations counted for the stage's install")
	}
	t.Logf("the stage's install takes %d flash operations", installOps)

	for k := uint64(0); k < installOps; k++ {
		id := fmt.Sprintf("dev-blc-%d", k)
		d := w.newDevice(id, nil)
		bf := w.twoStage(d, bl1)
		var armed bool
		d.tune = func(prev func(*Config)) func(*Config) {
			return func(c *Config) {
				prev(c)
				c.OnState = func(r Record) {
					if r.State == schemas.StateRebooting && !armed {
						armed = true
						bf.Arm(bootctl.Fault{After: k, Kind: bootctl.FaultTorn})
					}
				}
			}
		}(d.tune)
		d.start()
		w.notice("camp-blc", id, false, bl2, env)
		if !waitPowerOff(bf, 20*time.Second) {
			t.Fatalf("cut at %d: the power was not cut", k)
		}
		d.stop()
		bf.PowerOn()
		if a := d.active(); !a.Valid || a.Version != 1 {
			t.Fatalf("cut at %d: the application does not run: %+v", k, a)
		}
		d.tune = func(prev func(*Config)) func(*Config) {
			return func(c *Config) { prev(c); c.OnState = nil }
		}(d.tune)
		d.start()
		r := w.waitReport(id, 20*time.Second, func(r schemas.DeviceReport) bool {
			return r.Campaign == "camp-blc" && (r.State == schemas.StateConfirmed || r.State == schemas.StateFailed || r.State == schemas.StateRolledBack)
		})
		d.stop()
		if r.State != schemas.StateConfirmed {
			t.Fatalf("cut at %d: ended %s %s: %s\n%s", k, r.State, r.Code, r.Text, w.dump(id))
		}
		if st := stageActive(t, bf); st.Active.Digest != sha256.Sum256(bl2) || st.Trial {
			t.Fatalf("cut at %d: bootloader stage %+v", k, st.Active)
		}
	}
}
