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

// TestFileFlashEraseHoles: an erase reads back erased whether the range
// held data written a moment ago (still in the page cache, not yet
// allocated on disk), data synced to disk, or nothing (a hole, which the
// store leaves alone), and ranges next to it keep their bytes.
func TestFileFlashEraseHoles(t *testing.T) {
	g := Geometry{SectorSize: 4096, Sectors: 16, WriteAlign: 4}
	f, err := CreateFileFlash(t.TempDir()+"/flash", g)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ss := int64(g.SectorSize)
	data := bytes.Repeat([]byte{0x5a}, int(ss))
	for _, s := range []int{1, 2, 3, 5, 6} {
		if err := f.Program(data, int64(s)*ss); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil { // sectors 1-3, 5-6 on disk
		t.Fatal(err)
	}
	if err := f.Program(data, 8*ss); err != nil { // sector 8 in the page cache only
		t.Fatal(err)
	}
	for _, s := range []int{0, 2, 8, 10} { // a hole, synced data, cached data, a hole
		if err := f.Erase(s); err != nil {
			t.Fatalf("erase sector %d: %v", s, err)
		}
	}
	if err := f.EraseSectors(5, 2); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, ss)
	for s := range g.Sectors {
		if _, err := f.ReadAt(got, int64(s)*ss); err != nil {
			t.Fatal(err)
		}
		want := bytes.Repeat([]byte{Erased}, int(ss))
		if s == 1 || s == 3 {
			want = data
		}
		if !bytes.Equal(got, want) {
			t.Errorf("sector %d reads %x..., want %x...", s, got[:4], want[:4])
		}
	}
}
