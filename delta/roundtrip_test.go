package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
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
	fw := firmwareLike(1, 300_000)
	changed := bytes.Clone(fw)
	for _, i := range []int{17, 4096, 65535, 65536, 150_001, 299_999} {
		changed[i] ^= 0x5A
	}
	rnd := randBytes(2, 200_000)
	return []pairCase{
		{"few changed bytes", fw, changed},
		{"insertion", fw, splice(fw, 100_000, 0, randBytes(3, 3000))},
		{"deletion", fw, splice(fw, 70_000, 5000, nil)},
		{"small edits", fw, splice(splice(fw, 200_000, 10, []byte("patched!")), 5, 3, []byte("hdr-v2"))},
		{"identical", fw, fw},
		{"unrelated random", rnd, randBytes(4, 150_000)},
		{"random to grown", rnd, append(bytes.Clone(rnd), randBytes(5, 70_000)...)},
		{"empty source", nil, randBytes(6, 10_000)},
		{"one byte target", fw, []byte{42}},
		{"target of one frame plus one", fw[:1000], fw[:DefaultFrameSize+1]},
	}
}

// TestRoundTrip: for random and realistic pairs and each frame size, the
// delta applies to exactly the target, and Make is deterministic.
func TestRoundTrip(t *testing.T) {
	for _, fs := range []int{MinFrameSize, DefaultFrameSize, MaxFrameSize} {
		for _, pc := range pairs() {
			t.Run(fmt.Sprintf("%s/%dKiB", pc.name, fs>>10), func(t *testing.T) {
				d := mustMake(t, pc.source, pc.target, WithFrameSize(fs))
				if again := mustMake(t, pc.source, pc.target, WithFrameSize(fs)); !bytes.Equal(d, again) {
					t.Fatal("Make is not deterministic")
				}
				p := mustOpen(t, d)
				h := p.Header()
				if h.TargetDigest != sha256.Sum256(pc.target) || h.SourceDigest != sha256.Sum256(pc.source) {
					t.Fatal("header digests do not name the images")
				}
				dst := newMemTarget(len(pc.target))
				res, err := p.Apply(context.Background(), bytes.NewReader(pc.source), dst)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst.b, pc.target) || res.Digest != h.TargetDigest || res.Applied != h.Frames {
					t.Fatalf("apply made the wrong target (result %+v)", res)
				}
				t.Logf("frame %d KiB: %d -> %d bytes, delta %d bytes (%.2f%%)", fs>>10, len(pc.source), len(pc.target), len(d), 100*float64(len(d))/float64(len(pc.target)))
			})
		}
	}
}
