package publisher

import (
	"bytes"
	"context"
	"fmt"

	"github.com/firmcast/firmcast/schemas/suit"
)

// ManifestRequest is what the server knows when it signs a manifest for a
// campaign created without an envelope.
type ManifestRequest struct {
	ImageDigest []byte
	ImageSize   uint64
	// ChunkSize and ChunkTableDigest (SHA-256 of the chunk table's
	// deterministic encoding) let a device authenticate every chunk.
	ChunkSize        uint32
	ChunkTableDigest []byte
	// CodedTableDigest, for an image served with coded repair, is the
	// SHA-256 of its coded chunk table (suit.ParamFirmcastCodedTable);
	// ChunkTableDigest then names its plain table, which agents of
	// delivery protocol 1 take. Nil for an image that is not coded.
	CodedTableDigest []byte
	// Sequence is the manifest sequence number (anti-rollback); the server
	// uses the creation time in Unix milliseconds, which only grows.
	Sequence uint64
	// VendorID and ClassID are 16-byte UUIDs; empty leaves them out.
	VendorID, ClassID []byte
	// URIs the image can be fetched from (HTTP source); may be empty.
	URIs []string
	// Deadline, Unix seconds, becomes the manifest's use-before; 0 = none.
	Deadline int64
	// SecurityVersion is the image's anti-rollback security version
	// (Image.SecurityVersion); 0 = none (devices keep their floor).
	SecurityVersion uint64
	// Encryption, for an encrypted image, is its encryption parameter
	// (the image digest, size and chunk table are the ciphertext's).
	Encryption *suit.ImageEncryption
	// Deltas are offered before the full image, each to the devices
	// running its source (suit.DeltaInfo).
	Deltas []suit.DeltaInfo
	// Component names the SUIT component updated (a boot stage); empty:
	// the application.
	Component string
}

// ManifestSigner makes a signed SUIT envelope. Implementations may keep the
// key in a file, an HSM or a cloud KMS; SignManifest may block on it and
// must honour ctx.
type ManifestSigner interface {
	SignManifest(ctx context.Context, req ManifestRequest) ([]byte, error)
}

// ManifestSignerFunc adapts a function to ManifestSigner.
type ManifestSignerFunc func(ctx context.Context, req ManifestRequest) ([]byte, error)

// SignManifest calls f.
func (f ManifestSignerFunc) SignManifest(ctx context.Context, req ManifestRequest) ([]byte, error) {
	return f(ctx, req)
}

// checkEnvelope refuses an envelope that is not a SUIT envelope or names
// another image than the campaign's. It does not authenticate it: the
// server may not hold the signers' public keys, and devices verify anyway.
func checkEnvelope(env, image []byte) error {
	m, err := suit.Decode(env)
	if err != nil {
		return fmt.Errorf("%w: envelope: %v", ErrInvalid, err)
	}
	d, ok := m.ImageDigest()
	if !ok {
		return fmt.Errorf("%w: envelope names no image digest", ErrInvalid)
	}
	if !bytes.Equal(d.Bytes, image) {
		return fmt.Errorf("%w: envelope is for image %x, the campaign's is %x", ErrInvalid, d.Bytes, image)
	}
	return nil
}
