package suit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
)

// Signer produces one authentication block of an envelope. A key file is
// one implementation (NewKeySigner); an HSM or cloud KMS is another.
type Signer interface {
	// Algorithm is the COSE algorithm of the block. HMAC256 makes a
	// COSE_Mac0, every other algorithm a COSE_Sign1.
	Algorithm() Algorithm
	// Sign returns the COSE signature (ECDSA: r||s, 32 bytes each;
	// Ed25519: 64 bytes; HMAC: the 32-byte tag) of toBeSigned, the RFC 9052
	// Sig_structure / MAC_structure. The signer hashes it as the algorithm
	// requires. It may block (remote KMS) and honours ctx.
	Sign(ctx context.Context, toBeSigned []byte) ([]byte, error)
}

// KeyIDer is implemented by signers that name their key; the key id is
// written in the block's unprotected header (label 4).
type KeyIDer interface{ KeyID() []byte }

// keySigner signs with an in-memory key.
type keySigner struct {
	alg  Algorithm
	key  crypto.Signer
	hmac HMACKey
	rand io.Reader
}

// NewKeySigner returns a Signer for an in-memory private key: an
// *ecdsa.PrivateKey on P-256 signs ES256 (or ESP256 if alg says so), an
// ed25519.PrivateKey signs EdDSA (or Ed25519). alg 0 picks ES256 / EdDSA.
// It fails with ErrKey for any other key or a mismatched alg.
func NewKeySigner(key crypto.Signer, alg Algorithm) (Signer, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key on %s (want P-256)", ErrKey, k.Curve.Params().Name)
		}
		if alg == 0 {
			alg = ES256
		}
		if alg != ES256 && alg != ESP256 {
			return nil, fmt.Errorf("%w: %v with an ECDSA key", ErrKey, alg)
		}
	case ed25519.PrivateKey:
		if alg == 0 {
			alg = EdDSA
		}
		if alg != EdDSA && alg != Ed25519 {
			return nil, fmt.Errorf("%w: %v with an Ed25519 key", ErrKey, alg)
		}
	default:
		return nil, fmt.Errorf("%w: unsupported private key type %T", ErrKey, key)
	}
	return &keySigner{alg: alg, key: key, rand: rand.Reader}, nil
}

// NewHMACSigner returns a Signer making COSE_Mac0 HMAC 256/256 blocks.
func NewHMACSigner(key HMACKey) (Signer, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("%w: HMAC key of %d bytes (want at least 32)", ErrKey, len(key))
	}
	return &keySigner{alg: HMAC256, hmac: key}, nil
}

func (s *keySigner) Algorithm() Algorithm { return s.alg }

func (s *keySigner) Sign(ctx context.Context, tbs []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch k := s.key.(type) {
	case *ecdsa.PrivateKey:
		h := sha256.Sum256(tbs)
		r, ss, err := ecdsa.Sign(s.rand, k, h[:])
		if err != nil {
			return nil, fmt.Errorf("suit: ECDSA sign: %w", err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
		return sig, nil
	case ed25519.PrivateKey:
		return ed25519.Sign(k, tbs), nil
	}
	m := hmac.New(sha256.New, s.hmac)
	m.Write(tbs)
	return m.Sum(nil), nil
}

// ParsePrivateKeyPEM parses a PKCS#8 "PRIVATE KEY" PEM block holding a
// P-256 ECDSA or an Ed25519 key.
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: want a PKCS#8 PEM block \"PRIVATE KEY\"", ErrKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#8: %v", ErrKey, err)
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key not on P-256", ErrKey)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%w: unsupported private key type %T", ErrKey, k)
}

// ParsePublicKeyPEM parses a SubjectPublicKeyInfo "PUBLIC KEY" PEM block
// holding a P-256 ECDSA or an Ed25519 key, ready for TrustAnchors.
func ParsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%w: want a PEM block \"PUBLIC KEY\"", ErrKey)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: SubjectPublicKeyInfo: %v", ErrKey, err)
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key not on P-256", ErrKey)
		}
		return k, nil
	case ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("%w: unsupported public key type %T", ErrKey, k)
}

// MarshalPrivateKeyPEM encodes key as a PKCS#8 PEM block.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes pub as a SubjectPublicKeyInfo PEM block.
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// GenerateKey makes a new signing key: "es256" (ECDSA P-256) or "ed25519".
func GenerateKey(alg string, r io.Reader) (crypto.Signer, error) {
	if r == nil {
		r = rand.Reader
	}
	switch alg {
	case "es256":
		return ecdsa.GenerateKey(elliptic.P256(), r)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(r)
		return k, err
	}
	return nil, fmt.Errorf("%w: algorithm %q (want es256 or ed25519)", ErrKey, alg)
}
