package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
)

// bigPair returns a source of n pseudo-random bytes, a target made from
// it by twelve edits spread over the image (bytes changed, inserted,
// deleted), and the bsdiff-style plan of exactly those edits. Large pairs
// use this plan instead of bsdiff, whose suffix sort needs about 17 bytes
// per source byte on the publisher; the device side is the same.
func bigPair(n int) (src, tgt []byte, ctrls []control) {
	src = make([]byte, n)
	rand.NewChaCha8([32]byte{1}).Read(src)
	type edit struct {
		at, del int
		ins     []byte
	}
	var edits []edit
	for i := range 12 {
		at := (i + 1) * n / 13
		switch i % 3 {
		case 0:
			edits = append(edits, edit{at, 16, randBytes(uint64(i), 16)}) // 16 bytes changed
		case 1:
			edits = append(edits, edit{at, 0, randBytes(uint64(i), 4096)}) // 4 KiB inserted
		case 2:
			edits = append(edits, edit{at, 4096, nil}) // 4 KiB deleted
		}
	}
	pos := 0
	tgt = make([]byte, 0, n+4096*4)
	for _, e := range edits {
		tgt = append(tgt, src[pos:e.at]...)
		tgt = append(tgt, e.ins...)
		ctrls = append(ctrls, control{addLen: int64(e.at - pos), extraLen: int64(len(e.ins)), seek: int64(e.del)})
		pos = e.at + e.del
	}
	tgt = append(tgt, src[pos:]...)
	ctrls = append(ctrls, control{addLen: int64(n - pos)})
	return src, tgt, ctrls
}

// bigDelta encodes the delta of a bigPair.
func bigDelta(t testing.TB, n int) (src, tgt, d []byte) {
	t.Helper()
	src, tgt, ctrls := bigPair(n)
	var buf bytes.Buffer
	if _, err := encode(context.Background(), &buf, src, tgt, ctrls, DefaultFrameSize); err != nil {
		t.Fatal(err)
	}
	return src, tgt, buf.Bytes()
}

// sliceTarget is an io.WriterAt over a preallocated slice (the candidate
// slot of a device, without flash semantics).
type sliceTarget []byte

func (s sliceTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(s)) {
		return 0, io.ErrShortWrite
	}
	copy(s[off:], p)
	return len(p), nil
}

// allocated runs fn and returns the bytes the heap allocated meanwhile:
// an upper bound of fn's peak heap growth, whatever the GC did.
func allocated(fn func()) uint64 {
	runtime.GC()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// maxApplyGrowth is the memory bound checked by TestApplyMemoryBound: far
// above what Apply needs (about 0.7 MiB at the default frame size) and
// far below any image it is checked with, so only an allocation that
// grows with the image fails it. The figures are in docs/BENCHMARKS.md.
const maxApplyGrowth = 4 << 20

// TestApplyMemoryBound: applying a delta allocates less than 4 MiB in
// all, for an 8 MiB and a 64 MiB image: nothing in proportion to the
// image or the delta. (A memory bound, not a timing.) Under the race
// detector, which defeats sync.Pool, the bound is not checked and only
// the 8 MiB image is applied.
func TestApplyMemoryBound(t *testing.T) {
	sizes := []int{8 << 20, 64 << 20}
	if raceEnabled {
		t.Log("race detector: sync.Pool drops items, allocation totals are not Apply's; bound not checked, 64 MiB not run")
		sizes = sizes[:1]
	}
	for _, n := range sizes {
		src, tgt, d := bigDelta(t, n)
		p := mustOpen(t, d)
		dst := make(sliceTarget, len(tgt))
		var err error
		grew := allocated(func() {
			_, err = p.Apply(context.Background(), bytes.NewReader(src), dst)
		})
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(dst) != sha256.Sum256(tgt) {
			t.Fatal("wrong target")
		}
		t.Logf("%d MiB image, delta %d bytes: Apply allocated %d bytes", n>>20, len(d), grew)
		if !raceEnabled && grew > maxApplyGrowth {
			t.Fatalf("Apply of a %d MiB image allocated %d bytes, over %d", n>>20, grew, maxApplyGrowth)
		}
	}
}
