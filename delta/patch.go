package delta

import (
	"crypto/sha256"
	"fmt"
	"io"
)

// Patch is an opened delta whose header and frame table were checked.
// It reads the delta through an io.ReaderAt (the staged delta: a file, or
// the storage area the chunks were written to) and keeps only the header
// in memory, whatever the delta's size.
//
// A Patch is safe for concurrent use: it holds no state beyond the
// header; each Apply has its own.
type Patch struct {
	r    io.ReaderAt
	size int64
	h    Header
	id   Digest
}

// Open checks the delta of size bytes that r reads: the header
// (ParseHeader), every frame table entry (frames contiguous after the
// table, lengths within the bounds of the frame size) and the digest of
// header and table, streaming the table through a fixed buffer; the
// frames are checked by Apply. Errors wrap ErrCorrupt (ErrTruncated,
// ErrFrameTable, ErrTrailingData, ErrHeaderDigest, and ParseHeader's), or
// are r's.
func Open(r io.ReaderAt, size int64) (*Patch, error) {
	var buf [HeaderSize]byte
	if size < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, the header is %d", ErrTruncated, size, HeaderSize)
	}
	if err := readFull(r, buf[:], 0); err != nil {
		return nil, err
	}
	h, err := ParseHeader(buf[:])
	if err != nil {
		return nil, err
	}
	if h.framesStart() > size {
		return nil, fmt.Errorf("%w: %d bytes, header and table of %d frames need %d", ErrTruncated, size, h.Frames, h.framesStart())
	}
	sum := sha256.New()
	sum.Write(buf[:])
	var eb [entrySize]byte
	next := h.framesStart()
	for i := range h.Frames {
		if err := readFull(r, eb[:], HeaderSize+int64(i)*entrySize); err != nil {
			return nil, err
		}
		sum.Write(eb[:])
		e, err := parseEntry(h, i, eb[:], size)
		if err != nil {
			return nil, err
		}
		if e.off != next {
			return nil, fmt.Errorf("%w: frame %d at offset %d, the previous frame ends at %d", ErrFrameTable, i, e.off, next)
		}
		next += int64(e.stored)
	}
	if next != size {
		return nil, fmt.Errorf("%w: frames end at %d, the delta is %d bytes", ErrTrailingData, next, size)
	}
	var id, got Digest
	sum.Sum(got[:0])
	if err := readFull(r, id[:], h.tableEnd()); err != nil {
		return nil, err
	}
	if id != got {
		return nil, fmt.Errorf("%w: header and table hash to %s, the delta says %s", ErrHeaderDigest, got, id)
	}
	return &Patch{r: r, size: size, h: h, id: id}, nil
}

// Header returns the delta's header.
func (p *Patch) Header() Header { return p.h }

// ID returns the delta's ID: the SHA-256 of its header and frame table.
func (p *Patch) ID() Digest { return p.id }

// Size returns the delta's size in bytes.
func (p *Patch) Size() int64 { return p.size }

// entry reads and checks frame table entry i, through buf (entrySize
// bytes, so that reading an entry does not allocate).
func (p *Patch) entry(i int, buf []byte) (entry, error) {
	if err := readFull(p.r, buf, HeaderSize+int64(i)*entrySize); err != nil {
		return entry{}, err
	}
	return parseEntry(p.h, i, buf, p.size)
}

// readFull reads len(b) bytes at off; a short read is ErrTruncated.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: %d of %d bytes at offset %d", ErrTruncated, n, len(b), off)
	}
	return fmt.Errorf("delta: read at %d: %w", off, err)
}
