package blockcode

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/klauspost/reedsolomon"
)

// Decoding without inverting the whole block's matrix.
//
// reedsolomon's ReconstructData inverts the K x K matrix of the rows it
// holds (Gaussian elimination, about 7 ms at K = 128) and reedsolomon.New
// builds the K + P code (about 10 ms): at 5% loss a device rebuilds each
// of its blocks, so 500 simulated devices spent 20 s of CPU there for 8
// MiB images, where the multiplications that rebuild the bytes took under
// a millisecond a block. With a systematic MDS code, when L source chunks
// are lost and L parity chunks J are held, the lost chunks d_M solve
//
//	A[J][M] d_M = p_J + A[J][not M] d_(not M)
//
// (A the code's P x K parity rows; + is XOR in GF(2^8)). A[J][M] is an
// L x L submatrix of A, invertible because the code is MDS; so the L rows
// that rebuild the lost chunks from the K symbols held come from one
// L x L inversion and an L x L by L x K product, and reedsolomon's SIMD
// multiplies them into the bytes (an encoder whose "parity" rows are these
// L rows, WithCustomMatrix). A is the code's own, read out of
// reedsolomon.New(K, P) once per process and (K, P) by encoding unit
// vectors.

// gfExp and gfLog are GF(2^8)'s exponent and log tables for the field
// reedsolomon uses (polynomial x^8 + x^4 + x^3 + x^2 + 1, generator 2).
var gfExp, gfLog = func() (exp [510]byte, log [256]byte) {
	x := 1
	for i := range 255 {
		exp[i], exp[i+255] = byte(x), byte(x)
		log[x] = byte(i)
		x <<= 1
		if x&0x100 != 0 {
			x ^= 0x11d
		}
	}
	return exp, log
}()

func gfMul(a, b byte) byte {
	if a == 0 || b == 0 {
		return 0
	}
	return gfExp[int(gfLog[a])+int(gfLog[b])]
}

func gfInv(a byte) byte { return gfExp[255-int(gfLog[a])] } // a != 0

// errSingular: a matrix the code guarantees invertible was not.
var errSingular = errors.New("blockcode: singular decode matrix")

// gfInvert inverts the n x n matrix m (rows of n bytes) in place of a
// copy, by Gauss-Jordan elimination.
func gfInvert(m [][]byte) ([][]byte, error) {
	n := len(m)
	a := make([][]byte, n)
	inv := make([][]byte, n)
	for i := range n {
		a[i] = append([]byte(nil), m[i]...)
		inv[i] = make([]byte, n)
		inv[i][i] = 1
	}
	for col := range n {
		piv := -1
		for r := col; r < n; r++ {
			if a[r][col] != 0 {
				piv = r
				break
			}
		}
		if piv < 0 {
			return nil, errSingular
		}
		a[col], a[piv] = a[piv], a[col]
		inv[col], inv[piv] = inv[piv], inv[col]
		if s := gfInv(a[col][col]); s != 1 {
			for k := range n {
				a[col][k], inv[col][k] = gfMul(a[col][k], s), gfMul(inv[col][k], s)
			}
		}
		for r := range n {
			if f := a[r][col]; r != col && f != 0 {
				for k := range n {
					a[r][k] ^= gfMul(f, a[col][k])
					inv[r][k] ^= gfMul(f, inv[col][k])
				}
			}
		}
	}
	return inv, nil
}

// parityRows returns the P x K parity rows of reedsolomon's (K, P) code,
// computed once per process and (K, P): parity shard j of data shards
// that are the unit vectors (shard i holds 1 at byte i) holds A[j][i] at
// byte i.
func parityRows(k, p int) ([][]byte, error) {
	v, _ := rowsCache.LoadOrStore([2]int{k, p}, &rowsEntry{})
	e := v.(*rowsEntry)
	// Once per (K, P), not once per caller that comes before the first
	// is done: 500 simulated devices rebuild their first block at about
	// the same moment after a wave, and each built the code (1.4 of 21
	// CPU-seconds of TestQuietDevices under -race).
	e.once.Do(func() { e.rows, e.err = buildParityRows(k, p) })
	return e.rows, e.err
}

// rowsEntry is parityRows' cache entry of one (K, P).
type rowsEntry struct {
	once sync.Once
	rows [][]byte
	err  error
}

// rowsBuilt counts buildParityRows calls (TestParityRowsOnce).
var rowsBuilt atomic.Int64

func buildParityRows(k, p int) ([][]byte, error) {
	rowsBuilt.Add(1)
	code, err := reedsolomon.New(k, p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadParams, err)
	}
	shards := make([][]byte, k+p)
	for i := range shards {
		shards[i] = make([]byte, k)
		if i < k {
			shards[i][i] = 1
		}
	}
	if err := code.Encode(shards); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadParams, err)
	}
	return shards[k:], nil
}

var rowsCache sync.Map // [2]int{K, P} -> *rowsEntry

// decodeRows returns the rows that rebuild the lost source chunks of a
// block of k (lost ascending) from its k - len(lost) held source chunks
// (ascending) followed by the parity chunks of indices par (as many as
// lost), as an encoder whose parity rows they are.
func decodeRows(k, p int, lost, par []uint32) (reedsolomon.Encoder, error) {
	a, err := parityRows(k, p)
	if err != nil {
		return nil, err
	}
	l := len(lost)
	b := make([][]byte, l)
	for t, j := range par {
		b[t] = make([]byte, l)
		for u, i := range lost {
			b[t][u] = a[j][i]
		}
	}
	binv, err := gfInvert(b)
	if err != nil {
		return nil, err
	}
	rows := make([][]byte, l)
	for u := range l {
		row := make([]byte, k)
		col, m := 0, 0
		for i := range k {
			if m < l && int(lost[m]) == i {
				m++
				continue
			}
			var s byte
			for t, j := range par {
				s ^= gfMul(binv[u][t], a[j][i])
			}
			row[col] = s
			col++
		}
		for t := range par {
			row[col+t] = binv[u][t]
		}
		rows[u] = row
	}
	return reedsolomon.New(k, l, reedsolomon.WithCustomMatrix(rows), reedsolomon.WithInversionCache(false), reedsolomon.WithMaxGoroutines(1))
}
