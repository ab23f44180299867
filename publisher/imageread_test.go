package publisher

import (
	"context"
	"fmt"
	"testing"
)

// A chunkReader reads ahead of its consumer as far as the run of chunks
// it took (a range costs about what it returns), up to ahead; an eager
// one (a wave, which takes the whole image in order) reads ahead chunks
// at once from the first.
func TestChunkReaderReadAhead(t *testing.T) {
	h := newFakeHost()
	d := h.addImage(t, 20*1024, 1024, 0, 0) // 20 chunks
	for _, tc := range []struct {
		eager bool
		ahead int
		take  int
		want  int // reads queued after take chunks were taken
	}{
		{false, 8, 1, 0},
		{false, 8, 3, 2},
		{false, 8, 12, 8},
		{true, 8, 1, 8},
		{true, 64, 1, 19}, // no further than the image
		{true, 8, 15, 5},
	} {
		t.Run(fmt.Sprintf("eager=%v/ahead=%d/take=%d", tc.eager, tc.ahead, tc.take), func(t *testing.T) {
			r := h.newChunkReader(context.Background(), d, tc.ahead)
			r.eager = tc.eager
			defer r.close()
			for i := range tc.take {
				b, err := r.get(i)
				if err != nil {
					t.Fatal(err)
				}
				if want, _ := h.readChunk(context.Background(), d, i); string(b) != string(want) {
					t.Fatalf("chunk %d: wrong bytes", i)
				}
			}
			if len(r.queue) != tc.want {
				t.Fatalf("%d reads ahead, want %d", len(r.queue), tc.want)
			}
		})
	}
}
