package bootctl

import (
	"context"
	"fmt"
	"io"
)

// ResumeCandidate reopens a candidate that OpenCandidate prepared before a
// reset, without erasing anything, so that a download resumes where it
// was: bytes already programmed stay, and WriteAt accepts them again when
// equal. The caller must know (from its own persisted state) that
// OpenCandidate(slot, size) ran for this image since the slot last held
// anything else. Errors: ErrBadSlot, ErrTooLarge.
func (d *Device) ResumeCandidate(ctx context.Context, slot int, size uint64) (*Candidate, error) {
	if slot < 0 || slot >= len(d.l.Slots) {
		return nil, fmt.Errorf("%w: slot %d of %d", ErrBadSlot, slot, len(d.l.Slots))
	}
	if size == 0 || size > uint64(d.l.ImageCapacity(d.g)) {
		return nil, fmt.Errorf("%w: %d bytes, a slot holds 1..%d", ErrTooLarge, size, d.l.ImageCapacity(d.g))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &Candidate{d: d, slot: slot, size: size, region: d.slotRegion(slot), pending: map[int64]*partialWord{}}, nil
}

// ReadAt reads the candidate image's bytes as programmed so far (erased
// bytes read as 0xFF), like io.ReaderAt, within the image size. Bytes of
// write units still gathering in memory read as erased.
func (c *Candidate) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) >= c.size {
		return 0, fmt.Errorf("%w: read at %d, image is %d bytes", ErrOutOfRange, off, c.size)
	}
	n := len(p)
	if rest := c.size - uint64(off); uint64(n) > rest {
		n = int(rest)
	}
	if _, err := c.d.f.ReadAt(p[:n], c.d.imageOff(c.region)+off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
