package suit

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"os"
)

// BootVerifier is the secure-boot verifier of a bootloader: it
// authenticates the SUIT envelope stored next to an image and returns what
// the envelope signs for component 0, so the bootloader can compare it with
// the image's header and hash. It satisfies bootctl.EnvelopeVerifier
// (bootctl does not import this package; the binary plugs one into the
// other).
//
// BootVerifier checks authenticity only (Verify: shape, manifest digest, a
// signature by one of Trust). It does not run the manifest's sequences and
// does not check use-before: a bootloader has no trusted clock, and an
// image already installed must keep booting after its manifest's install
// deadline. Anti-rollback at boot is bootctl's (the security-counter floor).
//
// The zero value trusts no key and refuses every envelope (ErrUntrusted).
// Safe for concurrent use.
type BootVerifier struct {
	// Trust holds the keys whose signatures the bootloader accepts.
	Trust TrustAnchors
}

// VerifyEnvelope authenticates envelope and returns its manifest's sequence
// number and component 0's SHA-256 image digest and image size.
//
// Errors wrap the sentinels of Verify (ErrMalformed, ErrTruncated,
// ErrDigestMismatch, ErrUntrusted, ...), or ErrParameter when the manifest
// does not set an image digest or size for component 0, or ErrUnsupported
// when that digest is not SHA-256.
func (v BootVerifier) VerifyEnvelope(envelope []byte) (seq uint64, digest [32]byte, size uint64, err error) {
	m, err := Verify(envelope, v.Trust)
	if err != nil {
		return 0, digest, 0, err
	}
	d, ok := m.ImageDigest()
	if !ok {
		return 0, digest, 0, fmt.Errorf("%w: manifest sets no image digest for component 0", ErrParameter)
	}
	if d.Alg != AlgSHA256 || len(d.Bytes) != len(digest) {
		return 0, digest, 0, fmt.Errorf("%w: image digest algorithm %d with %d bytes (the bootloader checks SHA-256)",
			ErrUnsupported, d.Alg, len(d.Bytes))
	}
	size, ok = m.ImageSize()
	if !ok {
		return 0, digest, 0, fmt.Errorf("%w: manifest sets no image size for component 0", ErrParameter)
	}
	copy(digest[:], d.Bytes)
	return m.Seq, digest, size, nil
}

// ReadTrustFiles reads every public key of every PEM file in paths (a file
// may hold several, as after a key rotation) with ParseTrustPEM. Errors
// name the file; a bad file's error wraps ErrKey.
func ReadTrustFiles(paths ...string) (TrustAnchors, error) {
	var anchors TrustAnchors
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		ks, err := ParseTrustPEM(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		anchors = append(anchors, ks...)
	}
	return anchors, nil
}

// maxBootKeys bounds the number of PEM blocks ParseTrustPEM reads.
const maxBootKeys = 16

// ParseTrustPEM parses one or more SubjectPublicKeyInfo "PUBLIC KEY" PEM
// blocks (concatenated, as in a file holding the current and the next
// anchor) into TrustAnchors. Errors wrap ErrKey, naming the block.
func ParseTrustPEM(b []byte) (TrustAnchors, error) {
	var anchors TrustAnchors
	rest := b
	for i := 0; ; i++ {
		blk, r := pem.Decode(rest)
		if blk == nil {
			break
		}
		if i == maxBootKeys {
			return nil, fmt.Errorf("%w: more than %d PEM blocks", ErrKey, maxBootKeys)
		}
		k, err := ParsePublicKeyPEM(pem.EncodeToMemory(blk))
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		anchors = append(anchors, k)
		rest = r
	}
	if len(anchors) == 0 {
		return nil, fmt.Errorf("%w: no PEM block \"PUBLIC KEY\"", ErrKey)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last PEM block", ErrKey, len(bytes.TrimSpace(rest)))
	}
	return anchors, nil
}
