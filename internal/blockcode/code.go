package blockcode

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/firmcast/firmcast/schemas"
	"github.com/klauspost/reedsolomon"
)

// The block size and parity count firmcast uses: chosen with
// BenchmarkWaveEgress (docs/BENCHMARKS.md, "Coded repair"): at 5% loss,
// K = 128 keeps total egress near 1.13x at N = 100 and 1.15x at N =
// 1,000; parity per block over all repair rounds stays under 32.
const (
	DefaultBlock  = 128
	DefaultParity = 32
)

// ChunkReader returns source chunk i of an image, ChunkLen(i) bytes. The
// caller may keep the slice only until its next call.
type ChunkReader func(ctx context.Context, i uint32) ([]byte, error)

// CheckParams reports whether the code can make p parity chunks for
// blocks of k source chunks: 1 <= k, 1 <= p, k+p <= schemas.MaxCodeShards.
// It fails with ErrBadParams.
func CheckParams(k, p int) error {
	if k < 1 || p < 1 || k+p > schemas.MaxCodeShards {
		return fmt.Errorf("%w: blocks of %d source chunks and %d parity chunks (want 1 <= K, 1 <= P, K+P <= %d)", ErrBadParams, k, p, schemas.MaxCodeShards)
	}
	return nil
}

// Commit returns a coded copy of the uncoded table t: blocks of k source
// chunks, p parity chunks per block, and the SHA-256 of every parity
// chunk, computed from the image's chunks as read returns them (each
// checked against t first). It holds one block (k chunks) and its parity
// at a time. It fails with ErrBadParams for k and p the code cannot make
// or an image whose parity hashes would exceed schemas.MaxParityChunks,
// with schemas.ErrInvalid for a table already coded, with
// schemas.ErrDigestMismatch when read returns a chunk that is not t's, and
// with read's error.
func Commit(ctx context.Context, t *schemas.ChunkTable, k, p int, read ChunkReader) (*schemas.ChunkTable, error) {
	if err := CheckParams(k, p); err != nil {
		return nil, err
	}
	if t.Coded() {
		return nil, fmt.Errorf("%w: chunk table: already coded", schemas.ErrInvalid)
	}
	c := *t
	c.Block, c.ParityPerBlock = uint32(k), uint32(p)
	if nb := uint64(c.NumBlocks()) * uint64(p); nb > schemas.MaxParityChunks {
		return nil, fmt.Errorf("%w: %d parity chunks, max %d", ErrBadParams, nb, schemas.MaxParityChunks)
	}
	enc, err := NewEncoder(&c)
	if err != nil {
		return nil, err
	}
	c.Parity = make([]schemas.Digest, 0, int(c.NumBlocks())*p)
	for b := range c.NumBlocks() {
		par, err := enc.Parity(ctx, b, read)
		if err != nil {
			return nil, err
		}
		for _, d := range par {
			sum := sha256.Sum256(d)
			c.Parity = append(c.Parity, sum)
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Encoder makes the parity chunks of a coded table's blocks. It is safe
// for concurrent use.
type Encoder struct {
	t *schemas.ChunkTable
	// mu guards codes and serialises their use.
	mu    sync.Mutex
	codes map[uint32]reedsolomon.Encoder // by a block's source chunks
}

// NewEncoder returns an Encoder for the coded table t, which it keeps (t
// must not change). It fails with ErrNotCoded for a table that is not
// coded and ErrBadParams for parameters the code cannot make.
func NewEncoder(t *schemas.ChunkTable) (*Encoder, error) {
	if !t.Coded() {
		return nil, ErrNotCoded
	}
	if err := CheckParams(int(t.Block), int(t.ParityPerBlock)); err != nil {
		return nil, err
	}
	return &Encoder{t: t, codes: map[uint32]reedsolomon.Encoder{}}, nil
}

// oneGoroutine has a code work on its caller's goroutine. By default
// reedsolomon splits each call across goroutines and waits for them all:
// the publisher's wave adds each 16 KiB chunk to its block's parity
// (Accumulator.Add) between two sends, and on a loaded host (the bench:
// 500 simulated devices in the publisher's process) those waits for the
// scheduler took 1.3 to 3.4 s of a 9 to 12 s wave (docs/BENCHMARKS.md).
// One chunk's parity is 32 x 16 KiB of table lookups, about 0.1 ms; a
// block's, on a repair round, a few ms.
var oneGoroutine = reedsolomon.WithMaxGoroutines(1)

// code returns the Reed-Solomon code of a block of k source chunks; e.mu
// must be held.
func (e *Encoder) code(k uint32) (reedsolomon.Encoder, error) {
	if c, ok := e.codes[k]; ok {
		return c, nil
	}
	c, err := reedsolomon.New(int(k), int(e.t.ParityPerBlock), oneGoroutine)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadParams, err)
	}
	e.codes[k] = c
	return c, nil
}

// Parity returns the ParityPerBlock parity chunks of block b, each
// ChunkSize bytes, in index order, computed from the block's source chunks
// as read returns them (each checked against the table first: a chunk
// that is not the table's fails with schemas.ErrDigestMismatch). It holds
// the block. It fails with schemas.ErrInvalid for a block beyond the
// image.
func (e *Encoder) Parity(ctx context.Context, b uint32, read ChunkReader) ([][]byte, error) {
	t := e.t
	first, count := t.BlockChunks(b)
	if count == 0 {
		return nil, fmt.Errorf("%w: parity chunk: block %d beyond the image's %d blocks", schemas.ErrInvalid, b, t.NumBlocks())
	}
	shards := make([][]byte, int(count)+int(t.ParityPerBlock))
	for i := range shards {
		shards[i] = make([]byte, t.ChunkSize)
	}
	for i := range count {
		data, err := read(ctx, first+i)
		if err != nil {
			return nil, fmt.Errorf("blockcode: block %d: reading chunk %d: %w", b, first+i, err)
		}
		if err := t.VerifyChunk(first+i, data); err != nil {
			return nil, fmt.Errorf("blockcode: block %d: %w", b, err)
		}
		copy(shards[i], data) // the image's last chunk stays zero-padded
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.code(count)
	if err != nil {
		return nil, err
	}
	if err := c.Encode(shards); err != nil {
		return nil, fmt.Errorf("blockcode: block %d: %w", b, err)
	}
	return shards[count:], nil
}

// Order returns the chunk indices of the image t describes in carousel
// order: for a coded table, chunk j of every block in block order, for j
// from 0 to Block-1 (a block with fewer chunks is skipped once it has none
// left), so that consecutive messages belong to different blocks and a
// burst of losses spreads over them; for a table that is not coded, 0 to
// n-1.
func Order(t *schemas.ChunkTable) []uint32 {
	n := t.NumChunks()
	out := make([]uint32, 0, n)
	if !t.Coded() {
		for i := range n {
			out = append(out, i)
		}
		return out
	}
	nb := t.NumBlocks()
	for j := range t.Block {
		for b := range nb {
			if i := b*t.Block + j; i < n {
				out = append(out, i)
			}
		}
	}
	return out
}

// Position returns chunk i's position in Order(t), without making the
// order: for chunk j of block b, the chunks of every block at offsets
// before j (the last block, if short, has none from its length on), then
// b. A device that knows the position of the last broadcast chunk it
// took knows which of its missing chunks the broker already passed.
func Position(t *schemas.ChunkTable, i uint32) int {
	if !t.Coded() {
		return int(i)
	}
	n, k, nb := int(t.NumChunks()), int(t.Block), int(t.NumBlocks())
	b, j := int(i)/k, int(i)%k
	last := n - (nb-1)*k // chunks in the last block
	return j*nb - max(0, j-last) + b
}

// Accumulator makes the parity chunks of a coded table's blocks from its
// source chunks as they stream past (a broadcast wave reading them in
// carousel order), one chunk at a time and in any order, so that the
// parity is ready when the last chunk of a block went by without the
// block being read again. It holds ParityPerBlock chunks per block it
// has started (a quarter of the image at K = 128, P = 32). Not safe for
// concurrent use.
type Accumulator struct {
	t     *schemas.ChunkTable
	codes map[uint32]reedsolomon.Encoder
	par   [][][]byte // by block: the parity so far; nil until started
	seen  []bitset   // by block: the source chunks added
	left  []uint32   // by block: the source chunks still to add
	pad   []byte     // a short last chunk, zero-padded
}

// bitset is a small set of chunk offsets within a block.
type bitset []uint64

func (b bitset) has(i uint32) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) set(i uint32)      { b[i/64] |= 1 << (i % 64) }

// NewAccumulator returns an Accumulator for the coded table t. It fails
// as NewEncoder.
func NewAccumulator(t *schemas.ChunkTable) (*Accumulator, error) {
	if !t.Coded() {
		return nil, ErrNotCoded
	}
	if err := CheckParams(int(t.Block), int(t.ParityPerBlock)); err != nil {
		return nil, err
	}
	nb := t.NumBlocks()
	a := &Accumulator{t: t, codes: map[uint32]reedsolomon.Encoder{}, par: make([][][]byte, nb), seen: make([]bitset, nb), left: make([]uint32, nb)}
	for b := range nb {
		_, a.left[b] = t.BlockChunks(b)
	}
	return a, nil
}

// Add adds source chunk i, which must be the table's (it is checked): a
// chunk added again is ignored. It fails with schemas.ErrInvalid for an
// index beyond the image and schemas.ErrDigestMismatch for a chunk that
// is not the table's.
func (a *Accumulator) Add(i uint32, data []byte) error {
	t := a.t
	if i >= t.NumChunks() {
		return fmt.Errorf("%w: chunk %d of %d", schemas.ErrInvalid, i, t.NumChunks())
	}
	b := t.BlockOf(i)
	first, count := t.BlockChunks(b)
	if a.seen[b] != nil && a.seen[b].has(i-first) {
		return nil
	}
	if err := t.VerifyChunk(i, data); err != nil {
		return fmt.Errorf("blockcode: block %d: %w", b, err)
	}
	c, ok := a.codes[count]
	if !ok {
		var err error
		if c, err = reedsolomon.New(int(count), int(t.ParityPerBlock), oneGoroutine); err != nil {
			return fmt.Errorf("%w: %v", ErrBadParams, err)
		}
		a.codes[count] = c
	}
	if a.par[b] == nil {
		a.par[b] = make([][]byte, t.ParityPerBlock)
		for k := range a.par[b] {
			a.par[b][k] = make([]byte, t.ChunkSize)
		}
		a.seen[b] = make(bitset, (count+63)/64)
	}
	if len(data) < int(t.ChunkSize) { // the image's last chunk, zero-padded
		a.pad = append(a.pad[:0], data...)
		a.pad = append(a.pad, make([]byte, int(t.ChunkSize)-len(data))...)
		data = a.pad
	}
	if err := c.EncodeIdx(data, int(i-first), a.par[b]); err != nil {
		return fmt.Errorf("blockcode: block %d: %w", b, err)
	}
	a.seen[b].set(i - first)
	a.left[b]--
	return nil
}

// Parity returns the parity chunks of block b once every one of its
// source chunks was added, in index order; nil before.
func (a *Accumulator) Parity(b uint32) [][]byte {
	if int(b) >= len(a.left) || a.left[b] != 0 {
		return nil
	}
	return a.par[b]
}
