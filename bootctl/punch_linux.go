package bootctl

import (
	"errors"
	"os"
	"syscall"
)

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	seekData        = 3 // SEEK_DATA
)

// punchHole deallocates [off, off+n) so it reads back as zeros. A range
// that is a hole already (no data from off to off+n, asked with one
// SEEK_DATA) is left alone: punching it still costs the file system a
// journal transaction and a page-cache sweep, and a fresh candidate slot
// of a simulated device is exactly that (hundreds of devices erasing
// their slot at a campaign's start spent 2.5 ms each on it).
func punchHole(f *os.File, off, n int64) error {
	if isHole(f, off, n) {
		return nil
	}
	return syscall.Fallocate(int(f.Fd()), fallocKeepSize|fallocPunchHole, off, n)
}

// isHole reports whether the file holds no data in [off, off+n). Any
// doubt (an error other than "no data past off") says no.
func isHole(f *os.File, off, n int64) bool {
	next, err := syscall.Seek(int(f.Fd()), off, seekData)
	if errors.Is(err, syscall.ENXIO) {
		return true // no data at or after off
	}
	return err == nil && next >= off+n
}
