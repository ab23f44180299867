package publisher

import (
	"math"
	"slices"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// TestWantedBoundsIndices: the chunks a request or loss summary asks for
// are read within the image: indices beyond its last chunk (a bitmap
// longer than the image, ranges past its end or at the top of uint32)
// are ignored, never served or charged, and overlapping ranges ask for
// a chunk once.
func TestWantedBoundsIndices(t *testing.T) {
	const n = 10
	for _, tc := range []struct {
		name string
		r    schemas.ChunkRequest
		want []int
	}{
		{"bitmap within", schemas.ChunkRequest{Bitmap: []byte{0b1000_0101, 0b10}}, []int{0, 2, 7, 9}},
		{"bitmap past the end", schemas.ChunkRequest{Bitmap: []byte{0, 0b1111_1100, 0xff, 0xff}}, nil},
		{"bitmap straddling the end", schemas.ChunkRequest{Bitmap: []byte{0, 0b0000_0110}}, []int{9}},
		{"range past the end", schemas.ChunkRequest{Ranges: []schemas.Range{{First: n, Count: 5}}}, nil},
		{"range straddling the end", schemas.ChunkRequest{Ranges: []schemas.Range{{First: 8, Count: 100}}}, []int{8, 9}},
		{"range at the top of uint32", schemas.ChunkRequest{Ranges: []schemas.Range{{First: math.MaxUint32, Count: math.MaxUint32}}}, nil},
		{"huge count", schemas.ChunkRequest{Ranges: []schemas.Range{{First: 0, Count: math.MaxUint32}}}, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{"overlapping ranges", schemas.ChunkRequest{Ranges: []schemas.Range{{First: 1, Count: 3}, {First: 2, Count: 3}}}, []int{1, 2, 3, 4}},
	} {
		if got := wanted(&tc.r, n); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
