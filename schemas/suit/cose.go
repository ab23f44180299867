package suit

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"
)

// Algorithm is a COSE algorithm identifier.
type Algorithm int64

// COSE algorithms an authentication block may use.
const (
	// ES256: ECDSA P-256 with SHA-256 (RFC 9053).
	ES256 Algorithm = -7
	// EdDSA: EdDSA; only Ed25519 keys are accepted (RFC 9053).
	EdDSA Algorithm = -8
	// ESP256: ECDSA P-256 with SHA-256, fully specified (RFC 9864).
	ESP256 Algorithm = -9
	// Ed25519: Ed25519, fully specified (RFC 9864).
	Ed25519 Algorithm = -19
	// HMAC256: HMAC with SHA-256, 256-bit tag (COSE_Mac0).
	HMAC256 Algorithm = 5
)

func (a Algorithm) String() string {
	switch a {
	case ES256:
		return "ES256"
	case EdDSA:
		return "EdDSA"
	case ESP256:
		return "ESP256"
	case Ed25519:
		return "Ed25519"
	case HMAC256:
		return "HMAC-256/256"
	}
	return fmt.Sprintf("alg(%d)", int64(a))
}

// isMAC reports whether a uses COSE_Mac0 rather than COSE_Sign1.
func (a Algorithm) isMAC() bool { return a == HMAC256 }

// COSE tags.
const (
	tagSign1 = 18
	tagMac0  = 17
)

// SignatureInfo describes one authentication block.
type SignatureInfo struct {
	Alg   Algorithm
	KeyID []byte
	// Verified is true when a trust anchor verified this block.
	Verified bool
	// Anchor is the index of that trust anchor (-1 if none).
	Anchor int
}

// coseBlock is a decoded COSE_Sign1 or COSE_Mac0.
type coseBlock struct {
	mac       bool
	alg       Algorithm
	kid       []byte
	protected []byte // bstr content as received
	sig       []byte
}

// decodeBlock decodes a bstr-wrapped COSE_Sign1_Tagged / COSE_Mac0_Tagged.
func decodeBlock(b []byte, what string) (*coseBlock, error) {
	c, err := unwrap(b, what)
	if err != nil {
		return nil, err
	}
	tag, content, ok := asTag(c)
	if !ok || (tag != tagSign1 && tag != tagMac0) {
		return nil, fmt.Errorf("%w: %s: want COSE_Sign1_Tagged or COSE_Mac0_Tagged", ErrUnsupported, what)
	}
	it, err := items(content, what)
	if err != nil {
		return nil, err
	}
	if len(it) != 4 {
		return nil, fmt.Errorf("%w: %s: want 4 elements", ErrMalformed, what)
	}
	blk := &coseBlock{mac: tag == tagMac0}
	prot, ok := asBytes(it[0])
	if !ok {
		return nil, fmt.Errorf("%w: %s: protected header not a bstr", ErrMalformed, what)
	}
	blk.protected = prot
	haveAlg := false
	if len(prot) > 0 {
		if err := wellformed(prot, what+": protected header"); err != nil {
			return nil, err
		}
		hs, err := entries(prot, what+": protected header")
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			k, ok := asInt(h.k)
			switch {
			case ok && k == 1:
				a, ok := asInt(h.v)
				if !ok {
					return nil, fmt.Errorf("%w: %s: alg not an int", ErrMalformed, what)
				}
				blk.alg, haveAlg = Algorithm(a), true
			case ok && k == 2:
				return nil, fmt.Errorf("%w: %s: crit header parameters", ErrUnsupported, what)
			case ok && k == 4:
				blk.kid, _ = asBytes(h.v)
			}
		}
	}
	if !haveAlg {
		return nil, fmt.Errorf("%w: %s: no alg in protected header", ErrMalformed, what)
	}
	hs, err := entries(it[1], what+": unprotected header")
	if err != nil {
		return nil, err
	}
	for _, h := range hs {
		if k, ok := asInt(h.k); ok && k == 4 && blk.kid == nil {
			blk.kid, _ = asBytes(h.v)
		}
		if k, ok := asInt(h.k); ok && (k == 1 || k == 2) {
			return nil, fmt.Errorf("%w: %s: alg or crit in unprotected header", ErrMalformed, what)
		}
	}
	if !isNull(it[2]) {
		return nil, fmt.Errorf("%w: %s: payload must be detached (null)", ErrMalformed, what)
	}
	blk.sig, ok = asBytes(it[3])
	if !ok {
		return nil, fmt.Errorf("%w: %s: signature not a bstr", ErrMalformed, what)
	}
	switch blk.alg {
	case ES256, ESP256, EdDSA, Ed25519:
		if blk.mac {
			return nil, fmt.Errorf("%w: %s: %v in COSE_Mac0", ErrMalformed, what, blk.alg)
		}
	case HMAC256:
		if !blk.mac {
			return nil, fmt.Errorf("%w: %s: %v in COSE_Sign1", ErrMalformed, what, blk.alg)
		}
	default:
		return nil, fmt.Errorf("%w: %s: algorithm %v", ErrUnsupported, what, blk.alg)
	}
	return blk, nil
}

// toBeSigned builds the Sig_structure / MAC_structure of RFC 9052 over the
// detached payload, with external_aad aad (nil: empty, as for manifests).
func toBeSigned(mac bool, protected, aad, payload []byte) []byte {
	ctx := "Signature1"
	if mac {
		ctx = "MAC0"
	}
	if aad == nil {
		aad = []byte{}
	}
	return marshal([]any{ctx, protected, aad, payload})
}

// verifyBlock checks blk over payload with key; false when the key does not
// fit the algorithm or the signature does not verify.
func verifyBlock(blk *coseBlock, tbs []byte, key any) bool {
	switch blk.alg {
	case ES256, ESP256:
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() || len(blk.sig) != 64 {
			return false
		}
		h := sha256.Sum256(tbs)
		r := new(big.Int).SetBytes(blk.sig[:32])
		s := new(big.Int).SetBytes(blk.sig[32:])
		return ecdsa.Verify(pub, h[:], r, s)
	case EdDSA, Ed25519:
		pub, ok := key.(ed25519.PublicKey)
		if !ok || len(pub) != ed25519.PublicKeySize {
			return false
		}
		return ed25519.Verify(pub, tbs, blk.sig)
	case HMAC256:
		k, ok := key.(HMACKey)
		if !ok || len(k) == 0 {
			return false
		}
		mac := hmac.New(sha256.New, k)
		mac.Write(tbs)
		return hmac.Equal(mac.Sum(nil), blk.sig)
	}
	return false
}

// encodeBlock builds a COSE_Sign1_Tagged or COSE_Mac0_Tagged.
func encodeBlock(alg Algorithm, kid, protected, sig []byte) []byte {
	unprot := map[int64]any{}
	if len(kid) > 0 {
		unprot[4] = kid
	}
	tag := uint64(tagSign1)
	if alg.isMAC() {
		tag = tagMac0
	}
	return marshal(cbor.Tag{Number: tag, Content: []any{protected, unprot, nil, sig}})
}
