package fetcher

import (
	"bytes"
	"sync/atomic"

	"github.com/firmcast/firmcast/schemas"
)

// parityMargin is how many parity chunks of a block the receive path
// takes beyond what the block still lacks, for those the fetch loop has
// not counted yet.
const parityMargin = 2

// useful tells the receive path (the inbox's handlers, on the transport's
// goroutines) which arriving chunks and parity chunks the fetch loop has
// no use for, so that they are dropped before they are copied or queued:
// a chunk the fetch holds already (a wave's second pass, a repair
// broadcast for other devices), a parity chunk of a block that lacks
// nothing, or one beyond what its block lacks less the parity held and
// queued for it. A repair round is sized for the block's neediest
// device; without this, every device queued the whole round in front of
// its loop (500 devices x a 1 MiB round of parity on NATS, where nothing
// pushes back on the broker), then dropped most of it.
//
// The fetch loop owns what useful reads (held, need); the handlers own
// queued. A chunk is judged by its head (schemas.ChunkIndexOf) and only
// ever dropped, as the loop would drop it after decoding. A parity chunk
// within its block's need is checked against the signed table before it
// counts (schemas.DecodeParityChunkView, VerifyParity: the loop keeps it
// without hashing it again, blockcode.Collector.AddChecked), so that
// forged or corrupt ones, however many come first, take no good one's
// place.
type useful struct {
	// held: chunks the fetch holds, written and checked (not the request
	// sender's bits, set as a write starts: one that fails is still
	// wanted, and its good copy may be arriving meanwhile).
	held heldBits
	// table is the coded table parity chunks are checked against; nil
	// without coded repair.
	table *schemas.ChunkTable
	// need is, per block, how many parity chunks the fetch loop can
	// still use: what the block lacks, less the parity held for it, plus
	// parityMargin; 0 once it lacks nothing. Nil without coded repair.
	need []atomic.Int32
	// queued is, per block, the parity chunks admitted to the buffer and
	// not yet taken by the loop.
	queued []atomic.Int32
	// skipped counts what admit dropped as of no use; bad the parity
	// chunks it refused as not the table's (BadParity).
	skipped, bad atomic.Int64
}

// newUseful returns the filter of a fetch of n chunks; table is the
// coded table of a fetch with coded repair, else nil.
func newUseful(n int, table *schemas.ChunkTable) *useful {
	u := &useful{held: newHeldBits(n)}
	if table != nil && table.Coded() {
		u.table = table
		u.need = make([]atomic.Int32, table.NumBlocks())
		u.queued = make([]atomic.Int32, table.NumBlocks())
	}
	return u
}

// admit reports whether the chunk or parity chunk message b may be
// queued for the loop, and for an admitted parity chunk returns its
// block (-1 otherwise), which the loop hands back to taken.
func (u *useful) admit(b []byte) (ok bool, blk int) {
	if i, isChunk := schemas.ChunkIndexOf(b); isChunk {
		if u.held.has(int(i)) {
			u.skipped.Add(1)
			return false, -1
		}
		return true, -1
	}
	k, isParity := schemas.ParityBlockOf(b)
	if !isParity || int64(k) >= int64(len(u.need)) {
		return true, -1 // not ours to judge: the loop refuses it, counted
	}
	if u.queued[k].Add(1) > u.need[k].Load() {
		u.queued[k].Add(-1)
		u.skipped.Add(1)
		return false, -1
	}
	var p schemas.ParityChunk
	if schemas.DecodeParityChunkView(b, &p) != nil || !bytes.Equal(p.Image, u.table.Image) || u.table.VerifyParity(p.Block, p.Index, p.Data) != nil {
		u.queued[k].Add(-1)
		u.bad.Add(1)
		return false, -1
	}
	return true, int(k)
}

// taken releases an admitted parity chunk of block blk (from admit)
// once the loop has taken it.
func (u *useful) taken(blk int) {
	if blk >= 0 && blk < len(u.queued) {
		u.queued[blk].Add(-1)
	}
}

// setNeed records that block blk lacks lack chunks and holds held parity
// chunks for them.
func (u *useful) setNeed(blk uint32, lack, held int) {
	if int64(blk) >= int64(len(u.need)) {
		return
	}
	n := 0
	if lack > 0 {
		n = max(lack-held, 0) + parityMargin
	}
	u.need[blk].Store(int32(n))
}
