package suit

import (
	"crypto/subtle"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// CheckChunkTable authenticates an image's chunk table against the manifest
// before any chunk is trusted: the SHA-256 of its deterministic encoding and
// its chunk size must match firmcast's parameter, and its whole-image
// digest and size the manifest's image digest and size. It returns an error
// wrapping ErrChunkTable naming the mismatch (or ErrParameter when the
// manifest carries no firmcast parameter).
func (m *Manifest) CheckChunkTable(t *schemas.ChunkTable) error {
	ci, ok := m.ChunkInfo()
	if !ok {
		return fmt.Errorf("%w: manifest has no %s parameter", ErrParameter, ParamName(ParamFirmcast))
	}
	if ci.TableDigest.Alg != AlgSHA256 {
		return fmt.Errorf("%w: chunk-table digest algorithm %d", ErrUnsupported, ci.TableDigest.Alg)
	}
	d, err := t.Digest()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrChunkTable, err)
	}
	if subtle.ConstantTimeCompare(d[:], ci.TableDigest.Bytes) != 1 {
		return fmt.Errorf("%w: digest %x, manifest %x", ErrChunkTable, d, ci.TableDigest.Bytes)
	}
	if t.ChunkSize != ci.ChunkSize {
		return fmt.Errorf("%w: chunk size %d, manifest %d", ErrChunkTable, t.ChunkSize, ci.ChunkSize)
	}
	if img, ok := m.ImageDigest(); ok && (img.Alg != AlgSHA256 || subtle.ConstantTimeCompare(img.Bytes, t.Image) != 1) {
		return fmt.Errorf("%w: image digest %x, manifest %x", ErrChunkTable, t.Image, img.Bytes)
	}
	if size, ok := m.ImageSize(); ok && size != t.ImageSize {
		return fmt.Errorf("%w: image size %d, manifest %d", ErrChunkTable, t.ImageSize, size)
	}
	return nil
}
