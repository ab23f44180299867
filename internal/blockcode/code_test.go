package blockcode

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// image is a test image: its bytes, its uncoded and coded tables.
type image struct {
	data         []byte
	plain, coded *schemas.ChunkTable
}

func newImage(t testing.TB, size int, chunk uint32, k, p int, seed uint64) *image {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	plain, err := schemas.BuildChunkTable(bytes.NewReader(data), chunk)
	if err != nil {
		t.Fatal(err)
	}
	coded, err := Commit(context.Background(), plain, k, p, reader(data, chunk))
	if err != nil {
		t.Fatal(err)
	}
	return &image{data, plain, coded}
}

func reader(data []byte, chunk uint32) ChunkReader {
	return func(_ context.Context, i uint32) ([]byte, error) {
		off := int(i) * int(chunk)
		return data[off:min(off+int(chunk), len(data))], nil
	}
}

// slot is a device's slot: the chunks it holds, at their offsets.
type slot struct {
	buf   []byte
	have  map[uint32]bool
	reads int // ReadAt calls
	max   int // largest ReadAt
}

func newSlot(im *image, lost func(i uint32) bool) *slot {
	s := &slot{buf: make([]byte, len(im.data)), have: map[uint32]bool{}}
	cs := int(im.coded.ChunkSize)
	for i := range im.coded.NumChunks() {
		if !lost(i) {
			off := int(i) * cs
			copy(s.buf[off:], im.data[off:min(off+cs, len(im.data))])
			s.have[i] = true
		}
	}
	return s
}

func (s *slot) ReadAt(p []byte, off int64) (int, error) {
	s.reads++
	s.max = max(s.max, len(p))
	return copy(p, s.buf[off:]), nil
}

func (s *slot) write(t *schemas.ChunkTable) func(uint32, []byte) error {
	return func(i uint32, data []byte) error {
		copy(s.buf[int(i)*int(t.ChunkSize):], data)
		s.have[i] = true
		return nil
	}
}

func (s *slot) lacking(t *schemas.ChunkTable, b uint32) int {
	first, count := t.BlockChunks(b)
	n := 0
	for i := first; i < first+count; i++ {
		if !s.have[i] {
			n++
		}
	}
	return n
}

// parityMsgs returns every parity chunk message of im.
func parityMsgs(t testing.TB, im *image) []*schemas.ParityChunk {
	t.Helper()
	enc, err := NewEncoder(im.coded)
	if err != nil {
		t.Fatal(err)
	}
	var out []*schemas.ParityChunk
	for b := range im.coded.NumBlocks() {
		par, err := enc.Parity(context.Background(), b, reader(im.data, im.coded.ChunkSize))
		if err != nil {
			t.Fatal(err)
		}
		for j, d := range par {
			out = append(out, &schemas.ParityChunk{V: schemas.Version, Image: im.coded.Image, Block: b, Index: uint32(j), Data: d})
		}
	}
	return out
}

// TestCommit: the coded table keeps the uncoded one's keys 0 to 4, adds
// the block size, the parity count and one hash per parity chunk, and
// encodes; the parity Encoder makes matches those hashes.
func TestCommit(t *testing.T) {
	im := newImage(t, 10*1024+100, 1024, 4, 3, 1) // 11 chunks: blocks of 4, 4, 3
	c := im.coded
	if c.Block != 4 || c.ParityPerBlock != 3 || c.NumBlocks() != 3 || len(c.Parity) != 9 {
		t.Fatalf("coded table: block %d, parity %d, %d blocks, %d parity hashes", c.Block, c.ParityPerBlock, c.NumBlocks(), len(c.Parity))
	}
	if !bytes.Equal(c.Image, im.plain.Image) || c.ImageSize != im.plain.ImageSize || !slices.Equal(c.Hashes, im.plain.Hashes) {
		t.Fatal("the coded table changed the chunk table's keys 0 to 4")
	}
	if _, err := schemas.Encode(c); err != nil {
		t.Fatal(err)
	}
	for _, p := range parityMsgs(t, im) {
		if err := c.VerifyParity(p.Block, p.Index, p.Data); err != nil {
			t.Error(err)
		}
	}
	for _, tc := range []struct {
		k, p int
		want error
	}{{0, 1, ErrBadParams}, {1, 0, ErrBadParams}, {200, 57, ErrBadParams}, {1, 255, nil}} {
		_, err := Commit(context.Background(), im.plain, tc.k, tc.p, reader(im.data, 1024))
		if !errors.Is(err, tc.want) {
			t.Errorf("Commit K=%d P=%d: %v, want %v", tc.k, tc.p, err, tc.want)
		}
	}
	if _, err := Commit(context.Background(), c, 4, 3, reader(im.data, 1024)); !errors.Is(err, schemas.ErrInvalid) {
		t.Errorf("Commit of a coded table: %v", err)
	}
	bad := bytes.Clone(im.data)
	bad[5000] ^= 1
	if _, err := Commit(context.Background(), im.plain, 4, 3, reader(bad, 1024)); !errors.Is(err, schemas.ErrDigestMismatch) {
		t.Errorf("Commit over a chunk that is not the table's: %v", err)
	}
}

// TestDecodeAnyK: every block rebuilds from any mix of its source and
// parity chunks as many as its source chunks, reading the held chunks back
// from the slot in stripes (never a whole chunk at once), whatever is lost
// (including the image's short last chunk).
func TestDecodeAnyK(t *testing.T) {
	im := newImage(t, 37*1024+333, 1024, 8, 4, 2) // 38 chunks: 4 blocks of 8, one of 6
	c := im.coded
	par := parityMsgs(t, im)
	r := rand.New(rand.NewPCG(3, 4))
	for trial := range 40 {
		lostSet := map[uint32]bool{}
		for b := range c.NumBlocks() {
			first, count := c.BlockChunks(b)
			nl := r.IntN(int(c.ParityPerBlock) + 1)
			for _, x := range r.Perm(int(count))[:min(nl, int(count))] {
				lostSet[first+uint32(x)] = true
			}
		}
		if trial == 0 {
			lostSet[c.NumChunks()-1] = true // the short last chunk
		}
		var sc *scratch
		if trial%2 == 1 {
			sc = &scratch{} // the odd trials keep the parity in a scratch
		}
		s := decodeTrial(t, im, par, r, lostSet, 256, sc)
		if s.max > 256 {
			t.Fatalf("trial %d: Decode read %d bytes at once, stripe 256", trial, s.max)
		}
		if sc != nil && sc.max > 256 {
			t.Fatalf("trial %d: Decode read %d bytes of parity at once, stripe 256", trial, sc.max)
		}
	}
}

// scratch is an in-memory Scratch; failing makes its writes fail, and
// flip corrupts what it returns.
type scratch struct {
	buf           []byte
	writes, max   int
	failing, flip bool
}

func (s *scratch) WriteAt(p []byte, off int64) (int, error) {
	if s.failing {
		return 0, errors.New("scratch full")
	}
	if n := int(off) + len(p); n > len(s.buf) {
		s.buf = append(s.buf, make([]byte, n-len(s.buf))...)
	}
	s.writes++
	return copy(s.buf[off:], p), nil
}

func (s *scratch) ReadAt(p []byte, off int64) (int, error) {
	s.max = max(s.max, len(p))
	if off >= int64(len(s.buf)) {
		return 0, io.EOF
	}
	n := copy(p, s.buf[off:])
	if s.flip && n > 0 {
		p[0] ^= 1
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestDecodeScratch: a Collector with a scratch keeps no parity bytes in
// memory (each kept parity chunk is written to the scratch), and decodes
// from what it reads back; a scratch that fails its writes leaves the
// parity in memory (counted, the error kept) and the block still
// decodes; a scratch that returns other bytes than were written spoils
// the rebuild, which the table check refuses (nothing written).
func TestDecodeScratch(t *testing.T) {
	im := newImage(t, 16*512, 512, 8, 4, 5) // 2 blocks of 8
	c := im.coded
	par := parityMsgs(t, im)
	lost := map[uint32]bool{1: true, 4: true, 9: true}
	for _, tc := range []struct {
		name                  string
		sc                    *scratch
		inMemory, spilled, un int
		want                  error
	}{
		{"kept in the scratch", &scratch{}, 0, 3, 0, nil},
		{"scratch writes fail", &scratch{failing: true}, 3, 0, 3, nil},
		{"scratch returns other bytes", &scratch{flip: true}, 0, 3, 0, schemas.ErrDigestMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSlot(im, func(i uint32) bool { return lost[i] })
			col, err := NewCollector(c, 0)
			if err != nil {
				t.Fatal(err)
			}
			col.UseScratch(tc.sc)
			for _, p := range par {
				if _, err := col.Add(p, s.lacking(c, p.Block)); err != nil {
					t.Fatal(err)
				}
			}
			inMem := 0
			for _, h := range col.parity {
				for _, d := range h {
					if d != nil {
						inMem++
					}
				}
			}
			if inMem != tc.inMemory || tc.sc.writes != tc.spilled || col.Unspilled != tc.un || (tc.un > 0) != (col.ScratchErr != nil) {
				t.Fatalf("%d parity chunks in memory, %d written to the scratch, %d unspilled (%v); want %d, %d, %d", inMem, tc.sc.writes, col.Unspilled, col.ScratchErr, tc.inMemory, tc.spilled, tc.un)
			}
			wrote := 0
			write := s.write(c)
			for b := range c.NumBlocks() {
				err = errors.Join(err, col.Decode(context.Background(), b, func(i uint32) bool { return s.have[i] }, s, func(i uint32, d []byte) error { wrote++; return write(i, d) }))
			}
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("decode: %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil || !bytes.Equal(s.buf, im.data) || wrote != 3 {
				t.Fatalf("decode: %v, %d rebuilt chunks written; want the image", err, wrote)
			}
		})
	}
}

// decodeTrial loses lostSet of im's chunks, adds im's parity chunks par to
// a Collector (stripe bytes) in a random order (each kept while its block
// lacks symbols, as a device keeps whichever reach it), rebuilds every
// block and checks that the slot then holds the image.
func decodeTrial(t *testing.T, im *image, par []*schemas.ParityChunk, r *rand.Rand, lostSet map[uint32]bool, stripe int, sc *scratch) *slot {
	t.Helper()
	c := im.coded
	s := newSlot(im, func(i uint32) bool { return lostSet[i] })
	col, err := NewCollector(c, stripe)
	if err != nil {
		t.Fatal(err)
	}
	if sc != nil {
		col.UseScratch(sc)
	}
	for _, j := range r.Perm(len(par)) {
		p := par[j]
		if _, err := col.Add(p, s.lacking(c, p.Block)); err != nil {
			t.Fatal(err)
		}
	}
	for b := range c.NumBlocks() {
		if err := col.Decode(context.Background(), b, func(i uint32) bool { return s.have[i] }, s, s.write(c)); err != nil {
			t.Fatalf("block %d (lost %v): %v", b, lostSet, err)
		}
	}
	if !bytes.Equal(s.buf, im.data) {
		t.Fatalf("the slot does not hold the image (lost %v)", lostSet)
	}
	return s
}

// TestForgedParityDropped: a forged or corrupt parity chunk (bad bytes,
// another block's parity under this block's index, a chunk of another
// image, a wrong block or parity index, a wrong length) is refused on
// arrival and counted, never kept; the block still decodes from the good
// symbols that follow.
func TestForgedParityDropped(t *testing.T) {
	im := newImage(t, 16*512, 512, 8, 4, 5) // 16 chunks: 2 blocks of 8
	c := im.coded
	par := parityMsgs(t, im)
	at := func(b, j uint32) *schemas.ParityChunk { return par[b*c.ParityPerBlock+j] }
	lost := map[uint32]bool{1: true, 4: true, 6: true} // 3 chunks of block 0
	s := newSlot(im, func(i uint32) bool { return lost[i] })
	col, err := NewCollector(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(p *schemas.ParityChunk, f func(*schemas.ParityChunk)) *schemas.ParityChunk {
		q := *p
		q.Data = bytes.Clone(p.Data)
		q.Image = bytes.Clone(p.Image)
		f(&q)
		return &q
	}
	for _, tc := range []struct {
		name string
		p    *schemas.ParityChunk
		want error
	}{
		{"corrupt byte", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Data[100] ^= 0x40 }), schemas.ErrDigestMismatch},
		{"forged data", forge(at(0, 1), func(q *schemas.ParityChunk) { clear(q.Data) }), schemas.ErrDigestMismatch},
		{"another block's parity", forge(at(1, 2), func(q *schemas.ParityChunk) { q.Block = 0 }), schemas.ErrDigestMismatch},
		{"another index's parity", forge(at(0, 3), func(q *schemas.ParityChunk) { q.Index = 2 }), schemas.ErrDigestMismatch},
		{"block beyond the image", forge(at(1, 0), func(q *schemas.ParityChunk) { q.Block = 2 }), schemas.ErrInvalid},
		{"index beyond the parity", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Index = 4 }), schemas.ErrInvalid},
		{"short", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Data = q.Data[:511] }), schemas.ErrInvalid},
		{"another image", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Image[0] ^= 1 }), schemas.ErrInvalid},
	} {
		kept, err := col.Add(tc.p, s.lacking(c, tc.p.Block))
		if kept || !errors.Is(err, tc.want) {
			t.Errorf("%s: kept %v, %v; want dropped with %v", tc.name, kept, err, tc.want)
		}
	}
	if col.Dropped != 8 || col.Held(0) != 0 {
		t.Fatalf("%d dropped, %d held; want 8 dropped, none held", col.Dropped, col.Held(0))
	}
	// AddChecked (bytes the caller hashed against the table already)
	// still refuses what is not one of the table's parity chunks.
	for _, tc := range []struct {
		name string
		p    *schemas.ParityChunk
	}{
		{"block beyond the image", forge(at(1, 0), func(q *schemas.ParityChunk) { q.Block = 2 })},
		{"index beyond the parity", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Index = 4 })},
		{"short", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Data = q.Data[:511] })},
		{"another image", forge(at(0, 0), func(q *schemas.ParityChunk) { q.Image[0] ^= 1 })},
	} {
		kept, err := col.AddChecked(tc.p, s.lacking(c, tc.p.Block))
		if kept || !errors.Is(err, schemas.ErrInvalid) {
			t.Errorf("AddChecked, %s: kept %v, %v; want dropped with ErrInvalid", tc.name, kept, err)
		}
	}
	col.Dropped = 8
	have := func(i uint32) bool { return s.have[i] }
	if err := col.Decode(context.Background(), 0, have, s, s.write(c)); !errors.Is(err, ErrShort) {
		t.Fatalf("decode with no good parity: %v, want ErrShort", err)
	}
	// Good symbols: kept up to what the block lacks, then no more.
	for j := range uint32(4) {
		kept, err := col.Add(at(0, j), s.lacking(c, 0))
		if err != nil || kept != (j < 3) {
			t.Errorf("good parity %d: kept %v, %v", j, kept, err)
		}
	}
	if kept, err := col.Add(at(0, 0), s.lacking(c, 0)); kept || err != nil {
		t.Errorf("duplicate parity: kept %v, %v", kept, err)
	}
	if err := col.Decode(context.Background(), 0, have, s, s.write(c)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.buf, im.data) || col.Held(0) != 0 {
		t.Fatalf("block 0 not rebuilt (or its parity still held: %d)", col.Held(0))
	}
}

// TestDecodeRejectsBadSlot: a chunk the slot claims to hold but that is
// not the image's spoils the rebuild, and the rebuilt chunk's check
// against the table refuses it (nothing is written).
func TestDecodeRejectsBadSlot(t *testing.T) {
	im := newImage(t, 8*512, 512, 8, 2, 6)
	c := im.coded
	s := newSlot(im, func(i uint32) bool { return i == 3 })
	s.buf[0] ^= 1 // chunk 0, held, corrupt in flash
	col, _ := NewCollector(c, 0)
	for _, p := range parityMsgs(t, im) {
		col.Add(p, 1)
	}
	wrote := 0
	err := col.Decode(context.Background(), 0, func(i uint32) bool { return s.have[i] }, s, func(uint32, []byte) error { wrote++; return nil })
	if !errors.Is(err, schemas.ErrDigestMismatch) || wrote != 0 {
		t.Fatalf("decode over a corrupt held chunk: %v, %d written", err, wrote)
	}
}

// TestOrderInterleaves: the carousel order holds every chunk once and
// puts consecutive chunks of a block a block count apart.
func TestOrderInterleaves(t *testing.T) {
	im := newImage(t, 10*256+1, 256, 4, 1, 7) // 11 chunks: blocks [0,4) [4,8) [8,11)
	got := Order(im.coded)
	want := []uint32{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7}
	if !slices.Equal(got, want) {
		t.Errorf("Order = %v, want %v", got, want)
	}
	if got := Order(im.plain); len(got) != 11 || got[10] != 10 {
		t.Errorf("Order of an uncoded table = %v", got)
	}
}

// TestPosition: Position is the inverse of Order, for coded tables whose
// last block is full, short by one, or a single chunk, and for a table
// that is not coded.
func TestPosition(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		chunk uint32
		k     int
	}{
		{"last block full", 12 * 256, 256, 4},
		{"last block short", 11 * 256, 256, 4},
		{"last block one chunk", 9 * 256, 256, 4},
		{"one block", 3 * 256, 256, 4},
		{"last chunk short", 10*256 + 1, 256, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := newImage(t, tc.size, tc.chunk, tc.k, 1, 7)
			for _, tab := range []*schemas.ChunkTable{im.coded, im.plain} {
				for s, i := range Order(tab) {
					if p := Position(tab, i); p != s {
						t.Errorf("coded %v: Position(%d) = %d, want %d (Order %v)", tab.Coded(), i, p, s, Order(tab))
					}
				}
			}
		})
	}
}

func TestDecodeMemory(t *testing.T) {
	for _, c := range []struct {
		lost, stripe, chunk int
		scratch             bool
		want                int64
	}{
		{8, 1024, 16 << 10, false, 1<<10 + 256<<10},
		{8, DefaultStripe, 16 << 10, false, 16<<10 + 256<<10},
		{8, DefaultStripe, 4 << 10, false, 4<<10 + 64<<10}, // the stripe is at most a chunk
		{0, 1024, 16 << 10, false, 1 << 10},
		{8, DefaultStripe, 16 << 10, true, 16<<10 + 128<<10}, // parity in the scratch
		{0, DefaultStripe, 16 << 10, true, 16 << 10},
	} {
		if got := DecodeMemory(c.lost, c.stripe, c.chunk, c.scratch); got != c.want {
			t.Errorf("DecodeMemory(%d, %d, %d, %v) = %d, want %d", c.lost, c.stripe, c.chunk, c.scratch, got, c.want)
		}
	}
}

// TestAccumulatorMatchesEncoder: parity made from chunks streamed in
// carousel order (and some twice) is the parity Encoder reads a block to
// make, for a short last block and a short last chunk too.
func TestAccumulatorMatchesEncoder(t *testing.T) {
	for _, tc := range []struct{ size, chunk, k, p int }{
		{size: 10*256 + 17, chunk: 256, k: 4, p: 2},
		{size: 16 * 256, chunk: 256, k: 8, p: 3},
		{size: 256*1000 + 1, chunk: 256, k: 128, p: 32},
	} {
		im := newImage(t, tc.size, uint32(tc.chunk), tc.k, tc.p, uint64(tc.size))
		ct := im.coded
		enc, err := NewEncoder(ct)
		if err != nil {
			t.Fatal(err)
		}
		acc, err := NewAccumulator(ct)
		if err != nil {
			t.Fatal(err)
		}
		read := reader(im.data, uint32(tc.chunk))
		for s, i := range Order(ct) {
			d, _ := read(context.Background(), i)
			if err := acc.Add(i, d); err != nil {
				t.Fatal(err)
			}
			if s%5 == 0 { // again: ignored
				if err := acc.Add(i, d); err != nil {
					t.Fatal(err)
				}
			}
		}
		for b := range ct.NumBlocks() {
			want, err := enc.Parity(context.Background(), b, read)
			if err != nil {
				t.Fatal(err)
			}
			got := acc.Parity(b)
			if len(got) != len(want) {
				t.Fatalf("%+v block %d: %d parity chunks, want %d", tc, b, len(got), len(want))
			}
			for k := range want {
				if !bytes.Equal(got[k], want[k]) {
					t.Fatalf("%+v block %d parity %d differs", tc, b, k)
				}
			}
		}
		bad := make([]byte, tc.chunk)
		if err := acc.Add(0, bad); err == nil {
			// chunk 0 was added: ignored. A fresh accumulator refuses it.
			fresh, _ := NewAccumulator(ct)
			if err := fresh.Add(0, bad); !errors.Is(err, schemas.ErrDigestMismatch) {
				t.Fatalf("a forged chunk: %v, want ErrDigestMismatch", err)
			}
		}
		if fresh, _ := NewAccumulator(ct); fresh.Parity(0) != nil {
			t.Fatal("parity of a block not yet streamed")
		}
	}
}
