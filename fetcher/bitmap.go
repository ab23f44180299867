package fetcher

import "math/bits"

// bitmap is a set of chunk indexes in the wire layout of
// schemas.ChunkRequest.Bitmap: bit i is the least significant bit first of
// byte i/8.
type bitmap struct {
	n    int
	bits []byte
}

func newBitmap(n int) bitmap { return bitmap{n: n, bits: make([]byte, (n+7)/8)} }

func (b bitmap) has(i int) bool { return i >= 0 && i < b.n && b.bits[i>>3]&(1<<(i&7)) != 0 }
func (b bitmap) set(i int)      { b.bits[i>>3] |= 1 << (i & 7) }
func (b bitmap) clear(i int)    { b.bits[i>>3] &^= 1 << (i & 7) }

// count returns the number of set bits.
func (b bitmap) count() int {
	c := 0
	for _, x := range b.bits {
		c += bits.OnesCount8(x)
	}
	return c
}

// complement returns the set of indexes below n that are not in b.
func (b bitmap) complement() bitmap {
	c := newBitmap(b.n)
	for i := range c.bits {
		c.bits[i] = ^b.bits[i]
	}
	if r := b.n & 7; r != 0 {
		c.bits[len(c.bits)-1] &= byte(1<<r) - 1
	}
	return c
}

func (b bitmap) clone() bitmap {
	return bitmap{n: b.n, bits: append([]byte(nil), b.bits...)}
}

// next returns the first set index at or after i, or -1.
func (b bitmap) next(i int) int {
	for ; i < b.n; i++ {
		if i&7 == 0 && b.bits[i>>3] == 0 {
			i += 7
			continue
		}
		if b.has(i) {
			return i
		}
	}
	return -1
}

// Chunks is a read-only view of a set of chunk indexes handed to a Source.
type Chunks struct{ b bitmap }

// Has reports whether chunk i is in the set.
func (c Chunks) Has(i int) bool { return c.b.has(i) }

// Len returns the number of chunks in the set.
func (c Chunks) Len() int { return c.b.count() }

// Next returns the first chunk in the set at or after i, or -1.
func (c Chunks) Next(i int) int { return c.b.next(i) }

// Bitmap returns a copy of the set in the wire layout of
// schemas.ChunkRequest.Bitmap.
func (c Chunks) Bitmap() []byte { return append([]byte(nil), c.b.bits...) }

// Runs calls f for every maximal run [first, first+count) of the set, in
// order, with count at most maxRun (0 = unlimited), until f returns false.
func (c Chunks) Runs(maxRun int, f func(first, count int) bool) {
	for i := c.b.next(0); i >= 0; {
		j := i + 1
		for j < c.b.n && c.b.has(j) && (maxRun <= 0 || j-i < maxRun) {
			j++
		}
		if !f(i, j-i) {
			return
		}
		i = c.b.next(j)
	}
}

// AllChunks returns the set of every chunk of an n-chunk image (what a
// fetch with nothing held yet wants).
func AllChunks(n int) Chunks {
	b := newBitmap(n)
	for i := range n {
		b.set(i)
	}
	return Chunks{b}
}
