package suit

import (
	"context"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// NoticeAAD is the COSE external_aad of a notice's signature blocks. It
// separates the two things firmcast signs: a block made over a notice never
// verifies over a manifest (whose blocks have an empty external_aad), and
// the reverse, even when one key signs both.
var NoticeAAD = []byte("firmcast update-notice v1")

// SignNotice signs n for the campaign authority: it sets n.Auth to a
// SUIT_Authentication array over n.SignedBytes() (its SHA-256, then one
// COSE block per signer, external_aad NoticeAAD). n must be complete; any
// later change to it voids the signature. It fails with ErrParameter
// without signers and with the signer's error (wrapped) when signing fails.
func SignNotice(ctx context.Context, n *schemas.UpdateNotice, signers ...Signer) error {
	if len(signers) == 0 {
		return fmt.Errorf("%w: no notice signer", ErrParameter)
	}
	if len(signers) > MaxAuthBlocks {
		return fmt.Errorf("%w: %d notice signers (max %d)", ErrParameter, len(signers), MaxAuthBlocks)
	}
	b, err := n.SignedBytes()
	if err != nil {
		return err
	}
	auth, err := authenticate(ctx, b, NoticeAAD, signers)
	if err != nil {
		return err
	}
	n.Auth = auth
	return nil
}

// VerifyNotice authenticates a decoded notice: n.Auth must be a
// well-formed SUIT_Authentication array whose digest is the SHA-256 of
// n.SignedBytes() (else ErrDigestMismatch: some field was changed after
// signing) and hold at least one block that one of anchors verifies with
// external_aad NoticeAAD (else ErrUntrusted). Shape errors wrap
// ErrMalformed, ErrTruncated or ErrTooLarge. It checks the signature only:
// whether the notice is for this device (Target, ClassTarget) is the
// caller's to check. Safe for concurrent use.
func VerifyNotice(n *schemas.UpdateNotice, anchors TrustAnchors) ([]SignatureInfo, error) {
	if len(n.Auth) == 0 {
		return nil, fmt.Errorf("%w: notice is not signed", ErrMalformed)
	}
	if err := wellformed(n.Auth, "notice authentication"); err != nil {
		return nil, err
	}
	aw, err := parseAuthentication(n.Auth)
	if err != nil {
		return nil, fmt.Errorf("notice: %w", err)
	}
	b, err := n.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	ok, err := aw.digest.matches(b)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: the notice does not match the digest its signature covers", ErrDigestMismatch)
	}
	sigs, trusted := aw.authenticate(NoticeAAD, anchors)
	if !trusted {
		return sigs, fmt.Errorf("%w: notice: %d block(s), %d anchor(s)", ErrUntrusted, len(aw.blocks), len(anchors))
	}
	return sigs, nil
}
