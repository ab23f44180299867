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
			t.Hashes = append(t.Hashes, sum[:])
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
	if subtle.ConstantTimeCompare(sum[:], t.Hashes[index]) != 1 {
		return fmt.Errorf("%w: chunk %d of image %s", ErrDigestMismatch, index, DigestHex(t.Image))
	}
	return nil
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
