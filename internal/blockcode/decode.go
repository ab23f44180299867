package blockcode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/firmcast/firmcast/schemas"
)

// DefaultStripe is the stripe Decode reads of each source chunk at a time
// when a Collector's stripe is 0: a whole chunk of up to 16 KiB.
const DefaultStripe = 16 << 10

// Collector holds a device's verified parity chunks of a coded image until
// the blocks they belong to are rebuilt. Add checks each one against the
// signed table before keeping it, and keeps no more of a block than the
// block lacks. It keeps them in memory, or in a Scratch (UseScratch).
// Not safe for concurrent use.
type Collector struct {
	t      *schemas.ChunkTable
	stripe int
	// parity holds, per block, the verified parity chunks by index: the
	// bytes, or nil for one kept in scratch (at scratchOff).
	parity  map[uint32]map[uint32][]byte
	scratch Scratch
	// Dropped counts the parity chunks Add refused (wrong image, wrong
	// block or index, wrong length, hash not the table's).
	Dropped int
	// Unspilled counts the parity chunks kept in memory because writing
	// them to the scratch failed (the first error in ScratchErr).
	Unspilled  int
	ScratchErr error
}

// Scratch is storage a Collector keeps the parity chunks it holds in
// instead of memory: a file, or a device's scratch flash area. Parity
// chunk j of block b goes at offset (b*ParityPerBlock+j)*ChunkSize; its
// content matters only until the block is rebuilt (nothing needs it
// durable: parity held is not resumed after a restart).
type Scratch interface {
	io.ReaderAt
	io.WriterAt
}

// UseScratch makes c keep the parity chunks Add keeps from now on in s,
// not in memory: a device then holds none of them between their arrival
// and the decode, which reads them back a stripe at a time as it does the
// held source chunks (DecodeMemory with scratch). Should a write to s
// fail, the parity chunk is kept in memory (Unspilled, ScratchErr).
func (c *Collector) UseScratch(s Scratch) { c.scratch = s }

func (c *Collector) scratchOff(b, j uint32) int64 {
	return (int64(b)*int64(c.t.ParityPerBlock) + int64(j)) * int64(c.t.ChunkSize)
}

// NewCollector returns a Collector for the coded table t (which must be
// valid, as after schemas.Decode, and not change), decoding in stripes of
// stripe bytes (DefaultStripe when 0; at most ChunkSize). It fails with
// ErrNotCoded for a table that is not coded.
func NewCollector(t *schemas.ChunkTable, stripe int) (*Collector, error) {
	if !t.Coded() {
		return nil, ErrNotCoded
	}
	if err := CheckParams(int(t.Block), int(t.ParityPerBlock)); err != nil {
		return nil, err
	}
	if stripe <= 0 {
		stripe = DefaultStripe
	}
	return &Collector{t: t, stripe: min(stripe, int(t.ChunkSize)), parity: map[uint32]map[uint32][]byte{}}, nil
}

// Add checks parity chunk p against the table (image, block and index
// within it, length, SHA-256 committed by the table) and keeps it when the
// block still lacks symbols: lacking is how many source chunks of the
// block the device does not hold. It reports whether p was kept. A parity
// chunk that fails the check is dropped and counted (Dropped), and Add
// returns the reason (wrapping schemas.ErrInvalid or
// schemas.ErrDigestMismatch); one already held or not needed is not an
// error. Add keeps a copy of p.Data, or writes it to the scratch
// (UseScratch) and keeps nothing of it: p may alias a receive buffer
// (schemas.DecodeParityChunkView) that is reused once Add returns.
func (c *Collector) Add(p *schemas.ParityChunk, lacking int) (bool, error) {
	return c.add(p, lacking, true)
}

// AddChecked is Add for a parity chunk whose bytes the caller checked
// against c's table already (schemas.ChunkTable.VerifyParity, as the
// fetcher's receive path does before it queues one): the image, block,
// index and length are checked again, the SHA-256 is not computed twice.
func (c *Collector) AddChecked(p *schemas.ParityChunk, lacking int) (bool, error) {
	return c.add(p, lacking, false)
}

func (c *Collector) add(p *schemas.ParityChunk, lacking int, hash bool) (bool, error) {
	if !bytes.Equal(p.Image, c.t.Image) {
		c.Dropped++
		return false, fmt.Errorf("%w: parity chunk of image %s, want %s", schemas.ErrInvalid, schemas.DigestHex(p.Image), schemas.DigestHex(c.t.Image))
	}
	var err error
	if hash {
		err = c.t.VerifyParity(p.Block, p.Index, p.Data)
	} else {
		_, err = c.t.ParityShape(p.Block, p.Index, len(p.Data))
	}
	if err != nil {
		c.Dropped++
		return false, err
	}
	held := c.parity[p.Block]
	if _, dup := held[p.Index]; dup || len(held) >= lacking {
		return false, nil
	}
	if held == nil {
		held = map[uint32][]byte{}
		c.parity[p.Block] = held
	}
	var data []byte // nil: in the scratch
	if c.scratch != nil {
		if _, err := c.scratch.WriteAt(p.Data, c.scratchOff(p.Block, p.Index)); err != nil {
			c.Unspilled++
			if c.ScratchErr == nil {
				c.ScratchErr = fmt.Errorf("blockcode: parity chunk %d of block %d to scratch: %w", p.Index, p.Block, err)
			}
			data = bytes.Clone(p.Data)
		}
	} else {
		data = bytes.Clone(p.Data)
	}
	held[p.Index] = data
	return true, nil
}

// Covered returns a filter for the chunk request (loss summary) of a
// device of the coded image: called once for each missing chunk, in any
// order, it reports the first Held(b) missing chunks of each block b as
// covered by the parity chunks held for it. A block lacks one symbol per
// missing chunk less one per parity chunk held, so a request that leaves
// the covered chunks out tells the publisher, per block, how many symbols
// the device still lacks (what a repair round sizes its parity by), and
// asks by index only for chunks it does lack should the block's parity be
// spent. The filter is not safe for concurrent use and sees the parity
// held when Covered was called.
func (c *Collector) Covered() func(i uint32) bool {
	left := make(map[uint32]int, len(c.parity))
	for b, h := range c.parity {
		left[b] = len(h)
	}
	return func(i uint32) bool {
		b := c.t.BlockOf(i)
		if left[b] > 0 {
			left[b]--
			return true
		}
		return false
	}
}

// Held returns the verified parity chunks held for block b.
func (c *Collector) Held(b uint32) int { return len(c.parity[b]) }

// Forget drops the parity chunks held for block b.
func (c *Collector) Forget(b uint32) { delete(c.parity, b) }

// DecodeMemory returns the bytes a device holds for a block of which lost
// chunks are rebuilt, in stripes of stripe bytes, with chunks of
// chunkSize bytes: one stripe and the lost chunks Decode rebuilds, whatever
// the block's size (the held chunks are read back one stripe at a time),
// and, unless the parity chunks are kept in a scratch (UseScratch; they
// are read back as the held chunks are), the lost parity chunks the
// Collector holds until the decode.
func DecodeMemory(lost, stripe, chunkSize int, scratch bool) int64 {
	held := 2 * int64(lost) * int64(chunkSize)
	if scratch {
		held = int64(lost) * int64(chunkSize)
	}
	return int64(min(stripe, chunkSize)) + held
}

// Decode rebuilds the source chunks of block b the device lacks (have
// reports the chunks it holds, verified, in slot at offset i*ChunkSize)
// from those it holds and the parity chunks Add kept, checks each rebuilt
// chunk against the table and hands it to write (in index order), then
// forgets the block's parity. It does not hold the block: it reads the
// held chunks back from slot a stripe at a time (see DecodeMemory).
//
// It fails with ErrShort when the block lacks more chunks than parity
// chunks are held (nothing is written), with schemas.ErrInvalid for a
// block beyond the image, with schemas.ErrDigestMismatch should a rebuilt
// chunk not match the table (a chunk in slot that have claims but that is
// not the image's), and with slot's or write's error. A block that lacks
// nothing is a no-op.
func (c *Collector) Decode(ctx context.Context, b uint32, have func(i uint32) bool, slot io.ReaderAt, write func(i uint32, data []byte) error) error {
	t := c.t
	first, count := t.BlockChunks(b)
	if count == 0 {
		return fmt.Errorf("%w: block %d beyond the image's %d blocks", schemas.ErrInvalid, b, t.NumBlocks())
	}
	var lost []uint32
	for i := range count {
		if !have(first + i) {
			lost = append(lost, i)
		}
	}
	if len(lost) == 0 {
		c.Forget(b)
		return nil
	}
	held := c.parity[b]
	if len(held) < len(lost) {
		return fmt.Errorf("%w: block %d lacks %d chunks, %d parity chunks held", ErrShort, b, len(lost), len(held))
	}
	// Use the lowest parity indices held, as many as chunks are lost.
	idx := make([]uint32, 0, len(held))
	for j := range held {
		idx = append(idx, j)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	idx = idx[:len(lost)]

	cs := int(t.ChunkSize)
	rebuilt := make([][]byte, len(lost))
	for m := range rebuilt {
		rebuilt[m] = make([]byte, cs)
	}
	// The rows that rebuild the lost chunks from the held ones and the
	// parity chunks used (gf.go): one small inversion, no K x K one.
	dec, err := decodeRows(int(count), int(t.ParityPerBlock), lost, idx)
	if err != nil {
		return fmt.Errorf("blockcode: block %d: %w", b, err)
	}
	// Each input (the held source chunks in ascending order, then the
	// parity chunks in idx order) adds its column's multiple to every
	// rebuilt chunk, a stripe at a time: one stripe of one held chunk is
	// read at a time, and the coder's tables are one column's, not the
	// whole L x K matrix's for every stripe.
	sub := make([][]byte, len(lost))
	add := func(in []byte, col, off int) error {
		for u := range sub {
			sub[u] = rebuilt[u][off : off+len(in)]
		}
		if err := dec.EncodeIdx(in, col, sub); err != nil {
			return fmt.Errorf("blockcode: block %d: %w", b, err)
		}
		return nil
	}
	// addFrom adds, as input col, the chunk at base in r, of which valid
	// bytes are stored (the rest reads as zero: the image's last chunk is
	// zero-padded), reading it back a stripe at a time.
	stripe := make([]byte, c.stripe)
	addFrom := func(r io.ReaderAt, base int64, valid, col int, what string, idx uint32) error {
		for off := 0; off < cs; off += c.stripe {
			buf := stripe[:min(c.stripe, cs-off)]
			v := max(0, min(len(buf), valid-off))
			clear(buf[v:])
			if v > 0 {
				if n, err := r.ReadAt(buf[:v], base+int64(off)); err != nil && !(errors.Is(err, io.EOF) && n == v) {
					return fmt.Errorf("blockcode: block %d: reading %s %d back: %w", b, what, idx, err)
				}
			}
			if err := add(buf, col, off); err != nil {
				return err
			}
		}
		return nil
	}
	col, m := 0, 0
	for i := range count {
		if m < len(lost) && lost[m] == i {
			m++
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := addFrom(slot, int64(first+i)*int64(cs), t.ChunkLen(first+i), col, "chunk", first+i); err != nil {
			return err
		}
		col++
	}
	for _, j := range idx {
		var err error
		if p := held[j]; p != nil {
			err = add(p, col, 0)
		} else {
			// Kept in the scratch. A parity chunk read back is not the
			// one Add verified should the scratch not hold what was
			// written: the rebuilt chunks' check against the table then
			// refuses them.
			err = addFrom(c.scratch, c.scratchOff(b, j), cs, col, "parity chunk", j)
		}
		if err != nil {
			return err
		}
		col++
	}
	for m, i := range lost {
		n := t.ChunkLen(first + i)
		data := rebuilt[m]
		if err := t.VerifyChunk(first+i, data[:n]); err != nil {
			return fmt.Errorf("blockcode: block %d rebuilt: %w", b, err)
		}
		if err := write(first+i, data[:n]); err != nil {
			return err
		}
	}
	c.Forget(b)
	return nil
}
