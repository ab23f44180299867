package schemas

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBitmapLayout(t *testing.T) {
	b := NewBitmap(12)
	if len(b) != 2 || b.Len() != 16 {
		t.Fatalf("NewBitmap(12): %d bytes", len(b))
	}
	for _, i := range []uint32{0, 1, 2, 3, 8} {
		b.Set(i)
	}
	// LSB first, as in vector request-0002 (h'0f01').
	if b[0] != 0x0f || b[1] != 0x01 {
		t.Fatalf("layout %x, want 0f01", []byte(b))
	}
	if b.Count() != 5 || !b.Has(8) || b.Has(9) || b.Has(16) || b.Has(^uint32(0)) {
		t.Errorf("Count/Has wrong: %x", []byte(b))
	}
	b.Clear(8)
	if b.Has(8) || b.Count() != 4 {
		t.Error("Clear")
	}
	if NewBitmap(0) == nil || len(NewBitmap(0)) != 0 || len(NewBitmap(MaxChunks)) != MaxBitmapSize {
		t.Error("NewBitmap sizes")
	}
}

func TestBitmapRuns(t *testing.T) {
	for _, tt := range []struct {
		name    string
		set     []uint32
		n       uint32
		missing []Range
		ranges  []Range
	}{
		{"empty", nil, 10, []Range{{First: 0, Count: 10}}, nil},
		{"full byte", []uint32{0, 1, 2, 3, 4, 5, 6, 7}, 8, nil, []Range{{First: 0, Count: 8}}},
		{"holes", []uint32{0, 1, 5, 9, 10, 11, 12, 13, 14, 15, 16}, 20,
			[]Range{{First: 2, Count: 3}, {First: 6, Count: 3}, {First: 17, Count: 3}},
			[]Range{{First: 0, Count: 2}, {First: 5, Count: 1}, {First: 9, Count: 8}}},
		{"n beyond bitmap", []uint32{0}, 30, []Range{{First: 1, Count: 29}}, []Range{{First: 0, Count: 1}}},
		{"n inside a byte", []uint32{0, 2}, 3, []Range{{First: 1, Count: 1}}, []Range{{First: 0, Count: 1}, {First: 2, Count: 1}}},
	} {
		b := NewBitmap(24)
		for _, i := range tt.set {
			b.Set(i)
		}
		if d := cmp.Diff(b.Missing(tt.n), tt.missing, cmpOpts); d != "" {
			t.Errorf("%s: Missing (-got +want):\n%s", tt.name, d)
		}
		if d := cmp.Diff(b.Ranges(tt.n), tt.ranges, cmpOpts); d != "" {
			t.Errorf("%s: Ranges (-got +want):\n%s", tt.name, d)
		}
	}
}

// TestBitmapMissingMatchesHas cross-checks Missing against Has on a
// pseudo-random bitmap, and that Missing's output is a valid request.
func TestBitmapMissingMatchesHas(t *testing.T) {
	const n = 1000
	b := NewBitmap(n)
	x := uint32(1)
	for range 600 {
		x = x*1103515245 + 12345
		b.Set(x % n)
	}
	miss := NewBitmap(n)
	for _, r := range b.Missing(n) {
		for i := r.First; i < r.First+r.Count; i++ {
			miss.Set(i)
		}
	}
	for i := range uint32(n) {
		if b.Has(i) == miss.Has(i) {
			t.Fatalf("chunk %d: has %v, missing %v", i, b.Has(i), miss.Has(i))
		}
	}
	req := &ChunkRequest{V: Version, Image: rep(1, 32), ChunkSize: 256, Ranges: b.Missing(n), ReplyTo: "r", Requester: "d"}
	if len(req.Ranges) <= MaxRanges {
		if err := req.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	if got := req.Wanted(n); cmp.Diff([]byte(got), []byte(miss)) != "" {
		t.Errorf("Wanted(ranges) differs from Missing")
	}
}

func TestChunkRequestWanted(t *testing.T) {
	r := &ChunkRequest{Ranges: []Range{{First: 1, Count: 2}, {First: 9, Count: 100}}}
	if got := r.Wanted(12); !cmp.Equal([]byte(got), []byte{0x06, 0x0e}) {
		t.Errorf("Wanted(ranges, 12) = %x, want 060e", []byte(got))
	}
	r = &ChunkRequest{Bitmap: []byte{0xff, 0xff, 0xff}}
	if got := r.Wanted(10); !cmp.Equal([]byte(got), []byte{0xff, 0x03}) {
		t.Errorf("Wanted(bitmap, 10) = %x, want ff03", []byte(got))
	}
	r = &ChunkRequest{Bitmap: []byte{0x01}}
	if got := r.Wanted(20); !cmp.Equal([]byte(got), []byte{0x01, 0, 0}) {
		t.Errorf("Wanted(short bitmap, 20) = %x", []byte(got))
	}
}
