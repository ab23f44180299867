package delta

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// Delta wire format (little endian). A delta is a header, a frame table,
// the digest of both, and the frames:
//
//	off       len  field
//	  0         4  magic "FCDL"
//	  4         2  format version (1)
//	  6         1  frame codec (1 = zstd)
//	  7         1  log2 of the frame size (12..17: 4 KiB..128 KiB)
//	  8         8  source size in bytes
//	 16        32  SHA-256 of the source image
//	 48         8  target size in bytes (>= 1)
//	 56        32  SHA-256 of the target image
//	 88         4  frame count n = ceil(target size / frame size)
//	 92         4  reserved, zero
//	 96      48*n  frame table, one entry per frame:
//	                 0  8  offset of the frame in the delta
//	                 8  4  stored (compressed) length, 1..MaxStoredLen
//	                12  4  raw (decompressed) length, 2..MaxRawLen
//	                16 32  SHA-256 of the stored frame
//	 96+48n    32  SHA-256 of bytes [0, 96+48n): the delta's ID
//	128+48n     -  the frames, in order, contiguous; nothing follows the last
//
// Frame i produces target bytes [i*F, min((i+1)*F, target size)), F the
// frame size. A frame is compressed on its own (one zstd frame, window at
// most MaxRawLen), so any frame decodes without the others. Its raw bytes
// are an operation list and the data the operations use:
//
//	uvarint  length of the operation list in bytes
//	ops      operations, in output order; each is
//	           uvarint  length<<1 | kind   (length >= 1; kind 0 insert, 1 add)
//	           varint   seek (add only, zigzag): the add reads the source at
//	                    the previous add's end (0 for the frame's first add)
//	                    plus seek
//	data     for each operation in order, length bytes: an insert's
//	         literal bytes; an add's differences, output = source + d (mod 256)
//
// The lengths of the operations sum to the frame's output length, and the
// data is exactly that long. Varints are minimal.
const (
	magic = "FCDL"
	// FormatVersion is the delta format version this package reads and writes.
	FormatVersion = 1
	// HeaderSize is the size of the fixed header: the bytes ParseHeader needs.
	HeaderSize = 96
	entrySize  = 48
	codecZstd  = 1

	// MinFrameSize and MaxFrameSize bound the frame size (the output
	// bytes of one frame); DefaultFrameSize is Make's default.
	MinFrameSize     = 4 << 10
	MaxFrameSize     = 128 << 10
	DefaultFrameSize = 64 << 10
	minFrameLog      = 12
	maxFrameLog      = 17

	// MaxImageSize bounds the source and target sizes (1 TiB).
	MaxImageSize = 1 << 40
)

// MaxRawLen is the longest raw (decompressed) frame for a frame size:
// twice the frame size. Make never needs more (adds shorter than
// minAdd bytes are sent as literals, so the operation list stays under
// 3/8 of the output).
func MaxRawLen(frameSize int) int { return 2 * frameSize }

// MaxStoredLen is the longest stored (compressed) frame for a frame size:
// the raw bound plus zstd's worst-case expansion, generously.
func MaxStoredLen(frameSize int) int { return MaxRawLen(frameSize) + 1024 }

// Digest is a SHA-256 digest, shown in hex.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes the digest in hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Header is a delta's fixed header: what it applies to and what it makes.
type Header struct {
	// FrameSize is the number of output bytes of each frame but the last.
	FrameSize int `json:"frame_size"`
	// SourceSize and SourceDigest identify the source image: the image the
	// device runs (the precursor), which Apply reads.
	SourceSize   uint64 `json:"source_size"`
	SourceDigest Digest `json:"source_digest"`
	// TargetSize and TargetDigest identify the image the delta makes.
	TargetSize   uint64 `json:"target_size"`
	TargetDigest Digest `json:"target_digest"`
	// Frames is the number of frames.
	Frames int `json:"frames"`
}

// CheckSource reports whether the delta applies to a source image of
// size bytes with SHA-256 digest: it returns nil, or ErrWrongSource
// naming both. A device calls it on the header alone (the first
// HeaderSize bytes of the delta), or the manifest's precursor digest,
// before it downloads the rest.
func (h Header) CheckSource(size uint64, digest [32]byte) error {
	if size != h.SourceSize || Digest(digest) != h.SourceDigest {
		return fmt.Errorf("%w: delta is from %d bytes %s, the source is %d bytes %s",
			ErrWrongSource, h.SourceSize, h.SourceDigest, size, Digest(digest))
	}
	return nil
}

// frameOut returns the output range [off, off+n) of frame i.
func (h Header) frameOut(i int) (off int64, n int) {
	off = int64(i) * int64(h.FrameSize)
	return off, int(min(int64(h.FrameSize), int64(h.TargetSize)-off))
}

// tableEnd is the offset of the header digest; the frames start 32 bytes later.
func (h Header) tableEnd() int64 { return HeaderSize + int64(h.Frames)*entrySize }

// framesStart is the offset of the first frame.
func (h Header) framesStart() int64 { return h.tableEnd() + sha256.Size }

// ParseHeader parses and checks the fixed header in the first HeaderSize
// bytes of b (the rest is ignored): magic, version, codec, frame size,
// sizes, frame count and reserved bytes. It does not read the frame
// table; Open does. Errors: ErrTruncated, ErrMagic, ErrVersion, ErrCodec,
// ErrFrameSize, ErrSize, ErrFrameCount, ErrReserved (all wrap ErrCorrupt).
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes, the header is %d", ErrTruncated, len(b), HeaderSize)
	}
	if string(b[0:4]) != magic {
		return Header{}, fmt.Errorf("%w: %q", ErrMagic, b[0:4])
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != FormatVersion {
		return Header{}, fmt.Errorf("%w: %d, this device reads %d", ErrVersion, v, FormatVersion)
	}
	if c := b[6]; c != codecZstd {
		return Header{}, fmt.Errorf("%w: %d", ErrCodec, c)
	}
	lg := b[7]
	if lg < minFrameLog || lg > maxFrameLog {
		return Header{}, fmt.Errorf("%w: 2^%d bytes, want 2^%d..2^%d", ErrFrameSize, lg, minFrameLog, maxFrameLog)
	}
	h := Header{FrameSize: 1 << lg}
	h.SourceSize = binary.LittleEndian.Uint64(b[8:])
	copy(h.SourceDigest[:], b[16:48])
	h.TargetSize = binary.LittleEndian.Uint64(b[48:])
	copy(h.TargetDigest[:], b[56:88])
	frames := binary.LittleEndian.Uint32(b[88:])
	if h.SourceSize > MaxImageSize || h.TargetSize == 0 || h.TargetSize > MaxImageSize {
		return Header{}, fmt.Errorf("%w: source %d bytes, target %d bytes (target 1..%d)", ErrSize, h.SourceSize, h.TargetSize, uint64(MaxImageSize))
	}
	if want := (h.TargetSize + uint64(h.FrameSize) - 1) / uint64(h.FrameSize); uint64(frames) != want {
		return Header{}, fmt.Errorf("%w: %d frames for %d bytes in frames of %d, want %d", ErrFrameCount, frames, h.TargetSize, h.FrameSize, want)
	}
	h.Frames = int(frames)
	if r := binary.LittleEndian.Uint32(b[92:]); r != 0 {
		return Header{}, fmt.Errorf("%w: bytes 92..95 are %#x", ErrReserved, r)
	}
	return h, nil
}

// appendHeader appends the fixed header. h must be valid.
func appendHeader(b []byte, h Header) []byte {
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, FormatVersion)
	b = append(b, codecZstd, byte(log2(h.FrameSize)))
	b = binary.LittleEndian.AppendUint64(b, h.SourceSize)
	b = append(b, h.SourceDigest[:]...)
	b = binary.LittleEndian.AppendUint64(b, h.TargetSize)
	b = append(b, h.TargetDigest[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Frames))
	return binary.LittleEndian.AppendUint32(b, 0)
}

func log2(n int) int {
	k := 0
	for n > 1 {
		n >>= 1
		k++
	}
	return k
}

// entry is one frame table entry.
type entry struct {
	off    int64
	stored int
	raw    int
	digest [32]byte
}

func appendEntry(b []byte, e entry) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(e.off))
	b = binary.LittleEndian.AppendUint32(b, uint32(e.stored))
	b = binary.LittleEndian.AppendUint32(b, uint32(e.raw))
	return append(b, e.digest[:]...)
}

// parseEntry parses and checks frame table entry i (entrySize bytes) of a
// delta of size bytes: the frame lies after the table, inside the delta,
// and its lengths are within the bounds of the frame size and its output
// length. Contiguity is Open's check. Errors: ErrFrameTable, ErrTruncated.
func parseEntry(h Header, i int, b []byte, size int64) (entry, error) {
	e := entry{
		off:    int64(binary.LittleEndian.Uint64(b[0:])),
		stored: int(binary.LittleEndian.Uint32(b[8:])),
		raw:    int(binary.LittleEndian.Uint32(b[12:])),
	}
	copy(e.digest[:], b[16:48])
	_, out := h.frameOut(i)
	switch {
	case binary.LittleEndian.Uint64(b[0:]) > uint64(size) || e.off < h.framesStart():
		return entry{}, fmt.Errorf("%w: frame %d at offset %d, frames lie in [%d, %d)", ErrFrameTable, i, uint64(e.off), h.framesStart(), size)
	case e.stored < 1 || e.stored > MaxStoredLen(h.FrameSize):
		return entry{}, fmt.Errorf("%w: frame %d stores %d bytes (1..%d)", ErrFrameTable, i, e.stored, MaxStoredLen(h.FrameSize))
	case e.raw < out+2 || e.raw > MaxRawLen(h.FrameSize):
		return entry{}, fmt.Errorf("%w: frame %d has a raw length of %d for %d output bytes (%d..%d)", ErrFrameTable, i, e.raw, out, out+2, MaxRawLen(h.FrameSize))
	case int64(e.stored) > size-e.off:
		return entry{}, fmt.Errorf("%w: frame %d of %d bytes at %d, the delta ends at %d", ErrTruncated, i, e.stored, e.off, size)
	}
	return e, nil
}
