package bootctl

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestInvert(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 4095, 4096, 4097, 3*4096 + 5, 64 << 10} {
		src := make([]byte, n)
		r := rand.New(rand.NewPCG(uint64(n), 1))
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		want := make([]byte, n)
		for i, b := range src {
			want[i] = ^b
		}
		dst := make([]byte, n)
		invert(dst, src)
		if !bytes.Equal(dst, want) {
			t.Fatalf("len %d: invert differs from the complement", n)
		}
		invert(src, src) // in place, as readAt does
		if !bytes.Equal(src, want) {
			t.Fatalf("len %d: in-place invert differs from the complement", n)
		}
	}
}

func BenchmarkInvert(b *testing.B) {
	p := make([]byte, 16<<10)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		invert(p, p)
	}
}
