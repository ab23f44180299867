package bootctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

var (
	testKey = []byte("0123456789abcdef-device-key")
	testKEK = []byte("device-kek-16byt")
)

// rig is a small device for logic and power-cut tests: 512-byte sectors,
// a one-sector header and 9 image sectors per region, images of 9 sectors
// minus a few bytes (so the last write unit is partial for alignment 16).
type rig struct {
	g    Geometry
	l    Layout
	opts []Option
	rot  RootOfTrust
}

const rigImageSize = 9*512 - 37

func newRig(align, slots int, opts ...Option) rig {
	l := DefaultLayout(1, slots, 10)
	g := Geometry{SectorSize: 512, Sectors: l.Sectors(), WriteAlign: align}
	return rig{g: g, l: l, opts: opts, rot: RootOfTrust{DeviceKey: testKey, KEK: testKEK}}
}

// testImage returns the image of a version: deterministic bytes.
func testImage(version uint64) []byte {
	b := make([]byte, rigImageSize)
	r := rand.New(rand.NewPCG(version, 99))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func infoFor(version, counter uint64) CandidateInfo {
	return CandidateInfo{Version: version, SecurityCounter: counter, Digest: sha256.Sum256(testImage(version)),
		Campaign: fmt.Sprintf("camp-%d", version)}
}

// factory returns a flash holding the bootloader and image v1 (counter c).
func (r rig) factory(t testing.TB, version, counter uint64) *Flash {
	t.Helper()
	img, err := Combine(r.g, r.l, CombineInput{Bootloader: []byte("boot selector + bootloader"),
		App: testImage(version), Info: infoFor(version, counter), DeviceKey: testKey})
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewMemFlash(r.g)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(img); err != nil {
		t.Fatal(err)
	}
	f.ResetStats()
	return f
}

func (r rig) open(t testing.TB, f *Flash) *Device {
	t.Helper()
	d, err := Open(f, r.l, r.rot, r.opts...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// stage writes testImage(version) into the slot FreeSlot picks.
func stage(t testing.TB, d *Device, version, counter uint64) int {
	t.Helper()
	slot, err := d.FreeSlot()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stage(context.Background(), slot, testImage(version), infoFor(version, counter)); err != nil {
		t.Fatal(err)
	}
	return slot
}

func mustBoot(t testing.TB, d *Device) Decision {
	t.Helper()
	dec, err := d.Boot(context.Background())
	if err != nil {
		t.Fatalf("boot: %v (decision %+v)", err, dec)
	}
	return dec
}

// snapshot and clone copy a memory flash's bytes.
func snapshot(f *Flash) []byte { return bytes.Clone(f.st.(memStore)) }

func clone(g Geometry, snap []byte) *Flash {
	m := memStore(bytes.Clone(snap))
	return newFlash(g, m, false)
}

// checkActive verifies, independently of Boot, that the active region
// holds exactly testImage(version) under a valid header at or above floor.
func (r rig) checkActive(f *Flash, version uint64) error {
	d, err := Open(f, r.l, r.rot)
	if err != nil {
		return err
	}
	im, err := d.verify(context.Background(), r.l.Active)
	if err != nil {
		return fmt.Errorf("active image invalid: %w", err)
	}
	if im.hdr.Version != version {
		return fmt.Errorf("active header says version %d, want %d", im.hdr.Version, version)
	}
	if im.hdr.SecurityCounter < d.log.cur.Floor {
		return fmt.Errorf("active counter %d below floor %d", im.hdr.SecurityCounter, d.log.cur.Floor)
	}
	got := make([]byte, im.hdr.Size)
	if _, err := f.ReadAt(got, d.imageOff(r.l.Active)); err != nil {
		return err
	}
	if !bytes.Equal(got, testImage(version)) {
		return errors.New("active bytes differ from the image")
	}
	return nil
}
