package schemas

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// ChunkCount returns the number of chunks of an image of size bytes cut in
// chunks of chunkSize bytes (the last one possibly shorter). It returns 0
// when size or chunkSize is 0.
func ChunkCount(size uint64, chunkSize uint32) uint64 {
	if size == 0 || chunkSize == 0 {
		return 0
	}
	return (size-1)/uint64(chunkSize) + 1
}

// BuildChunkTable reads an image from r to EOF, hashing while streaming,
// and returns its chunk table: the SHA-256 of the whole image and of each
// chunkSize-byte chunk. It holds one chunk in memory at a time.
//
// It fails with ErrInvalid when chunkSize is outside [MinChunkSize,
// MaxChunkSize] or the image is empty, with ErrTooLarge as soon as the
// image exceeds MaxChunks chunks, and with the reader's error (wrapped)
// when reading fails.
func BuildChunkTable(r io.Reader, chunkSize uint32) (*ChunkTable, error) {
	if err := checkChunkSize(nameTable, chunkSize); err != nil {
		return nil, err
	}
	whole := sha256.New()
	buf := make([]byte, chunkSize)
	t := &ChunkTable{V: Version, ChunkSize: chunkSize}
	for {
		n, err := io.ReadFull(r, buf)
		eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !eof {
			return nil, fmt.Errorf("schemas: building chunk table: reading chunk %d: %w", len(t.Hashes), err)
		}
		if n > 0 {
			if len(t.Hashes) == MaxChunks {
				return nil, fmt.Errorf("%w: %s: image over %d chunks of %d bytes", ErrTooLarge, nameTable, MaxChunks, chunkSize)
			}
			sum := sha256.Sum256(buf[:n])
			t.Hashes = append(t.Hashes, sum)
			whole.Write(buf[:n])
			t.ImageSize += uint64(n)
		}
		if eof {
			break
		}
	}
	if t.ImageSize == 0 {
		return nil, invalid(nameTable, "image is empty")
	}
	t.Image = whole.Sum(nil)
	return t, nil
}

// Digest returns the SHA-256 of t's deterministic encoding (Encode), the
// value a manifest signs. It fails as Encode does when t is invalid.
func (t *ChunkTable) Digest() ([DigestSize]byte, error) {
	b, err := Encode(t)
	if err != nil {
		return [DigestSize]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// NumChunks returns the number of chunks of the image t describes.
func (t *ChunkTable) NumChunks() uint32 {
	return uint32(ChunkCount(t.ImageSize, t.ChunkSize))
}

// ChunkLen returns the length chunk index must have: ChunkSize for every
// chunk but the last, the remainder for the last. It returns 0 for an
// index beyond the image.
func (t *ChunkTable) ChunkLen(index uint32) int {
	if t.ChunkSize == 0 || uint64(index) >= ChunkCount(t.ImageSize, t.ChunkSize) {
		return 0
	}
	off := uint64(index) * uint64(t.ChunkSize)
	return int(min(uint64(t.ChunkSize), t.ImageSize-off))
}

// VerifyChunk checks that data is chunk index of the image t describes:
// index within the image and length as ChunkLen (ErrInvalid), SHA-256
// equal to the table's entry (ErrDigestMismatch). t must be valid (as
// after Decode or BuildChunkTable). Call it before writing data anywhere.
func (t *ChunkTable) VerifyChunk(index uint32, data []byte) error {
	if uint64(index) >= uint64(len(t.Hashes)) || uint64(index) >= ChunkCount(t.ImageSize, t.ChunkSize) {
		return invalid(nameChunk, "index %d beyond the image's %d chunks", index, len(t.Hashes))
	}
	if want := t.ChunkLen(index); len(data) != want {
		return invalid(nameChunk, "chunk %d is %d bytes, want %d", index, len(data), want)
	}
	sum := sha256.Sum256(data)
	if subtle.ConstantTimeCompare(sum[:], t.Hashes[index][:]) != 1 {
		return fmt.Errorf("%w: chunk %d of image %s", ErrDigestMismatch, index, DigestHex(t.Image))
	}
	return nil
}

// Coded reports whether t commits erasure-coded repair (Block > 0).
func (t *ChunkTable) Coded() bool { return t.Block > 0 }

// NumBlocks returns the number of source blocks of a coded table, 0 for
// a table that is not coded.
func (t *ChunkTable) NumBlocks() uint32 {
	if t.Block == 0 {
		return 0
	}
	n := uint64(t.NumChunks())
	return uint32((n + uint64(t.Block) - 1) / uint64(t.Block))
}

// BlockChunks returns the chunks of source block b, [first, first+count):
// Block chunks from b*Block, fewer for the last block. It returns 0, 0 for
// a block beyond the image or a table that is not coded.
func (t *ChunkTable) BlockChunks(b uint32) (first, count uint32) {
	if b >= t.NumBlocks() {
		return 0, 0
	}
	first = b * t.Block
	return first, min(t.Block, t.NumChunks()-first)
}

// BlockOf returns the source block chunk index belongs to (index / Block);
// t must be coded.
func (t *ChunkTable) BlockOf(index uint32) uint32 { return index / t.Block }

// VerifyParity checks that data is parity chunk index of source block
// block of the image t describes: t coded, block and index within it
// (ErrInvalid), data ChunkSize bytes (ErrInvalid), SHA-256 equal to the
// table's commitment (ErrDigestMismatch). t must be valid (as after
// Decode). Call it before keeping data anywhere or feeding it to a decode.
func (t *ChunkTable) VerifyParity(block, index uint32, data []byte) error {
	i, err := t.ParityShape(block, index, len(data))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if subtle.ConstantTimeCompare(sum[:], t.Parity[i][:]) != 1 {
		return fmt.Errorf("%w: parity chunk %d of block %d of image %s", ErrDigestMismatch, index, block, DigestHex(t.Image))
	}
	return nil
}

// ParityShape checks that parity chunk index of source block block, n
// bytes long, is one t commits (t coded, block and index within it, n
// ChunkSize; ErrInvalid otherwise), without hashing it, and returns the
// index of its digest in t.Parity. VerifyParity is ParityShape and the
// digest check; a caller that checked the digest already (the fetcher's
// receive path) checks the shape alone.
func (t *ChunkTable) ParityShape(block, index uint32, n int) (int, error) {
	if !t.Coded() {
		return 0, invalid(nameParity, "the chunk table of image %s commits no parity", DigestHex(t.Image))
	}
	if block >= t.NumBlocks() {
		return 0, invalid(nameParity, "block %d beyond the image's %d blocks", block, t.NumBlocks())
	}
	if index >= t.ParityPerBlock {
		return 0, invalid(nameParity, "parity index %d beyond the %d per block", index, t.ParityPerBlock)
	}
	if n != int(t.ChunkSize) {
		return 0, invalid(nameParity, "parity chunk %d of block %d is %d bytes, want %d", index, block, n, t.ChunkSize)
	}
	i := uint64(block)*uint64(t.ParityPerBlock) + uint64(index)
	if i >= uint64(len(t.Parity)) {
		return 0, invalid(nameParity, "parity chunk %d of block %d beyond the table's %d hashes", index, block, len(t.Parity))
	}
	return int(i), nil
}

// DigestHex returns the lowercase hex form of a digest, as used in topic
// names (Topics.Chunks).
func DigestHex(d []byte) string { return hex.EncodeToString(d) }

// ParseDigestHex parses the lowercase hex form of a SHA-256 digest. It
// fails with ErrBadIdentifier unless s is exactly 64 lowercase hex digits.
func ParseDigestHex(s string) ([]byte, error) {
	if err := checkDigestHex(s); err != nil {
		return nil, err
	}
	return hex.DecodeString(s)
}

func checkDigestHex(s string) error {
	if len(s) != 2*DigestSize {
		return fmt.Errorf("%w: image digest %q is %d characters, want %d lowercase hex digits", ErrBadIdentifier, s, len(s), 2*DigestSize)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: image digest %q has %q at %d, want lowercase hex", ErrBadIdentifier, s, c, i)
		}
	}
	return nil
}
