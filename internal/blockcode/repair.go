package blockcode

import "github.com/firmcast/firmcast/schemas"

// Symbol names one parity chunk to broadcast: parity chunk Index of
// source block Block.
type Symbol struct {
	Block, Index uint32
}

// Round plans one repair round of the image the coded table t describes.
// need[b] is the most symbols any device still lacks in block b (the
// maximum over the loss summaries of the round); spent[b] counts the
// parity chunks of block b sent so far, which Round advances. It returns
// the fresh parity chunks to broadcast, need[b] of block b while it has
// parity left, blocks interleaved (the first of every block in turn, then
// the second, ...) so that a burst of losses spreads over the blocks; and
// short[b], the symbols block b still lacks once its ParityPerBlock parity
// chunks are spent (the caller repairs those with source chunks the needy
// devices lack). need and spent must have NumBlocks() entries.
//
// Fresh parity helps every device that lacks anything in the block, each
// with whichever source chunks it lost, which is why one broadcast round
// of the neediest device's count serves all the others that heard it.
func Round(t *schemas.ChunkTable, need []int, spent []uint32) (send []Symbol, short []int) {
	nb := int(t.NumBlocks())
	short = make([]int, nb)
	fresh := make([]int, nb)
	most := 0
	for b := range nb {
		left := int(t.ParityPerBlock) - int(spent[b])
		fresh[b] = max(0, min(need[b], left))
		short[b] = max(0, need[b]-fresh[b])
		most = max(most, fresh[b])
	}
	for j := range most {
		for b := range nb {
			if j < fresh[b] {
				send = append(send, Symbol{Block: uint32(b), Index: spent[b] + uint32(j)})
			}
		}
	}
	for b := range nb {
		spent[b] += uint32(fresh[b])
	}
	return send, short
}
