package publisher

import "context"

// ManifestRequest is what the server knows when it signs a manifest for a
// campaign created without an envelope.
type ManifestRequest struct {
	ImageDigest []byte
	ImageSize   uint64
	// ChunkSize and ChunkTableDigest (SHA-256 of the chunk table's
	// deterministic encoding) let a device authenticate every chunk.
	ChunkSize        uint32
	ChunkTableDigest []byte
	// Sequence is the manifest sequence number (anti-rollback); the server
	// uses the creation time in Unix milliseconds, which only grows.
	Sequence uint64
	// VendorID and ClassID are 16-byte UUIDs; empty leaves them out.
	VendorID, ClassID []byte
	// URIs the image can be fetched from (HTTP source); may be empty.
	URIs []string
	// Deadline, Unix seconds, becomes the manifest's use-before; 0 = none.
	Deadline int64
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
