package publisher

import (
	"context"
	"fmt"
	"time"

	"github.com/firmcast/firmcast/schemas/suit"
)

// SUITSigner returns a ManifestSigner that builds SUIT envelopes with
// suit.Create, authenticated by each of signers (a key file today, an HSM
// or KMS tomorrow). The request's VendorID and ClassID must be 16-byte
// UUIDs (Config.VendorID, Config.ClassID). Unless Config.NoticeSigners is
// set, the same signers also sign the campaign's notices.
func SUITSigner(signers ...suit.Signer) ManifestSigner {
	return suitSigner(append([]suit.Signer(nil), signers...))
}

// suitSigner is the ManifestSigner SUITSigner returns.
type suitSigner []suit.Signer

// noticeSigners lets Config default its NoticeSigners to the manifest's.
func (s suitSigner) noticeSigners() []suit.Signer { return s }

// SignManifest implements ManifestSigner.
func (s suitSigner) SignManifest(ctx context.Context, req ManifestRequest) ([]byte, error) {
	if len(req.VendorID) != 16 || len(req.ClassID) != 16 {
		return nil, fmt.Errorf("%w: server signing needs Config.VendorID and Config.ClassID (16-byte UUIDs)", ErrNoSigner)
	}
	opts := suit.CreateOptions{
		ImageDigest: req.ImageDigest, ImageSize: req.ImageSize, VendorID: req.VendorID, ClassID: req.ClassID,
		Seq: req.Sequence, URIs: req.URIs, ChunkSize: req.ChunkSize, ChunkTableDigest: req.ChunkTableDigest, CodedTableDigest: req.CodedTableDigest,
		SecurityVersion: req.SecurityVersion, Encryption: req.Encryption, Deltas: req.Deltas, Component: req.Component,
	}
	if req.Deadline != 0 {
		opts.UseBefore = time.Unix(req.Deadline, 0)
	}
	return suit.Create(ctx, opts, s...)
}
