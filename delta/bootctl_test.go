package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/firmcast/firmcast/bootctl"
)

// deviceRig is a small bootctl device: 1 KiB sectors, 16-byte write
// units, two slots, regions of 40 sectors (a 39 KiB image capacity).
type deviceRig struct {
	g   bootctl.Geometry
	l   bootctl.Layout
	rot bootctl.RootOfTrust
}

func newDeviceRig() deviceRig {
	l := bootctl.DefaultLayout(1, 2, 40)
	return deviceRig{g: bootctl.Geometry{SectorSize: 1024, Sectors: l.Sectors(), WriteAlign: 16}, l: l,
		rot: bootctl.RootOfTrust{DeviceKey: []byte("delta-test-device-key")}}
}

// factory returns a flash holding the bootloader and image v1, with an
// older image in each slot (so erases have old bytes to leave behind).
func (r deviceRig) factory(t testing.TB, v1 []byte) *bootctl.Flash {
	t.Helper()
	img, err := bootctl.Combine(r.g, r.l, bootctl.CombineInput{Bootloader: []byte("bootloader"), App: v1,
		Info: bootctl.CandidateInfo{Version: 1, Campaign: "factory"}, DeviceKey: r.rot.DeviceKey})
	if err != nil {
		t.Fatal(err)
	}
	f, err := bootctl.NewMemFlash(r.g)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(img); err != nil {
		t.Fatal(err)
	}
	dev, err := bootctl.Open(f, r.l, r.rot)
	if err != nil {
		t.Fatal(err)
	}
	old := randBytes(99, len(v1))
	for slot := range r.l.Slots {
		if err := dev.Stage(context.Background(), slot, old, bootctl.CandidateInfo{Digest: sha256.Sum256(old)}); err != nil {
			t.Fatal(err)
		}
	}
	f.ResetStats()
	return f
}

// active reads the active image's first n bytes, as the device reads its
// running image (the delta's source).
func (r deviceRig) active(f *bootctl.Flash, n int64) io.ReaderAt {
	off := int64(r.l.Active.Start+r.l.HeaderSectors) * int64(r.g.SectorSize)
	return io.NewSectionReader(f, off, n)
}

// agentState is what a device agent keeps on its own storage across
// resets: the slot it stages into, whether it started erasing that slot
// for this update (open) and finished (erased), and the last checkpoint.
type agentState struct {
	slot       int
	open       bool
	erased     bool
	checkpoint []byte
	committed  bool
	resumedAt  int // the frame the last apply started from
}

// stageDelta is the agent's side of a delta update, as the deviceagent
// wiring will do it: open (or reopen) the candidate slot, apply the
// staged delta from the active slot into it with checkpoints, and commit
// only if the result is the signed digest.
func stageDelta(ctx context.Context, r deviceRig, f *bootctl.Flash, st *agentState, d []byte, signed [32]byte) error {
	dev, err := bootctl.Open(f, r.l, r.rot)
	if err != nil {
		return err
	}
	p, err := Open(bytes.NewReader(d), int64(len(d)))
	if err != nil {
		return err
	}
	h := p.Header()
	if h.TargetDigest != signed {
		return fmt.Errorf("delta makes %s, the manifest signs %x", h.TargetDigest, signed)
	}
	var cand *bootctl.Candidate
	switch {
	case st.erased:
		cand, err = dev.ResumeCandidate(ctx, st.slot, h.TargetSize)
	default:
		if !st.open {
			if st.slot, err = dev.FreeSlot(); err != nil {
				return err
			}
		}
		// Persisted before the erase: a reset during it erases again.
		st.open, st.checkpoint = true, nil
		cand, err = dev.OpenCandidate(ctx, st.slot, h.TargetSize)
		st.erased = err == nil
	}
	if err != nil {
		return err
	}
	opts := []ApplyOption{WithCheckpoints(func(_ context.Context, cp Checkpoint) error {
		b, err := cp.MarshalBinary()
		st.checkpoint = b
		return err
	}, 1)}
	if st.checkpoint != nil {
		var cp Checkpoint
		if err := cp.UnmarshalBinary(st.checkpoint); err != nil {
			return err
		}
		opts = append(opts, WithResume(cp))
	}
	res, err := p.Apply(ctx, r.active(f, int64(h.SourceSize)), cand, opts...)
	st.resumedAt = res.From
	if err != nil {
		return err
	}
	if res.Digest != signed {
		return fmt.Errorf("result %s is not the signed digest", res.Digest)
	}
	if err := cand.Commit(ctx, bootctl.CandidateInfo{Version: 2, Digest: signed, Campaign: "delta"}); err != nil {
		return err
	}
	st.committed = true
	return nil
}

// TestDeltaPowerCutEveryFlashOp: a power cut (plain, torn program,
// interrupted erase) at every flash operation of a delta update (opening
// the candidate, applying the delta into it, committing it) leaves a
// device that boots v1, and resuming (from the last checkpoint, or from
// the start when the cut left bytes a resume cannot program over) ends
// with v2 committed and installed by the next boot. Plain cuts and
// interrupted erases always resume from the last checkpoint; only a torn
// program (bytes half written) makes the agent erase the slot again.
func TestDeltaPowerCutEveryFlashOp(t *testing.T) {
	ctx := context.Background()
	r := newDeviceRig()
	v1 := firmwareLike(71, 30_000)
	v2 := splice(splice(v1, 5000, 0, randBytes(72, 700)), 21_000, 64, []byte("v2 code"))
	d := mustMake(t, v1, v2, WithFrameSize(MinFrameSize))
	signed := sha256.Sum256(v2)
	for _, kind := range []bootctl.FaultKind{bootctl.FaultCut, bootctl.FaultTorn, bootctl.FaultInterruptErase} {
		resumed, reopened := 0, 0
		for k := uint64(0); ; k++ {
			f := r.factory(t, v1)
			f.Arm(bootctl.Fault{After: k, Kind: kind})
			st := &agentState{}
			restarts := 0
			for attempt := 0; ; attempt++ {
				if attempt > 5 {
					t.Fatalf("%s at op %d: no progress after %d attempts", kind, k, attempt)
				}
				err := stageDelta(ctx, r, f, st, d, signed)
				if err == nil {
					break
				}
				switch {
				case errors.Is(err, bootctl.ErrPowerLost):
					f.PowerOn()
					// The device boots v1 while the update is half done.
					dev, err := bootctl.Open(f, r.l, r.rot)
					if err != nil {
						t.Fatal(err)
					}
					dec, err := dev.Boot(ctx)
					if err != nil || !dec.Booted || dec.Version != 1 {
						t.Fatalf("%s at op %d: boot after the cut: %+v, %v", kind, k, dec, err)
					}
				case errors.Is(err, bootctl.ErrConflict), errors.Is(err, bootctl.ErrNotErased):
					// A torn program or an interrupted erase left bytes
					// that cannot be programmed over: reopen the slot.
					st.erased = false
					restarts++
				default:
					t.Fatalf("%s at op %d: %v", kind, k, err)
				}
			}
			// The install at the next boot is bootctl's (its power-cut
			// tests cover it): disarm before it.
			fired := f.Stats().Faults > 0
			f.PowerOn()
			if st.resumedAt > 0 {
				resumed++
			}
			if restarts > 0 {
				reopened++
			}
			dev, err := bootctl.Open(f, r.l, r.rot)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := dev.Boot(ctx)
			if err != nil || !dec.Booted || dec.Version != 2 || dec.Digest != signed {
				t.Fatalf("%s at op %d: boot after the update: %+v, %v", kind, k, dec, err)
			}
			got := make([]byte, len(v2))
			if _, err := r.active(f, int64(len(v2))).ReadAt(got, 0); err != nil || !bytes.Equal(got, v2) {
				t.Fatalf("%s at op %d: the active image is not v2 (%v)", kind, k, err)
			}
			if !fired {
				t.Logf("%s: cut at each of the %d flash operations of the update: %d resumed from a checkpoint, %d reopened the slot",
					kind, k, resumed, reopened)
				if kind != bootctl.FaultTorn && (resumed == 0 || reopened > 0) {
					t.Fatalf("%s: cuts must resume from checkpoints, never erase the slot again", kind)
				}
				break
			}
		}
	}
}
