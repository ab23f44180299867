package bootctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestCandidateOutOfOrder streams an image in odd-sized chunks, shuffled,
// some twice, from several goroutines, for each write alignment.
func TestCandidateOutOfOrder(t *testing.T) {
	for _, align := range []int{1, 4, 16} {
		r := newRig(align, 2)
		f := r.factory(t, 1, 1)
		d := r.open(t, f)
		img := testImage(2)
		c, err := d.OpenCandidate(context.Background(), 0, uint64(len(img)))
		if err != nil {
			t.Fatal(err)
		}
		type chunk struct{ off, n int }
		var chunks []chunk
		for off := 0; off < len(img); off += 37 {
			chunks = append(chunks, chunk{off, min(37, len(img)-off)})
		}
		chunks = append(chunks, chunks[:10]...) // repeats
		rng := rand.New(rand.NewPCG(uint64(align), 1))
		rng.Shuffle(len(chunks), func(i, j int) { chunks[i], chunks[j] = chunks[j], chunks[i] })
		// Commit before the last chunks are in: incomplete or wrong digest.
		errs := make(chan error, len(chunks))
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(chunks); i += 4 {
					ch := chunks[i]
					if _, err := c.WriteAt(img[ch.off:ch.off+ch.n], int64(ch.off)); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("align %d: %v", align, err)
		}
		if _, err := c.WriteAt([]byte{img[40] ^ 1}, 40); !errors.Is(err, ErrConflict) {
			t.Fatalf("align %d: conflicting byte: %v", align, err)
		}
		if _, err := c.WriteAt([]byte{1}, int64(len(img))); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("align %d: past the end: %v", align, err)
		}
		if err := c.Commit(context.Background(), infoFor(2, 1)); err != nil {
			t.Fatalf("align %d: commit: %v", align, err)
		}
		if _, err := c.WriteAt(img[:1], 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("write after commit: %v", err)
		}
		if dec := mustBoot(t, d); dec.Version != 2 {
			t.Fatalf("align %d: %+v", align, dec)
		}
	}
}

func TestCandidateCommitRefused(t *testing.T) {
	r := newRig(16, 2)
	f := r.factory(t, 1, 1)
	d := r.open(t, f)
	img := testImage(2)
	c, _ := d.OpenCandidate(context.Background(), 1, uint64(len(img)))
	c.WriteAt(img[:100], 0) // ends inside a 16-byte unit
	if err := c.Commit(context.Background(), infoFor(2, 1)); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("incomplete: %v", err)
	}
	c.WriteAt(img[100:], 100)
	bad := infoFor(2, 1)
	bad.Digest[0] ^= 1
	if err := c.Commit(context.Background(), bad); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wrong digest: %v", err)
	}
	if _, err := d.OpenCandidate(context.Background(), 2, 10); !errors.Is(err, ErrBadSlot) {
		t.Fatalf("slot 2: %v", err)
	}
	if _, err := d.OpenCandidate(context.Background(), 0, uint64(r.l.ImageCapacity(r.g))+1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	// A power cut while staging leaves the slot invalid, the device on v1.
	f.Arm(Fault{After: 3})
	if err := d.Stage(context.Background(), 0, img, infoFor(2, 1)); !errors.Is(err, ErrPowerLost) {
		t.Fatalf("cut: %v", err)
	}
	f.PowerOn()
	if dec := mustBoot(t, r.open(t, f)); dec.Version != 1 || dec.Action != ActionNone {
		t.Fatalf("after a cut while staging: %+v", dec)
	}
}

// fakeVerifier accepts envelopes of the form "signed:<version>" made by
// envelopeFor, returning what they sign.
type fakeVerifier struct {
	signed map[string]struct {
		seq    uint64
		digest [32]byte
		size   uint64
	}
	calls int
}

var errBadSignature = errors.New("fake: bad signature")

func (v *fakeVerifier) VerifyEnvelope(env []byte) (uint64, [32]byte, uint64, error) {
	v.calls++
	s, ok := v.signed[string(env)]
	if !ok {
		return 0, [32]byte{}, 0, errBadSignature
	}
	return s.seq, s.digest, s.size, nil
}

func (v *fakeVerifier) sign(name string, version uint64, img []byte) []byte {
	if v.signed == nil {
		v.signed = map[string]struct {
			seq    uint64
			digest [32]byte
			size   uint64
		}{}
	}
	v.signed[name] = struct {
		seq    uint64
		digest [32]byte
		size   uint64
	}{version, sha256.Sum256(img), uint64(len(img))}
	return []byte(name)
}

func TestSecureBoot(t *testing.T) {
	v := &fakeVerifier{}
	r := newRig(4, 2)
	r.rot.Verifier = v
	f, _ := NewMemFlash(r.g)
	d := r.open(t, f)
	ctx := context.Background()

	info := infoFor(1, 1)
	if err := d.Stage(ctx, 0, testImage(1), info); !errors.Is(err, ErrEnvelope) {
		t.Fatalf("no envelope: %v", err)
	}
	info.Envelope = v.sign("forged", 1, testImage(9))
	if err := d.Stage(ctx, 0, testImage(1), info); !errors.Is(err, ErrEnvelope) {
		t.Fatalf("envelope for other bytes: %v", err)
	}
	info.Envelope = v.sign("v1", 1, testImage(1))
	if err := d.Stage(ctx, 0, testImage(1), info); err != nil {
		t.Fatal(err)
	}
	if dec := mustBoot(t, d); dec.Version != 1 {
		t.Fatalf("%+v", dec)
	}
	// Verified again on every boot.
	before := v.calls
	mustBoot(t, d)
	if v.calls == before {
		t.Fatal("boot did not verify the envelope")
	}
	// The signature stops verifying (say, the key was revoked): no boot.
	delete(v.signed, "v1")
	if _, err := d.Boot(ctx); !errors.Is(err, ErrNoBootableImage) {
		t.Fatalf("revoked envelope: %v", err)
	}
	// A header written with the MAC alone (no envelope) never boots.
	plain := r
	plain.rot.Verifier = nil
	stage(t, plain.open(t, f), 3, 1)
	if _, err := d.Boot(ctx); !errors.Is(err, ErrNoBootableImage) {
		t.Fatalf("image without envelope: %v", err)
	}
}

func TestCombine(t *testing.T) {
	r := newRig(4, 2)
	in := CombineInput{Bootloader: []byte("bootloader"), App: testImage(1), Info: infoFor(1, 1), DeviceKey: testKey}
	img, err := Combine(r.g, r.l, in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(img, in.Bootloader) || !isErased(img[len(in.Bootloader):r.g.SectorSize]) {
		t.Fatal("bootloader not at the start")
	}
	f := r.factory(t, 1, 1)
	if err := r.checkActive(f, 1); err != nil {
		t.Fatal(err)
	}
	gap := r.l
	gap.Active.Start++ // a sector between the bootloader and the application
	gap.Slots = []Region{{22, 10}, {32, 10}}
	gap.Status.Start = 42
	g := r.g
	g.Sectors = gap.Sectors()
	if _, err := Combine(g, gap, in); !errors.Is(err, ErrNotCombinable) {
		t.Fatalf("gap: %v", err)
	}
	big := in
	big.Bootloader = make([]byte, r.g.SectorSize+1)
	if _, err := Combine(r.g, r.l, big); !errors.Is(err, ErrNotCombinable) {
		t.Fatalf("big bootloader: %v", err)
	}
	big = in
	big.App = make([]byte, r.l.ImageCapacity(r.g)+1)
	if _, err := Combine(r.g, r.l, big); !errors.Is(err, ErrNotCombinable) {
		t.Fatalf("big app: %v", err)
	}
}

func TestLayoutValidate(t *testing.T) {
	g := Geometry{SectorSize: 512, Sectors: 64, WriteAlign: 4}
	for name, mod := range map[string]func(l *Layout){
		"one slot":      func(l *Layout) { l.Slots = l.Slots[:1] },
		"one status":    func(l *Layout) { l.Status.Sectors = 1 },
		"overlap":       func(l *Layout) { l.Slots[1].Start = l.Slots[0].Start + 1 },
		"off the flash": func(l *Layout) { l.Status.Start = 63 },
		"slot size":     func(l *Layout) { l.Slots[0].Sectors = 9 },
		"no header":     func(l *Layout) { l.HeaderSectors = 0 },
	} {
		l := DefaultLayout(1, 2, 10)
		l.Slots = append([]Region(nil), l.Slots...)
		mod(&l)
		if err := l.Validate(g); !errors.Is(err, ErrBadLayout) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := DefaultLayout(1, 2, 10).Validate(g); err != nil {
		t.Fatal(err)
	}
}

// TestResumeCandidate: an agent restarted mid-download reopens the slot
// and writes the rest (and some chunks again).
func TestResumeCandidate(t *testing.T) {
	r := newRig(16, 2)
	f := r.factory(t, 1, 1)
	d := r.open(t, f)
	ctx := context.Background()
	img := testImage(2)
	c, err := d.OpenCandidate(ctx, 0, uint64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	c.WriteAt(img[:2048], 0)
	// Restart: a new Device, the first half again plus the rest.
	d = r.open(t, f)
	c, err = d.ResumeCandidate(ctx, 0, uint64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(img[1024:], 1024); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(ctx, infoFor(2, 1)); err != nil {
		t.Fatal(err)
	}
	if d.ImageCapacity() != 9*512 {
		t.Fatalf("capacity %d", d.ImageCapacity())
	}
}

// TestCommitVerified: a candidate the caller verified as it wrote it is
// sealed without a second pass over the slot, and the bootloader still
// refuses one whose bytes do not hash to the header's digest (written
// wrong, or damaged after they were checked): the device keeps v1.
func TestCommitVerified(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  bool
		version uint64 // booted after the commit
	}{
		{"intact", false, 2},
		{"damaged after the check", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(16, 2)
			f := r.factory(t, 1, 1)
			d := r.open(t, f)
			img := testImage(2)
			if tc.damage {
				img = bytes.Clone(img)
				img[len(img)/2] ^= 0x40
			}
			c, err := d.OpenCandidate(context.Background(), 0, uint64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.WriteAt(img, 0); err != nil {
				t.Fatal(err)
			}
			info := infoFor(2, 1)
			info.Verified = true
			before := f.Stats().BytesRead
			if err := c.Commit(context.Background(), info); err != nil {
				t.Fatalf("commit: %v", err)
			}
			if read := f.Stats().BytesRead - before; read >= uint64(len(img)) {
				t.Fatalf("a verified commit read %d bytes: the slot was hashed again", read)
			}
			if dec := mustBoot(t, d); dec.Version != tc.version {
				t.Fatalf("booted %+v, want version %d", dec, tc.version)
			}
		})
	}
	// Without Verified the damaged slot is refused at Commit already.
	r := newRig(16, 2)
	d := r.open(t, r.factory(t, 1, 1))
	img := bytes.Clone(testImage(2))
	img[7] ^= 1
	if err := d.Stage(context.Background(), 0, img, infoFor(2, 1)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("unverified damaged commit: %v", err)
	}
}
