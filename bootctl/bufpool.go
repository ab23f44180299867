package bootctl

import "sync"

// Image I/O buffers (hashing a slot, copying an image, inverting bytes on
// their way to a flash file) are lent from one pool rather than held by
// each Device and flash: they are needed a moment at a time, and a host
// that simulates 500 devices held 60 MB of them.
var ioBufs sync.Pool // of *[]byte

// getBuf lends a buffer of n bytes (n at most maxScratch to be kept for
// reuse when returned).
func getBuf(n int) *[]byte {
	if p, ok := ioBufs.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, max(n, maxScratch))
	return &b
}

// putBuf returns a buffer lent by getBuf.
func putBuf(p *[]byte) {
	if cap(*p) <= maxScratch {
		ioBufs.Put(p)
	}
}
