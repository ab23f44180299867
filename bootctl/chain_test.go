package bootctl

import (
	"context"
	"errors"
	"testing"
)

// chainRig puts a bootloader stage and an application stage on one flash.
func chainRig(t *testing.T) (*Flash, *Device, *Device) {
	t.Helper()
	boot := DefaultLayout(1, 2, 10) // sectors 0..32
	app := Layout{HeaderSectors: 1, Boot: Region{0, 0}}
	next := boot.Sectors()
	app.Active = Region{next, 10}
	app.Slots = []Region{{next + 10, 10}, {next + 20, 10}}
	app.Status = Region{next + 30, 2}
	g := Geometry{SectorSize: 512, Sectors: app.Sectors(), WriteAlign: 4}
	f, err := NewMemFlash(g)
	if err != nil {
		t.Fatal(err)
	}
	rot := RootOfTrust{DeviceKey: testKey}
	bl, err := Open(f, boot, rot, WithTrialBoots(3))
	if err != nil {
		t.Fatal(err)
	}
	ap, err := Open(f, app, rot, WithTrialBoots(1))
	if err != nil {
		t.Fatal(err)
	}
	return f, bl, ap
}

func versions(decs []Decision) [2]uint64 {
	var v [2]uint64
	for i, d := range decs {
		v[i] = d.Version
	}
	return v
}

// TestChainDepthFirst: a faulty bootloader B2 with app A2 is walked back
// (B2,A2) -> (B2,A1) -> (B1,A1) as the faults accumulate.
func TestChainDepthFirst(t *testing.T) {
	_, bl, ap := chainRig(t)
	ctx := context.Background()
	c, err := NewChain(bl, ap)
	if err != nil {
		t.Fatal(err)
	}
	stage(t, bl, 1, 1) // versions 1..: bootloader and app use testImage too
	stage(t, ap, 1, 1)
	decs, err := c.Boot(ctx)
	if err != nil || versions(decs) != [2]uint64{1, 1} {
		t.Fatalf("first boot: %+v %v", decs, err)
	}
	if err := c.Confirm(); err != nil {
		t.Fatal(err)
	}
	stage(t, bl, 2, 1)
	stage(t, ap, 2, 1)
	want := [][2]uint64{{2, 2}, {2, 1}, {2, 1}, {1, 1}, {1, 1}}
	for i, w := range want {
		decs, err := c.Boot(ctx)
		if err != nil || versions(decs) != w {
			t.Fatalf("boot %d: %v %v, want %v", i+1, versions(decs), err, w)
		}
	}
	if st, _ := bl.Status(); st.LastAction != ActionReverted || st.Trial {
		t.Fatalf("bootloader status %+v", st)
	}
}

// TestChainAbandonsStageWithNothingToBoot: a bootloader in trial whose
// application stage has no bootable image is reverted in the same start.
func TestChainAbandonsStageWithNothingToBoot(t *testing.T) {
	f, bl, ap := chainRig(t)
	ctx := context.Background()
	c, _ := NewChain(bl, ap)
	stage(t, bl, 1, 1)
	stage(t, ap, 1, 1)
	if _, err := c.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	c.Confirm()
	stage(t, bl, 2, 1)
	// Wipe every application image: nothing for B2 to boot.
	for _, r := range append([]Region{ap.l.Active}, ap.l.Slots...) {
		f.Erase(r.Start)
	}
	decs, err := c.Boot(ctx)
	if !errors.Is(err, ErrNoBootableImage) {
		t.Fatalf("boot: %+v %v", decs, err)
	}
	if decs[0].Version != 1 || decs[0].Action != ActionReverted {
		t.Fatalf("bootloader not reverted: %+v", decs[0])
	}
	if err := bl.Abandon(); !errors.Is(err, ErrNotInTrial) {
		t.Fatalf("abandon without trial: %v", err)
	}
}

// TestPowerCutChain cuts power at every operation of a chain boot that
// installs a new bootloader and a new application: the next start boots
// valid images at once, is stable, and completes both installs.
func TestPowerCutChain(t *testing.T) {
	f0, bl0, ap0 := chainRig(t)
	stage(t, bl0, 1, 1)
	stage(t, ap0, 1, 1)
	c0, _ := NewChain(bl0, ap0)
	if _, err := c0.Boot(context.Background()); err != nil {
		t.Fatal(err)
	}
	c0.Confirm()
	stage(t, bl0, 2, 1)
	stage(t, ap0, 2, 1)
	snap := snapshot(f0)
	open := func(f *Flash) *Chain {
		bl, err := Open(f, bl0.l, bl0.rot, WithTrialBoots(3))
		if err != nil {
			t.Fatal(err)
		}
		ap, err := Open(f, ap0.l, ap0.rot, WithTrialBoots(1))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := NewChain(bl, ap)
		return c
	}
	f := clone(f0.Geometry(), snap)
	decs, err := open(f).Boot(context.Background())
	if err != nil || versions(decs) != [2]uint64{2, 2} {
		t.Fatalf("clean: %v %v", versions(decs), err)
	}
	ops, runs := f.Stats().Ops(), 0
	for k := uint64(0); k < ops; k++ {
		for _, kind := range []FaultKind{FaultCut, FaultTorn, FaultInterruptErase} {
			f := clone(f0.Geometry(), snap)
			f.Arm(Fault{After: k, Kind: kind})
			if _, err := open(f).Boot(context.Background()); !errors.Is(err, ErrPowerLost) {
				t.Fatalf("op %d %s: %v", k, kind, err)
			}
			if (kind == FaultTorn && f.lastHit != "program") || (kind == FaultInterruptErase && f.lastHit != "erase") {
				continue
			}
			runs++
			f.PowerOn()
			c := open(f)
			decs, err := c.Boot(context.Background())
			if err != nil || versions(decs) != [2]uint64{2, 2} {
				t.Fatalf("op %d %s: first boot after the cut: %v %v", k, kind, versions(decs), err)
			}
			for i, d := range c.stages {
				if _, err := d.verify(context.Background(), d.l.Active); err != nil {
					t.Fatalf("op %d %s: stage %d active image: %v", k, kind, i+1, err)
				}
			}
			if err := c.Confirm(); err != nil {
				t.Fatal(err)
			}
			again, err := c.Boot(context.Background())
			if err != nil || again[0].Action != ActionNone || again[1].Action != ActionNone || versions(again) != [2]uint64{2, 2} {
				t.Fatalf("op %d %s: not stable: %+v %v", k, kind, again, err)
			}
		}
	}
	t.Logf("chain install: %d operations, %d faults tried, all booted (B2, A2) on the next start", ops, runs)
}
