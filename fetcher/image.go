package fetcher

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// Image describes the image to fetch, as the verified manifest states it.
// All fields are required but CodedTableDigest.
type Image struct {
	// Digest is the SHA-256 of the whole image.
	Digest []byte
	// Size is the image size in bytes.
	Size uint64
	// ChunkSize is the chunk size of the chunk table.
	ChunkSize uint32
	// TableDigest is the SHA-256 of the deterministic CBOR encoding of the
	// image's schemas.ChunkTable.
	TableDigest []byte
	// CodedTableDigest, optional, is the SHA-256 of the image's coded
	// chunk table (the same chunk hashes plus the parity hashes of
	// erasure-coded repair), which the manifest signs beside TableDigest
	// (suit.ParamFirmcastCodedTable) for devices that speak
	// schemas.ProtocolCoded. TableDigest then names the plain table. A
	// table whose digest is either one is accepted (DecodeTable).
	CodedTableDigest []byte
}

// Hex returns the lowercase hex image digest (the name used in topics,
// object names and file names).
func (im Image) Hex() string { return hex.EncodeToString(im.Digest) }

// Chunks returns the number of chunks of the image.
func (im Image) Chunks() int {
	if im.ChunkSize == 0 {
		return 0
	}
	return int((im.Size + uint64(im.ChunkSize) - 1) / uint64(im.ChunkSize))
}

// ChunkLen returns the length of chunk i (the last one may be short).
func (im Image) ChunkLen(i int) int {
	off := uint64(i) * uint64(im.ChunkSize)
	if rest := im.Size - off; rest < uint64(im.ChunkSize) {
		return int(rest)
	}
	return int(im.ChunkSize)
}

// Offset returns the byte offset of chunk i.
func (im Image) Offset(i int) int64 { return int64(i) * int64(im.ChunkSize) }

// Validate checks that the description is usable; errors wrap ErrBadImage.
func (im Image) Validate() error {
	if len(im.Digest) != schemas.DigestSize {
		return fmt.Errorf("%w: image digest is %d bytes, want %d", ErrBadImage, len(im.Digest), schemas.DigestSize)
	}
	if len(im.TableDigest) != schemas.DigestSize {
		return fmt.Errorf("%w: chunk table digest is %d bytes, want %d", ErrBadImage, len(im.TableDigest), schemas.DigestSize)
	}
	if len(im.CodedTableDigest) != 0 && len(im.CodedTableDigest) != schemas.DigestSize {
		return fmt.Errorf("%w: coded chunk table digest is %d bytes, want %d", ErrBadImage, len(im.CodedTableDigest), schemas.DigestSize)
	}
	if im.ChunkSize < schemas.MinChunkSize || im.ChunkSize > schemas.MaxChunkSize {
		return fmt.Errorf("%w: chunk size %d outside [%d, %d]", ErrBadImage, im.ChunkSize, schemas.MinChunkSize, schemas.MaxChunkSize)
	}
	if im.Size == 0 {
		return fmt.Errorf("%w: image size is 0", ErrBadImage)
	}
	if n := (im.Size + uint64(im.ChunkSize) - 1) / uint64(im.ChunkSize); n > schemas.MaxChunks {
		return fmt.Errorf("%w: %d chunks, max %d", ErrBadImage, n, schemas.MaxChunks)
	}
	return nil
}

// DecodeTable decodes and authenticates an encoded chunk table against im:
// its SHA-256 must equal im.TableDigest or, when set, im.CodedTableDigest
// (checked before decoding); one accepted by the coded digest must be
// coded. It must describe im. Errors wrap ErrChunkTable.
func DecodeTable(im Image, b []byte) (*schemas.ChunkTable, error) {
	d := sha256.Sum256(b)
	coded := len(im.CodedTableDigest) == schemas.DigestSize && subtle.ConstantTimeCompare(d[:], im.CodedTableDigest) == 1
	if !coded && subtle.ConstantTimeCompare(d[:], im.TableDigest) != 1 {
		return nil, fmt.Errorf("%w: digest %x does not match the manifest's %x", ErrChunkTable, d[:8], im.TableDigest[:8])
	}
	var t schemas.ChunkTable
	if err := schemas.Decode(b, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrChunkTable, err)
	}
	switch {
	case coded && !t.Coded():
		return nil, fmt.Errorf("%w: the table the manifest names as coded commits no parity", ErrChunkTable)
	case !bytes.Equal(t.Image, im.Digest):
		return nil, fmt.Errorf("%w: table is for image %x, want %x", ErrChunkTable, t.Image[:8], im.Digest[:8])
	case t.ImageSize != im.Size:
		return nil, fmt.Errorf("%w: table image size %d, manifest says %d", ErrChunkTable, t.ImageSize, im.Size)
	case t.ChunkSize != im.ChunkSize:
		return nil, fmt.Errorf("%w: table chunk size %d, manifest says %d", ErrChunkTable, t.ChunkSize, im.ChunkSize)
	}
	return &t, nil
}
