package bootctl

import (
	"context"
	"errors"
	"testing"
)

// TestBootSelection is the selection table: each case prepares a device
// and checks the decision of the next boot.
func TestBootSelection(t *testing.T) {
	type want struct {
		action  Action
		version uint64
		reason  Reason
		err     error
		trial   bool
	}
	// flipIn damages one byte of a region: the image (at) or the header.
	flipImage := func(t *testing.T, d *Device, r Region) {
		if err := d.f.FlipBit(d.imageOff(r)+100, 0); err != nil {
			t.Fatal(err)
		}
	}
	flipHeaderCRC := func(t *testing.T, d *Device, r Region) {
		if err := d.f.FlipBit(d.regionOff(r)+20, 1); err != nil { // security counter byte
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		slots int
		k     int
		setup func(t *testing.T, r rig, d *Device)
		want  want
	}{
		{"no candidate", 2, 3, func(t *testing.T, r rig, d *Device) {}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"older candidate", 2, 3, func(t *testing.T, r rig, d *Device) {
			// The factory image is v1; stage v0 by hand.
			if err := d.Stage(context.Background(), 0, testImage(0), infoFor(0, 1)); err != nil {
				t.Fatal(err)
			}
		}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"equal version", 2, 3, func(t *testing.T, r rig, d *Device) { stage(t, d, 1, 1) }, want{ActionNone, 1, ReasonNone, nil, false}},
		{"newer candidate", 2, 3, func(t *testing.T, r rig, d *Device) { stage(t, d, 2, 1) }, want{ActionInstalled, 2, ReasonNone, nil, true}},
		{"candidate hash damaged", 2, 3, func(t *testing.T, r rig, d *Device) {
			flipImage(t, d, r.l.Slots[stage(t, d, 2, 1)])
		}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"candidate tag from another device", 2, 3, func(t *testing.T, r rig, d *Device) {
			other := r.open(t, d.f)
			other.rot.DeviceKey = []byte("some-other-device-key")
			stage(t, other, 2, 1)
		}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"candidate header CRC damaged", 2, 3, func(t *testing.T, r rig, d *Device) {
			flipHeaderCRC(t, d, r.l.Slots[stage(t, d, 2, 1)])
		}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"candidate below floor", 2, 3, func(t *testing.T, r rig, d *Device) {
			raiseFloor(t, d, 1)
			stage(t, d, 2, 0)
		}, want{ActionNone, 1, ReasonNone, nil, false}},
		{"several candidates", 3, 3, func(t *testing.T, r rig, d *Device) {
			d.Stage(context.Background(), 0, testImage(3), infoFor(3, 1))
			d.Stage(context.Background(), 1, testImage(4), infoFor(4, 1))
			d.Stage(context.Background(), 2, testImage(2), infoFor(2, 1))
		}, want{ActionInstalled, 4, ReasonNone, nil, true}},
		{"several candidates, newest damaged", 3, 3, func(t *testing.T, r rig, d *Device) {
			d.Stage(context.Background(), 0, testImage(3), infoFor(3, 1))
			d.Stage(context.Background(), 1, testImage(4), infoFor(4, 1))
			flipImage(t, d, r.l.Slots[1])
		}, want{ActionInstalled, 3, ReasonNone, nil, true}},
		{"damaged active, copy in a slot", 2, 3, func(t *testing.T, r rig, d *Device) {
			d.Stage(context.Background(), 1, testImage(1), infoFor(1, 1))
			flipImage(t, d, r.l.Active)
		}, want{ActionRecovered, 1, ReasonActiveDamaged, nil, false}},
		{"damaged active header, older image in a slot", 2, 3, func(t *testing.T, r rig, d *Device) {
			d.Stage(context.Background(), 1, testImage(0), infoFor(0, 1))
			flipHeaderCRC(t, d, r.l.Active)
		}, want{ActionRecovered, 0, ReasonActiveDamaged, nil, false}},
		{"damaged active, only a copy below the floor", 2, 3, func(t *testing.T, r rig, d *Device) {
			d.Stage(context.Background(), 1, testImage(0), infoFor(0, 0))
			raiseFloor(t, d, 1)
			flipImage(t, d, r.l.Active)
		}, want{ActionFailed, 0, ReasonNoValidImage, ErrNoBootableImage, false}},
		{"active below floor", 2, 3, func(t *testing.T, r rig, d *Device) {
			raiseFloor(t, d, 2)
		}, want{ActionFailed, 0, ReasonNoValidImage, ErrNoBootableImage, false}},
		{"unconfirmed trial image after K boots", 2, 2, func(t *testing.T, r rig, d *Device) {
			stage(t, d, 2, 1)
			if dec := mustBoot(t, d); dec.Action != ActionInstalled || dec.TrialBoots != 1 {
				t.Fatalf("install: %+v", dec)
			}
			if dec := mustBoot(t, d); dec.Action != ActionNone || !dec.Trial || dec.TrialBoots != 2 {
				t.Fatalf("trial boot: %+v", dec)
			}
		}, want{ActionReverted, 1, ReasonTrialExpired, nil, false}},
		{"damaged trial image", 2, 3, func(t *testing.T, r rig, d *Device) {
			stage(t, d, 2, 1)
			mustBoot(t, d)
			flipImage(t, d, r.l.Active)
		}, want{ActionReverted, 1, ReasonActiveDamaged, nil, false}},
		{"confirmed image stays", 2, 1, func(t *testing.T, r rig, d *Device) {
			stage(t, d, 2, 1)
			mustBoot(t, d)
			if err := d.Confirm(); err != nil {
				t.Fatal(err)
			}
		}, want{ActionNone, 2, ReasonNone, nil, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(4, tc.slots, WithTrialBoots(tc.k))
			f := r.factory(t, 1, 1)
			d := r.open(t, f)
			tc.setup(t, r, d)
			dec, err := r.open(t, f).Boot(context.Background())
			if !errors.Is(err, tc.want.err) || (tc.want.err == nil && err != nil) {
				t.Fatalf("boot error %v, want %v", err, tc.want.err)
			}
			if dec.Action != tc.want.action || dec.Trial != tc.want.trial || (dec.Booted && dec.Version != tc.want.version) {
				t.Fatalf("decision %+v, want %+v", dec, tc.want)
			}
			if dec.Reason != tc.want.reason.String() {
				t.Fatalf("reason %q, want %q", dec.Reason, tc.want.reason)
			}
			if !dec.Booted {
				return
			}
			if err := r.checkActive(f, dec.Version); err != nil {
				t.Fatal(err)
			}
			// And the next boot is stable.
			again := mustBoot(t, r.open(t, f))
			if again.Action != ActionNone || again.Version != dec.Version {
				t.Fatalf("next boot %+v", again)
			}
		})
	}
}

// raiseFloor confirms a fake trial to raise the floor to c.
func raiseFloor(t *testing.T, d *Device, c uint64) {
	t.Helper()
	st := d.log.cur
	st.Floor = c
	if err := d.log.append(st); err != nil {
		t.Fatal(err)
	}
}

// TestRevertRejectsFailedImage: after a revert the failed image is never
// installed again, and a newer one still is.
func TestRevertRejectsFailedImage(t *testing.T) {
	r := newRig(16, 2, WithTrialBoots(1))
	f := r.factory(t, 1, 1)
	d := r.open(t, f)
	stage(t, d, 2, 1)
	mustBoot(t, d)
	dec := mustBoot(t, d)
	if dec.Action != ActionReverted || dec.Version != 1 {
		t.Fatalf("revert: %+v", dec)
	}
	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Trial || st.LastAction != ActionReverted || st.LastReason != ReasonTrialExpired.String() {
		t.Fatalf("status %+v", st)
	}
	for i := range 3 {
		if dec := mustBoot(t, d); dec.Action != ActionNone || dec.Version != 1 {
			t.Fatalf("boot %d after revert: %+v", i, dec)
		}
	}
	stage(t, d, 3, 1)
	if dec := mustBoot(t, d); dec.Action != ActionInstalled || dec.Version != 3 {
		t.Fatalf("new candidate: %+v", dec)
	}
}

// TestRecoveryStateAcceptsCandidate: with nothing bootable the device
// says so, and boots the next valid candidate.
func TestRecoveryStateAcceptsCandidate(t *testing.T) {
	r := newRig(4, 2)
	f, _ := NewMemFlash(r.g)
	d := r.open(t, f)
	dec, err := d.Boot(context.Background())
	if !errors.Is(err, ErrNoBootableImage) || dec.Booted || dec.Action != ActionFailed {
		t.Fatalf("empty flash: %+v, %v", dec, err)
	}
	stage(t, d, 5, 1)
	if dec := mustBoot(t, d); dec.Version != 5 || !dec.Booted {
		t.Fatalf("after staging: %+v", dec)
	}
}

// TestFloorRises: Confirm raises the floor to the confirmed image's
// counter, and it never goes down.
func TestFloorRises(t *testing.T) {
	r := newRig(4, 2, WithTrialBoots(1))
	f := r.factory(t, 1, 1)
	d := r.open(t, f)
	stage(t, d, 2, 7)
	mustBoot(t, d)
	if err := d.Confirm(); err != nil {
		t.Fatal(err)
	}
	if err := d.Confirm(); err != nil { // idempotent
		t.Fatal(err)
	}
	st, _ := d.Status()
	if st.Floor != 7 || st.Trial {
		t.Fatalf("status %+v", st)
	}
	// v3 with a lower counter is refused as a candidate.
	stage(t, d, 3, 6)
	if dec := mustBoot(t, d); dec.Version != 2 || dec.Action != ActionNone {
		t.Fatalf("low-counter candidate: %+v", dec)
	}
	// Many records later (status sectors wrap) the floor holds.
	for range 20 {
		raiseFloor(t, d, 0)
	}
	if err := d.log.load(); err != nil || d.log.cur.Floor != 7 {
		t.Fatalf("floor after wrap: %d, %v", d.log.cur.Floor, err)
	}
}

func TestFreeSlot(t *testing.T) {
	r := newRig(4, 3)
	f := r.factory(t, 1, 1)
	d := r.open(t, f)
	if s, err := d.FreeSlot(); err != nil || s != 0 {
		t.Fatalf("empty slots: %d, %v", s, err)
	}
	d.Stage(context.Background(), 0, testImage(1), infoFor(1, 1)) // copy of the active image
	d.Stage(context.Background(), 1, testImage(5), infoFor(5, 1))
	d.Stage(context.Background(), 2, testImage(4), infoFor(4, 1))
	if s, err := d.FreeSlot(); err != nil || s != 2 {
		t.Fatalf("full slots: %d, %v (want the lowest version that is not the active copy)", s, err)
	}
	r2 := newRig(4, 2)
	f2 := r2.factory(t, 1, 1)
	d2 := r2.open(t, f2)
	stage(t, d2, 2, 1)
	mustBoot(t, d2) // v2 in trial, v1 kept in slot 1
	if _, err := d2.FreeSlot(); !errors.Is(err, ErrNoFreeSlot) {
		t.Fatalf("during trial: %v", err)
	}
}

type memCounter struct{ v uint64 }

func (c *memCounter) Value() (uint64, error) { return c.v, nil }
func (c *memCounter) Raise(v uint64) error   { c.v = max(c.v, v); return nil }

// TestHardwareFloor: with a monotonic counter in the root of trust,
// erasing the status area does not lower the floor; without one it does.
func TestHardwareFloor(t *testing.T) {
	for _, hw := range []bool{true, false} {
		r := newRig(4, 2)
		cnt := &memCounter{}
		if hw {
			r.rot.Counter = cnt
		}
		f := r.factory(t, 1, 1)
		d := r.open(t, f)
		stage(t, d, 2, 3) // slot 0; the install keeps v1 (counter 1) in slot 1
		mustBoot(t, d)
		if err := d.Confirm(); err != nil {
			t.Fatal(err)
		}
		// An attacker erases the status area and damages both copies of v2.
		for s := range r.l.Status.Sectors {
			f.Erase(r.l.Status.Start + s)
		}
		f.FlipBit(d.imageOff(r.l.Active), 0)
		f.FlipBit(d.imageOff(r.l.Slots[0]), 0)
		dec, err := d.Boot(context.Background())
		if hw {
			if cnt.v != 3 || !errors.Is(err, ErrNoBootableImage) {
				t.Fatalf("hardware floor: counter %d, boot %+v %v: want no bootable image", cnt.v, dec, err)
			}
			continue
		}
		if err != nil || dec.Version != 1 {
			t.Fatalf("flash-only floor: %+v %v: want v1 (the floor was erased)", dec, err)
		}
	}
}
