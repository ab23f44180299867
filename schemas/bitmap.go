package schemas

import (
	"math/bits"
	"strconv"
)

// Bitmap is a set of chunk indexes in the wire layout of
// ChunkRequest.Bitmap: chunk i is bit i%8 of byte i/8, counted from the
// least significant bit. A Bitmap is a plain byte slice; it is not safe for
// concurrent mutation.
type Bitmap []byte

// NewBitmap returns an empty bitmap able to hold chunks [0, n).
func NewBitmap(n uint32) Bitmap { return make(Bitmap, (uint64(n)+7)/8) }

// Len returns the number of chunk indexes b can hold (8 per byte).
func (b Bitmap) Len() uint32 { return uint32(len(b)) * 8 }

// Set marks chunk i. It panics if i >= b.Len(), like an index expression.
func (b Bitmap) Set(i uint32) { b[i/8] |= 1 << (i % 8) }

// Clear unmarks chunk i. It panics if i >= b.Len().
func (b Bitmap) Clear(i uint32) { b[i/8] &^= 1 << (i % 8) }

// Has reports whether chunk i is marked; false when i >= b.Len().
func (b Bitmap) Has(i uint32) bool {
	return uint64(i/8) < uint64(len(b)) && b[i/8]&(1<<(i%8)) != 0
}

// Count returns the number of marked chunks.
func (b Bitmap) Count() int {
	n := 0
	for _, c := range b {
		n += bits.OnesCount8(c)
	}
	return n
}

// String formats r as a half-open interval, "[first,end)".
func (r Range) String() string {
	return "[" + strconv.FormatUint(uint64(r.First), 10) + "," + strconv.FormatUint(uint64(r.First)+uint64(r.Count), 10) + ")"
}

// Missing returns, in increasing order, the runs of chunks in [0, n) that
// are not marked: what a device still lacks, in the form of
// ChunkRequest.Ranges. Chunks at or beyond b.Len() count as missing.
func (b Bitmap) Missing(n uint32) []Range { return b.runs(n, false) }

// Ranges returns, in increasing order, the runs of marked chunks in [0, n).
func (b Bitmap) Ranges(n uint32) []Range { return b.runs(n, true) }

func (b Bitmap) runs(n uint32, marked bool) []Range {
	var out []Range
	var i uint32
	for i < n {
		// Skip a whole byte at a time when it cannot start a run.
		if i%8 == 0 && i+8 <= n {
			var skip byte
			if marked {
				skip = 0x00
			} else {
				skip = 0xff
			}
			if uint64(i/8) < uint64(len(b)) && b[i/8] == skip {
				i += 8
				continue
			}
		}
		if b.Has(i) != marked {
			i++
			continue
		}
		start := i
		for i < n && b.Has(i) == marked {
			i++
		}
		out = append(out, Range{First: start, Count: i - start})
	}
	return out
}

// Wanted returns the chunks r asks for among the first n chunks of the
// image, as a bitmap of n bits: the union of r.Ranges, or r.Bitmap. Indexes
// at or beyond n are ignored.
func (r *ChunkRequest) Wanted(n uint32) Bitmap {
	w := NewBitmap(n)
	for _, rg := range r.Ranges {
		end := min(uint64(rg.First)+uint64(rg.Count), uint64(n))
		for i := uint64(rg.First); i < end; i++ {
			w.Set(uint32(i))
		}
	}
	src := Bitmap(r.Bitmap)
	for i := range min(len(src), len(w)) {
		w[i] = src[i]
	}
	if rem := n % 8; rem != 0 && len(w) > 0 {
		w[len(w)-1] &= byte(1)<<rem - 1
	}
	return w
}
