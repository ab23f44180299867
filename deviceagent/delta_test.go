package deviceagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// nextOf returns v with a few small changes: the next version of a
// firmware image.
func nextOf(v []byte, seed uint64) []byte {
	out := bytes.Clone(v)
	copy(out[len(out)/3:], testImage(seed, 300))
	copy(out[2*len(out)/3:], []byte(fmt.Sprintf("version %d", seed)))
	return out
}

// makeDelta makes the delta from src to dst (frames of frameSize, 0 for
// the default) and the offer a manifest makes of it.
func makeDelta(t *testing.T, src, dst []byte, frameSize int) ([]byte, suit.DeltaInfo) {
	t.Helper()
	var opts []delta.MakeOption
	if frameSize != 0 {
		opts = append(opts, delta.WithFrameSize(frameSize))
	}
	var b bytes.Buffer
	if _, err := delta.Make(context.Background(), &b, src, dst, opts...); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), deltaOffer(t, src, b.Bytes())
}

// deltaOffer is the manifest's offer of delta bytes d from image src.
func deltaOffer(t *testing.T, src, d []byte) suit.DeltaInfo {
	t.Helper()
	tab, err := schemas.BuildChunkTable(bytes.NewReader(d), testChunk)
	if err != nil {
		t.Fatal(err)
	}
	td, err := tab.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ss, ds := sha256.Sum256(src), sha256.Sum256(d)
	return suit.DeltaInfo{SourceDigest: ss[:], SourceSize: uint64(len(src)), Digest: ds[:], Size: uint64(len(d)),
		ChunkSize: testChunk, ChunkTableDigest: td[:]}
}

// withDeltas adds delta offers to a manifest.
func withDeltas(ds ...suit.DeltaInfo) func(*suit.CreateOptions) {
	return func(o *suit.CreateOptions) { o.Deltas = ds }
}

// served is the number of chunks a chunk server sent.
func served(cs *testutil.ChunkServer) int {
	n := 0
	for _, c := range cs.Served() {
		n += c
	}
	return n
}

// verifiedText is the text of the device's candidate-verified report.
func (w *world) verifiedText(dev string) string {
	for _, r := range w.reportsOf(dev) {
		if r.State == schemas.StateCandidateVerified {
			return r.Text
		}
	}
	return ""
}

// TestDeltaUpdate: a device running the delta's source takes the delta
// (only its chunks are fetched), applies it into the candidate slot and
// confirms the signed image; its reports carry the running image's digest.
func TestDeltaUpdate(t *testing.T) {
	w := memWorld(t)
	v2 := nextOf(w.v1, 2)
	d, offer := makeDelta(t, w.v1, v2, 0)
	full, dcs := w.serve(v2, nil), w.serve(d, nil)
	dev := w.newDevice("dev-d", nil)
	dev.start()
	w.notice("camp-d", "dev-d", false, v2, w.envelope(v2, 2, withDeltas(offer), nil))
	r := w.waitReport("dev-d", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
	})
	if r.State != schemas.StateConfirmed {
		t.Fatalf("ended %s: %s\n%s", r.State, r.Text, w.dump("dev-d"))
	}
	if got := dev.active(); got.Version != 2 || got.Digest != sha256.Sum256(v2) {
		t.Fatalf("active %+v", got)
	}
	if n := served(full); n != 0 {
		t.Errorf("%d chunks of the full image served, want none", n)
	}
	if n := served(dcs); n < (len(d)+testChunk-1)/testChunk {
		t.Errorf("%d chunks of the delta served, want all %d", n, (len(d)+testChunk-1)/testChunk)
	}
	if txt := w.verifiedText("dev-d"); !strings.Contains(txt, "applied") {
		t.Errorf("candidate-verified report %q does not say the delta was applied", txt)
	}
	want := sha256.Sum256(v2)
	if !bytes.Equal(r.ActiveDigest, want[:]) {
		t.Errorf("report's active digest %x, want %x", r.ActiveDigest, want)
	}
	t.Logf("image %d bytes, delta %d bytes", len(v2), len(d))
}

// TestDeltaFallsBackToFull: the device takes the full image, and never
// asks for the delta, when the delta is not from the image it runs; and
// when the delta is from it but does not apply (corrupt, or making
// another image than the signed one), nothing of the delta is committed
// and the full image is.
func TestDeltaFallsBackToFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		// mk returns the delta bytes served and the offer signed.
		mk        func(t *testing.T, v1, v2 []byte) ([]byte, suit.DeltaInfo)
		requested bool // whether the delta is downloaded at all
		why       string
	}{
		{name: "other source", requested: false, why: "this device runs", mk: func(t *testing.T, v1, v2 []byte) ([]byte, suit.DeltaInfo) {
			v0 := nextOf(v1, 9)
			return makeDelta(t, v0, v2, 0)
		}},
		{name: "corrupt frame", requested: true, why: "frame digest mismatch", mk: func(t *testing.T, v1, v2 []byte) ([]byte, suit.DeltaInfo) {
			d, _ := makeDelta(t, v1, v2, 0)
			d[len(d)-5] ^= 0x40 // in the last frame; the offer signs the corrupt bytes
			return d, deltaOffer(t, v1, d)
		}},
		{name: "makes another image", requested: true, why: "the manifest signs", mk: func(t *testing.T, v1, v2 []byte) ([]byte, suit.DeltaInfo) {
			return makeDelta(t, v1, nextOf(v1, 5), 0)
		}},
		{name: "header lies about its source", requested: true, why: "delta is from", mk: func(t *testing.T, v1, v2 []byte) ([]byte, suit.DeltaInfo) {
			// A delta from another image, signed as if from v1.
			d, _ := makeDelta(t, nextOf(v1, 9), v2, 0)
			return d, deltaOffer(t, v1, d)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := memWorld(t)
			v2 := nextOf(w.v1, 2)
			d, offer := tc.mk(t, w.v1, v2)
			full, dcs := w.serve(v2, nil), w.serve(d, nil)
			dev := w.newDevice("dev-f", nil)
			dev.start()
			w.notice("camp-f", "dev-f", false, v2, w.envelope(v2, 2, withDeltas(offer), nil))
			r := w.waitReport("dev-f", 20*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
			})
			if r.State != schemas.StateConfirmed || dev.active().Digest != sha256.Sum256(v2) {
				t.Fatalf("ended %s (%s), active %x\n%s", r.State, r.Text, dev.active().Digest, w.dump("dev-f"))
			}
			if served(full) == 0 {
				t.Error("the full image was not fetched")
			}
			reqs, tables, _ := dcs.Counts()
			if tc.requested != (reqs > 0) {
				t.Errorf("delta requested %d times (%d tables), want requested=%v", reqs, tables, tc.requested)
			}
			if !strings.Contains(w.dump("dev-f"), tc.why) {
				t.Errorf("no report says %q:\n%s", tc.why, w.dump("dev-f"))
			}
		})
	}
}

// TestPrecursor: the precursor condition holds only for a settled running
// image that is the delta's source, and a delta that failed during this
// update is not tried again.
func TestPrecursor(t *testing.T) {
	w := memWorld(t)
	v2 := nextOf(w.v1, 2)
	_, fromV1 := makeDelta(t, w.v1, v2, 0)
	_, fromV2 := makeDelta(t, v2, nextOf(w.v1, 3), 0)
	failed := fromV1
	failed.Digest = bytes.Repeat([]byte{7}, 32)
	trial := w.newDevice("dev-t", nil)
	// Stage and boot v2 without confirming it: v2 runs on trial.
	bd, err := bootctl.Open(trial.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := bd.Stage(context.Background(), 1, v2, bootctl.CandidateInfo{Version: 2, SecurityCounter: 1, Digest: sha256.Sum256(v2)}); err != nil {
		t.Fatal(err)
	}
	if dec, err := bd.Boot(context.Background()); err != nil || dec.Version != 2 {
		t.Fatalf("boot v2: %+v %v", dec, err)
	}
	for _, tc := range []struct {
		name string
		dev  *device
		info suit.DeltaInfo
		why  string // "" when the condition holds
	}{
		{"source", w.newDevice("dev-s", nil), fromV1, ""},
		{"other source", w.newDevice("dev-o", nil), fromV2, "this device runs"},
		{"failed before", w.newDevice("dev-x", nil), failed, "failed on this device before"},
		{"trial", trial, fromV2, "on trial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bd, err := bootctl.Open(tc.dev.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
			if err != nil {
				t.Fatal(err)
			}
			a, err := New(Config{DeviceID: tc.dev.id, Transport: testutil.NewMemHub().Conn(), Topics: w.topics, Boot: bd,
				StateDir: tc.dev.dir, Trust: w.trust, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			a.st.DeltaFailed = []string{schemas.DigestHex(failed.Digest)}
			env := w.envelope(nextOf(w.v1, 4), 4, withDeltas(tc.info), nil)
			m, err := suit.Verify(env, w.trust)
			if err != nil {
				t.Fatal(err)
			}
			ds, _ := m.Deltas()
			p := deltaParams(t, m, ds[0])
			err = (&target{a: a, m: m}).Command(context.Background(), 0, suit.Command{Label: suit.CondPrecursor, Known: true}, p)
			switch {
			case tc.why == "" && err != nil:
				t.Fatalf("condition failed: %v", err)
			case tc.why != "" && (!errors.Is(err, suit.ErrConditionFailed) || !strings.Contains(err.Error(), tc.why)):
				t.Fatalf("got %v, want a failed condition saying %q", err, tc.why)
			}
		})
	}
}

// deltaParams returns the parameters of m's install branch offering d.
func deltaParams(t *testing.T, m *suit.Manifest, d suit.DeltaInfo) *suit.Params {
	t.Helper()
	s, err := m.Sequence(suit.SeqInstall)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range s {
		for _, br := range c.Try {
			for _, bc := range br {
				if bc.Params != nil {
					if got, ok, _ := suit.DeltaOf(bc.Params); ok && bytes.Equal(got.Digest, d.Digest) {
						return bc.Params
					}
				}
			}
		}
	}
	t.Fatal("no branch offers the delta")
	return nil
}

// TestDeltaPowerCut cuts the power at every flash operation of a delta
// update, from erasing the candidate slot to committing the result (a
// plain cut and a torn program), then resets the device: it boots
// throughout, and the restarted agent ends with the new image confirmed,
// by resuming the delta from its last checkpoint, or, when a torn write
// left bytes that cannot be written over, by the full image.
func TestDeltaPowerCut(t *testing.T) {
	w := memWorld(t)
	v2 := nextOf(w.v1, 2)
	d, offer := makeDelta(t, w.v1, v2, delta.MinFrameSize)
	w.serve(v2, nil)
	w.serve(d, nil)
	env := w.envelope(v2, 2, withDeltas(offer), nil)
	want := sha256.Sum256(v2)

	// A run without a cut counts the flash operations up to staged.
	ref := w.newDevice("dev-ref", nil)
	ref.flash.ResetStats()
	var ops uint64
	ref.tune = func(c *Config) {
		c.OnState = func(r Record) {
			if r.State == schemas.StateStaged && ops == 0 {
				ops = ref.flash.Stats().Ops()
			}
		}
	}
	ref.start()
	w.notice("camp-ref", "dev-ref", false, v2, env)
	w.waitState("dev-ref", schemas.StateConfirmed, 20*time.Second)
	ref.stop()
	if ops == 0 {
		t.Fatal("no flash operations counted")
	}
	t.Logf("%d flash operations from the notice to staged", ops)

	for _, kind := range []bootctl.FaultKind{bootctl.FaultCut, bootctl.FaultTorn} {
		var viaDelta, viaFull, resumed int
		for k := uint64(0); k < ops; k++ {
			id := fmt.Sprintf("dev-%s-%d", kind, k)
			dev := w.newDevice(id, nil)
			dev.flash.ResetStats()
			dev.flash.Arm(bootctl.Fault{After: k, Kind: kind})
			dev.start()
			w.notice("camp-"+id, id, false, v2, env)
			if !waitPowerOff(dev.flash, 20*time.Second) {
				t.Fatalf("%s at %d: the power was not cut", kind, k)
			}
			dev.stop()
			dev.flash.PowerOn()
			// The reset: the bootloader boots an image.
			bd, err := bootctl.Open(dev.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
			if err != nil {
				t.Fatal(err)
			}
			if dec, err := bd.Boot(context.Background()); err != nil || !dec.Booted {
				t.Fatalf("%s at %d: the device does not boot: %+v, %v", kind, k, dec, err)
			}
			st, _ := LoadState(dev.dir)
			dev.start()
			r := w.waitReport(id, 20*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
			})
			if r.State != schemas.StateConfirmed || dev.active().Digest != want {
				t.Fatalf("%s at %d: ended %s (%s)\n%s", kind, k, r.State, r.Text, w.dump(id))
			}
			dev.stop()
			txt := w.dump(id)
			switch {
			case strings.Contains(txt, "not applied"):
				viaFull++
			default:
				viaDelta++
			}
			last := ""
			for _, r := range w.reportsOf(id) {
				if strings.HasPrefix(r.Text, "applying delta") {
					last = r.Text
				}
			}
			if len(st.Delta) > 0 && !strings.Contains(last, "from frame 0 ") {
				resumed++
			}
		}
		t.Logf("%s: %d cuts; ended by the delta %d times (%d resumed from a checkpoint), by the full image %d times",
			kind, ops, viaDelta, resumed, viaFull)
		if viaFull > 0 {
			t.Errorf("%s: %d cuts ended with the full image; the staged delta is applied again", kind, viaFull)
		}
		if resumed == 0 {
			t.Errorf("%s: no cut resumed the delta from a checkpoint", kind)
		}
	}
}

// waitPowerOff waits until f lost power, or d passed.
func waitPowerOff(f *bootctl.Flash, d time.Duration) bool {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !f.PoweredOff() {
		select {
		case <-tick.C:
		case <-deadline:
			return false
		}
	}
	return true
}
