package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
)

// edit describes a target made from a source.
type pairCase struct {
	name           string
	source, target []byte
}

func splice(b []byte, at, del int, ins []byte) []byte {
	out := append([]byte(nil), b[:at]...)
	out = append(out, ins...)
	return append(out, b[at+del:]...)
}

func pairs() []pairCase {
	fw := firmwareLike(1, 120_000)
	changed := bytes.Clone(fw)
	for _, i := range []int{17, 4096, 65535, 65536, 100_001, 119_999} {
		changed[i] ^= 0x5A
	}
	rnd := randBytes(2, 100_000)
	return []pairCase{
		{"few changed bytes", fw, changed},
		{"insertion", fw, splice(fw, 100_000, 0, randBytes(3, 3000))},
		{"deletion", fw, splice(fw, 70_000, 5000, nil)},
		{"small edits", fw, splice(splice(fw, 110_000, 10, []byte("patched!")), 5, 3, []byte("hdr-v2"))},
		{"identical", fw, fw},
		{"unrelated random", rnd, randBytes(4, 80_000)},
		{"random to grown", rnd, append(bytes.Clone(rnd), randBytes(5, 30_000)...)},
		{"empty source", nil, randBytes(6, 10_000)},
		{"one byte target", fw, []byte{42}},
		{"target of one frame plus one", fw[:1000], fw[:DefaultFrameSize+1]},
	}
}

// TestRoundTrip: for random and realistic pairs and each frame size, the
// delta applies to exactly the target, and Make is deterministic (a
// second, independent bsdiff and encoding give the same bytes).
func TestRoundTrip(t *testing.T) {
	for _, pc := range pairs() {
		t.Run(pc.name, func(t *testing.T) {
			made := mustMake(t, pc.source, pc.target)
			ctrls, err := diffControls(pc.source, pc.target)
			if err != nil {
				t.Fatal(err)
			}
			for _, fs := range []int{MinFrameSize, DefaultFrameSize, MaxFrameSize} {
				var buf bytes.Buffer
				if _, err := encode(context.Background(), &buf, pc.source, pc.target, ctrls, fs); err != nil {
					t.Fatal(err)
				}
				d := buf.Bytes()
				if fs == DefaultFrameSize && !bytes.Equal(d, made) {
					t.Fatal("Make is not deterministic")
				}
				p := mustOpen(t, d)
				h := p.Header()
				if h.TargetDigest != sha256.Sum256(pc.target) || h.SourceDigest != sha256.Sum256(pc.source) || h.FrameSize != fs {
					t.Fatal("header does not name the images")
				}
				dst := newMemTarget(len(pc.target))
				res, err := p.Apply(context.Background(), bytes.NewReader(pc.source), dst)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst.b, pc.target) || res.Digest != h.TargetDigest || res.Applied != h.Frames {
					t.Fatalf("frame size %d: apply made the wrong target (result %+v)", fs, res)
				}
				t.Logf("frame %d KiB: %d -> %d bytes, delta %d bytes (%.2f%%)", fs>>10, len(pc.source), len(pc.target), len(d), 100*float64(len(d))/float64(len(pc.target)))
			}
		})
	}
}

// TestAddBytes: the word-at-a-time addition equals the byte loop, for
// every length and alignment around a word.
func TestAddBytes(t *testing.T) {
	for n := range 40 {
		for off := range 8 {
			w, d := randBytes(uint64(n), n+off)[off:], randBytes(uint64(n)+100, n+off)[off:]
			if n%5 == 0 {
				clear(d[:n/2]) // zero words take the fast path
			}
			want := bytes.Clone(w)
			for i := range want {
				want[i] += d[i]
			}
			addBytes(w, d)
			if !bytes.Equal(w, want) {
				t.Fatalf("n %d off %d: %x, want %x", n, off, w, want)
			}
		}
	}
}
