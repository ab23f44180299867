package delta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestWrongSourceRefused: a delta is refused for a source that is not its
// own, from the header alone before download, and by Apply before it
// writes anything.
func TestWrongSourceRefused(t *testing.T) {
	src := firmwareLike(31, 50_000)
	tgt := splice(src, 20_000, 10, []byte("v2"))
	d := mustMake(t, src, tgt, WithFrameSize(MinFrameSize))
	other := bytes.Clone(src)
	other[49_999] ^= 1
	cases := []struct {
		name   string
		source []byte
		// applies: Apply reads only the source's first SourceSize bytes
		// (a slot is larger than its image), so only the size check of
		// CheckSource tells a longer source.
		applies bool
	}{
		{"one byte changed", other, false},
		{"one byte shorter", src[:len(src)-1], false},
		{"one byte longer", append(bytes.Clone(src), 0), true},
		{"empty", nil, false},
		{"the target", tgt, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseHeader(d[:HeaderSize])
			if err != nil {
				t.Fatal(err)
			}
			if err := h.CheckSource(uint64(len(c.source)), sha256Sum(c.source)); !errors.Is(err, ErrWrongSource) {
				t.Fatalf("CheckSource: %v, want ErrWrongSource", err)
			}
			dst := newMemTarget(len(tgt))
			_, err = mustOpen(t, d).Apply(context.Background(), bytes.NewReader(c.source), dst)
			if c.applies {
				if err != nil || !bytes.Equal(dst.b, tgt) {
					t.Fatalf("Apply over a longer reader: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrWrongSource) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("Apply: %v, want ErrWrongSource (not ErrCorrupt)", err)
			}
			if dst.writes != 0 {
				t.Fatalf("%d writes before the source was refused", dst.writes)
			}
		})
	}
	h, _ := ParseHeader(d)
	if err := h.CheckSource(uint64(len(src)), sha256Sum(src)); err != nil {
		t.Fatalf("CheckSource of the right source: %v", err)
	}
}

// TestCorruptDeltaRefused: flipping any single bit of any byte of a delta
// makes Open or Apply fail with an ErrCorrupt error; no corrupted delta
// yields a result.
func TestCorruptDeltaRefused(t *testing.T) {
	src := firmwareLike(41, 20_000)
	tgt := splice(splice(src, 3000, 0, randBytes(42, 2000)), 15_000, 100, nil)
	d := mustMake(t, src, tgt, WithFrameSize(MinFrameSize))
	t.Logf("delta of %d bytes", len(d))
	for i := range d {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(d)
			c[i] ^= bit
			p, err := Open(bytes.NewReader(c), int64(len(c)))
			if err == nil {
				_, err = p.Apply(context.Background(), bytes.NewReader(src), newMemTarget(len(tgt)))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d ^ %#x: %v, want ErrCorrupt", i, bit, err)
			}
		}
	}
}

// resumeDelta is the fixture of the reset tests: 8 frames of 64 KiB
// (target writes are 32 KiB, so each frame is two writes).
func resumeDelta(t testing.TB) (src, tgt, d []byte) {
	src = firmwareLike(51, 500_000)
	tgt = splice(splice(src, 100_000, 0, randBytes(52, 5000)), 300_000, 2000, []byte("new code"))
	return src, tgt, mustMake(t, src, tgt)
}

// TestResumeAfterReset: a reset (the target write fails, as a power cut
// would stop it) at every frame boundary, in the middle of every write,
// and at the save of every checkpoint, followed by a resume from the last
// checkpoint saved, ends with exactly the target and its digest.
func TestResumeAfterReset(t *testing.T) {
	src, tgt, d := resumeDelta(t)
	p := mustOpen(t, d)
	frames := p.Header().Frames
	var cuts []int64
	for f := range frames {
		base := int64(f) * int64(p.Header().FrameSize)
		cuts = append(cuts, base, base+1, base+maxIO-1, base+maxIO, base+maxIO+12345)
	}
	type reset struct {
		name     string
		cutAfter int64 // cut the target after this many bytes (-1: none)
		failSave int   // fail this save (0: none)
	}
	var resets []reset
	for _, c := range cuts {
		if c < int64(len(tgt)) {
			resets = append(resets, reset{fmt.Sprintf("write cut after %d bytes", c), c, 0})
		}
	}
	for s := 1; s <= frames; s++ {
		resets = append(resets, reset{fmt.Sprintf("save %d fails", s), -1, s})
	}
	for _, r := range resets {
		t.Run(r.name, func(t *testing.T) {
			dst := newMemTarget(len(tgt))
			dst.armed, dst.cutAfter = r.cutAfter >= 0, r.cutAfter
			store := &cpStore{failAt: r.failSave}
			_, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, WithCheckpoints(store.save, 1))
			if !errors.Is(err, errCut) {
				t.Fatalf("first run: %v, want the cut", err)
			}
			before := store.saves
			// The reset: a new Patch over the staged delta, the last
			// checkpoint saved, the target as the cut left it.
			opts := append(store.resume(t), WithCheckpoints(store.save, 1))
			res, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, opts...)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			if !bytes.Equal(dst.b, tgt) || res.Digest != sha256Sum(tgt) {
				t.Fatal("resumed apply made the wrong target")
			}
			done := 0
			if r.failSave > 0 {
				done = r.failSave - 1
			} else {
				done = int(r.cutAfter / int64(p.Header().FrameSize))
			}
			if res.From != done || res.Applied != frames-done || store.saves-before != frames-done {
				t.Fatalf("resumed from frame %d, applied %d, saved %d; want from %d", res.From, res.Applied, store.saves-before, done)
			}
		})
	}
}

// TestResumeAfterLastFrame: a reset after the last checkpoint (before
// the caller committed) resumes to the result without writing.
func TestResumeAfterLastFrame(t *testing.T) {
	src, tgt, d := resumeDelta(t)
	dst := newMemTarget(len(tgt))
	store := &cpStore{}
	if _, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, WithCheckpoints(store.save, 3)); err != nil {
		t.Fatal(err)
	}
	if store.saves != 3 { // after frames 3, 6 and 8
		t.Fatalf("%d saves for 8 frames every 3, want 3", store.saves)
	}
	writes := dst.writes
	res, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, store.resume(t)...)
	if err != nil || res.Applied != 0 || dst.writes != writes || res.Digest != sha256Sum(tgt) {
		t.Fatalf("resume after the end: %+v, %v, %d writes", res, err, dst.writes-writes)
	}
}

// TestResumeRefusesForeignCheckpoint: a checkpoint of another delta, past
// the last frame, or with a broken hash state is refused with
// ErrCheckpoint before anything is written.
func TestResumeRefusesForeignCheckpoint(t *testing.T) {
	src, tgt, d := resumeDelta(t)
	store := &cpStore{}
	if _, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), newMemTarget(len(tgt)), WithCheckpoints(store.save, 1)); err != nil {
		t.Fatal(err)
	}
	var good Checkpoint
	if err := good.UnmarshalBinary(store.last); err != nil {
		t.Fatal(err)
	}
	otherDelta := mustMake(t, src, splice(tgt, 10, 0, []byte("x")))
	cases := []struct {
		name string
		mut  func(c *Checkpoint)
	}{
		{"another delta", func(c *Checkpoint) { c.Delta = mustOpen(t, otherDelta).ID() }},
		{"past the last frame", func(c *Checkpoint) { c.Frames++ }},
		{"negative frames", func(c *Checkpoint) { c.Frames = -1 }},
		{"no hash state", func(c *Checkpoint) { c.Hash = nil }},
		{"hash state of another hash", func(c *Checkpoint) { c.Hash = append([]byte("sha\x02"), c.Hash[4:]...) }},
		{"hash state cut", func(c *Checkpoint) { c.Hash = c.Hash[:len(c.Hash)-1] }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cp := good
			cp.Hash = bytes.Clone(good.Hash)
			c.mut(&cp)
			dst := newMemTarget(len(tgt))
			_, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, WithResume(cp))
			if !errors.Is(err, ErrCheckpoint) || dst.writes != 0 {
				t.Fatalf("Apply: %v after %d writes, want ErrCheckpoint before any", err, dst.writes)
			}
		})
	}
}

// TestCheckpointBinary: the binary form round-trips, and each damage is
// refused with ErrCheckpoint.
func TestCheckpointBinary(t *testing.T) {
	cp := Checkpoint{Delta: Digest(sha256Sum([]byte("delta"))), Frames: 7, Hash: []byte("state bytes")}
	b, err := cp.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Checkpoint
	if err := got.UnmarshalBinary(b); err != nil || got.Delta != cp.Delta || got.Frames != cp.Frames || !bytes.Equal(got.Hash, cp.Hash) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	bad := map[string][]byte{
		"empty":      nil,
		"magic":      append([]byte("XXXX"), b[4:]...),
		"cut":        b[:len(b)-1],
		"longer":     append(bytes.Clone(b), 0),
		"crc":        append(bytes.Clone(b[:len(b)-1]), b[len(b)-1]^1),
		"frames bit": func() []byte { c := bytes.Clone(b); c[4] ^= 1; return c }(),
		"state over": func() []byte { c := bytes.Clone(b); c[41] = 0xff; return c }(),
	}
	for name, in := range bad {
		if err := new(Checkpoint).UnmarshalBinary(in); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("%s: %v, want ErrCheckpoint", name, err)
		}
	}
	if _, err := (Checkpoint{Hash: make([]byte, maxHashState+1)}).MarshalBinary(); !errors.Is(err, ErrCheckpoint) {
		t.Errorf("oversized hash state: %v, want ErrCheckpoint", err)
	}
}

// TestOptions: bad options are refused with ErrInvalidOption.
func TestOptions(t *testing.T) {
	ctx := context.Background()
	for _, fs := range []int{0, MinFrameSize - 1, MinFrameSize + 1, 3 * MinFrameSize, 2 * MaxFrameSize, -MinFrameSize} {
		if _, err := Make(ctx, &bytes.Buffer{}, nil, []byte("x"), WithFrameSize(fs)); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("frame size %d: %v, want ErrInvalidOption", fs, err)
		}
	}
	if _, err := Make(ctx, &bytes.Buffer{}, []byte("x"), nil); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("empty target: %v, want ErrInvalidOption", err)
	}
	p := mustOpen(t, mustMake(t, nil, []byte("x")))
	for name, o := range map[string]ApplyOption{"nil save": WithCheckpoints(nil, 1), "every 0": WithCheckpoints((&cpStore{}).save, 0)} {
		if _, err := p.Apply(ctx, bytes.NewReader(nil), newMemTarget(1), o); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%s: %v, want ErrInvalidOption", name, err)
		}
	}
}

// TestApplyCancelled: Apply stops at a cancelled context, and a resume
// from its last checkpoint completes.
func TestApplyCancelled(t *testing.T) {
	src, tgt, d := resumeDelta(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := &cpStore{}
	save := func(ctx context.Context, cp Checkpoint) error {
		if cp.Frames == 3 {
			cancel()
		}
		return store.save(ctx, cp)
	}
	dst := newMemTarget(len(tgt))
	if _, err := mustOpen(t, d).Apply(ctx, bytes.NewReader(src), dst, WithCheckpoints(save, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply: %v, want context.Canceled", err)
	}
	res, err := mustOpen(t, d).Apply(context.Background(), bytes.NewReader(src), dst, store.resume(t)...)
	if err != nil || res.From != 3 || !bytes.Equal(dst.b, tgt) {
		t.Fatalf("resume: %+v, %v", res, err)
	}
}

// TestMakeFromBadPlan: a bsdiff plan that leaves either image still
// yields a delta that makes exactly the target.
func TestMakeFromBadPlan(t *testing.T) {
	src := randBytes(61, 10_000)
	tgt := append(bytes.Clone(src[5000:]), src[:5000]...)
	plans := map[string][]control{
		"add past the source":   {{addLen: 6000, seek: 0}},
		"seek before the start": {{addLen: 100, seek: -500}, {addLen: 4000}},
		"negative lengths":      {{addLen: -1, extraLen: 5}},
		"past the target":       {{addLen: 5000, extraLen: 1 << 40}},
		"nothing":               nil,
	}
	for name, ctrls := range plans {
		var buf bytes.Buffer
		if _, err := encode(context.Background(), &buf, src, tgt, ctrls, MinFrameSize); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		dst := newMemTarget(len(tgt))
		if _, err := mustOpen(t, buf.Bytes()).Apply(context.Background(), bytes.NewReader(src), dst); err != nil || !bytes.Equal(dst.b, tgt) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}
