package testutil

import "math/rand/v2"

// PseudoRandom returns n pseudo-random bytes (PCG with seed and stream):
// the same bytes for the same arguments on every run and platform, for
// test images and fixtures that must be reproducible.
func PseudoRandom(seed, stream uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, stream))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
