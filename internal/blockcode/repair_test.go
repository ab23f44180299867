package blockcode

import (
	"slices"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// TestRound: a round sends, per block, as many fresh parity chunks as the
// neediest device lacks, interleaved across blocks, never one sent before;
// what a block's spent parity cannot cover is reported short.
func TestRound(t *testing.T) {
	ct := &schemas.ChunkTable{ImageSize: 10 * 256, ChunkSize: 256, Block: 4, ParityPerBlock: 3} // blocks of 4, 4, 2
	spent := make([]uint32, 3)
	for _, tc := range []struct {
		name      string
		need      []int
		send      []Symbol
		short     []int
		spentWant []uint32
	}{
		{"first round", []int{2, 0, 1}, []Symbol{{0, 0}, {2, 0}, {0, 1}}, []int{0, 0, 0}, []uint32{2, 0, 1}},
		{"fresh indices", []int{1, 1, 0}, []Symbol{{0, 2}, {1, 0}}, []int{0, 0, 0}, []uint32{3, 1, 1}},
		{"spent parity", []int{2, 3, 2}, []Symbol{{1, 1}, {2, 1}, {1, 2}, {2, 2}}, []int{2, 1, 0}, []uint32{3, 3, 3}},
		{"nothing needed", []int{0, 0, 0}, nil, []int{0, 0, 0}, []uint32{3, 3, 3}},
	} {
		send, short := Round(ct, tc.need, spent)
		if !slices.Equal(send, tc.send) || !slices.Equal(short, tc.short) || !slices.Equal(spent, tc.spentWant) {
			t.Errorf("%s: send %v short %v spent %v; want %v, %v, %v", tc.name, send, short, spent, tc.send, tc.short, tc.spentWant)
		}
	}
}
