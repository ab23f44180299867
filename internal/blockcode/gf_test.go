package blockcode

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestGFInvert: gfInvert's result times the matrix is the identity for
// every square submatrix of the code's parity rows (MDS: all invertible),
// and a singular matrix is refused.
func TestGFInvert(t *testing.T) {
	a, err := parityRows(16, 8)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for trial := range 200 {
		l := 1 + r.IntN(8)
		rows, cols := r.Perm(8)[:l], r.Perm(16)[:l]
		m := make([][]byte, l)
		for i, j := range rows {
			m[i] = make([]byte, l)
			for k, c := range cols {
				m[i][k] = a[j][c]
			}
		}
		inv, err := gfInvert(m)
		if err != nil {
			t.Fatalf("trial %d: a %dx%d submatrix of an MDS code's parity rows: %v", trial, l, l, err)
		}
		for i := range l {
			for k := range l {
				var s byte
				for x := range l {
					s ^= gfMul(inv[i][x], m[x][k])
				}
				if want := byte(0); i == k && s != 1 || i != k && s != want {
					t.Fatalf("trial %d: inverse times matrix at (%d,%d) is %d", trial, i, k, s)
				}
			}
		}
	}
	if _, err := gfInvert([][]byte{{1, 2}, {2, 4}}); !errors.Is(err, errSingular) {
		t.Fatalf("singular matrix: %v", err)
	}
	for x := 1; x < 256; x++ {
		if gfMul(byte(x), gfInv(byte(x))) != 1 {
			t.Fatalf("%d times its inverse is not 1", x)
		}
	}
}

// TestDecodeK128: the shipped code (K = 128, P = 32; chunks of 1 KiB here) rebuilds any loss pattern from any subset of the parity of
// the same size, as devices hold whichever parity chunks reached them.
func TestDecodeK128(t *testing.T) {
	im := newImage(t, 2*128*1024, 1024, 128, 32, 11) // 2 blocks of 128
	c := im.coded
	par := parityMsgs(t, im)
	r := rand.New(rand.NewPCG(7, 8))
	for range 30 {
		lostSet := map[uint32]bool{}
		for b := range c.NumBlocks() {
			first, count := c.BlockChunks(b)
			for _, x := range r.Perm(int(count))[:r.IntN(33)] {
				lostSet[first+uint32(x)] = true
			}
		}
		decodeTrial(t, im, par, r, lostSet, 0, nil)
	}
}

// TestParityRowsOnce: callers that come at once for a (K, P) not yet
// built wait for one build and share its rows (500 simulated devices
// that rebuilt their first block together each built the code).
func TestParityRowsOnce(t *testing.T) {
	const k, p = 37, 5             // a code no other test builds
	rowsCache.Delete([2]int{k, p}) // not built yet, with -count too
	before := rowsBuilt.Load()
	rows := make([][][]byte, 64)
	start := make(chan struct{}) // all callers come at once
	var wg sync.WaitGroup
	for i := range rows {
		wg.Go(func() {
			<-start
			r, err := parityRows(k, p)
			if err != nil {
				t.Error(err)
			}
			rows[i] = r
		})
	}
	close(start)
	wg.Wait()
	if n := rowsBuilt.Load() - before; n != 1 {
		t.Errorf("parityRows(%d, %d) from %d callers at once built the code %d times, want 1", k, p, len(rows), n)
	}
	for i, r := range rows {
		if len(r) != p || &r[0][0] != &rows[0][0][0] {
			t.Fatalf("caller %d got rows %p (%d), want caller 0's %p", i, r, len(r), rows[0])
		}
	}
}
