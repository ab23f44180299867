package suit

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"strconv"
)

// EnvelopeTag is the CBOR tag of SUIT_Envelope_Tagged.
const EnvelopeTag = 107

// parsedEnvelope is a SUIT_Envelope split into its parts, before anything inside
// the manifest is trusted.
type parsedEnvelope struct {
	// Digest is the manifest digest from the authentication wrapper.
	Digest Digest
	// Blocks are the authentication blocks in order.
	Blocks []*coseBlock
	// digestItem is the encoded SUIT_Digest (the detached COSE payload).
	digestItem []byte
	// Manifest is the bstr-wrapped manifest, header included.
	Manifest []byte
	// Severed maps envelope keys (16 payload-fetch, 20 install, 23 text) to
	// the bstr-wrapped members, header included.
	Severed map[int64][]byte
	// Integrated holds integrated payloads by key (text keys as is,
	// integer keys in decimal).
	Integrated map[string][]byte
}

// parseEnvelope checks the envelope's shape: tag, keys, types and limits.
// It decodes nothing inside the manifest.
func parseEnvelope(b []byte) (*parsedEnvelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes (max %d)", ErrTooLarge, len(b), MaxEnvelopeSize)
	}
	if err := wellformed(b, "envelope"); err != nil {
		return nil, err
	}
	body := b
	if tag, c, ok := asTag(b); ok {
		if tag != EnvelopeTag {
			return nil, fmt.Errorf("%w: envelope: tag %d (want %d)", ErrMalformed, tag, EnvelopeTag)
		}
		body = c
	}
	es, err := entries(body, "envelope")
	if err != nil {
		return nil, err
	}
	env := &parsedEnvelope{}
	var auth []byte
	for _, e := range es {
		if s, ok := asText(e.k); ok {
			v, ok := asBytes(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: integrated payload %q not a bstr", ErrMalformed, s)
			}
			if env.Integrated == nil {
				env.Integrated = map[string][]byte{}
			}
			env.Integrated[s] = v
			continue
		}
		k, ok := asInt(e.k)
		if !ok {
			return nil, fmt.Errorf("%w: envelope key %s", ErrMalformed, keyString(e.k))
		}
		switch k {
		case keyAuthentication:
			auth = e.v
		case keyManifest:
			if _, ok := asBytes(e.v); !ok {
				return nil, fmt.Errorf("%w: manifest not a bstr", ErrMalformed)
			}
			env.Manifest = e.v
		case keyPayloadFetch, keyInstall, keyText:
			if _, ok := asBytes(e.v); !ok {
				return nil, fmt.Errorf("%w: severed member %d not a bstr", ErrMalformed, k)
			}
			if env.Severed == nil {
				env.Severed = map[int64][]byte{}
			}
			env.Severed[k] = e.v
		case keyDelegation:
			return nil, fmt.Errorf("%w: envelope element delegation (trust-domains)", ErrUnsupported)
		default:
			if k >= 0 && k < 24 {
				return nil, fmt.Errorf("%w: envelope element %d", ErrUnsupported, k)
			}
			v, ok := asBytes(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: integrated payload %d not a bstr", ErrMalformed, k)
			}
			if env.Integrated == nil {
				env.Integrated = map[string][]byte{}
			}
			env.Integrated[strconv.FormatInt(k, 10)] = v
		}
	}
	if auth == nil {
		return nil, fmt.Errorf("%w: envelope: missing authentication-wrapper", ErrMalformed)
	}
	if env.Manifest == nil {
		return nil, fmt.Errorf("%w: envelope: missing manifest", ErrMalformed)
	}
	c, err := unwrap(auth, "authentication-wrapper")
	if err != nil {
		return nil, err
	}
	aw, err := parseAuthentication(c)
	if err != nil {
		return nil, err
	}
	env.Digest, env.digestItem, env.Blocks = aw.digest, aw.digestItem, aw.blocks
	return env, nil
}

// authWrapper is a decoded SUIT_Authentication: the digest of the payload
// and the COSE blocks over it.
type authWrapper struct {
	digest     Digest
	digestItem []byte // the encoded SUIT_Digest (the detached COSE payload)
	blocks     []*coseBlock
}

// parseAuthentication decodes a SUIT_Authentication array (the content of
// the bstr that wraps it): [bstr .cbor SUIT_Digest, 1*MaxAuthBlocks bstr
// .cbor COSE_Sign1_Tagged / COSE_Mac0_Tagged].
func parseAuthentication(c []byte) (*authWrapper, error) {
	it, err := items(c, "authentication-wrapper")
	if err != nil {
		return nil, err
	}
	if len(it) < 2 {
		return nil, fmt.Errorf("%w: authentication-wrapper: want a digest and at least one block", ErrMalformed)
	}
	if len(it)-1 > MaxAuthBlocks {
		return nil, fmt.Errorf("%w: authentication-wrapper: %d blocks (max %d)", ErrTooLarge, len(it)-1, MaxAuthBlocks)
	}
	aw := &authWrapper{}
	aw.digestItem, err = unwrap(it[0], "authentication-wrapper digest")
	if err != nil {
		return nil, err
	}
	if aw.digest, err = decodeDigest(aw.digestItem, "authentication-wrapper digest"); err != nil {
		return nil, err
	}
	for i, bi := range it[1:] {
		blk, err := decodeBlock(bi, fmt.Sprintf("authentication block %d", i))
		if err != nil {
			return nil, err
		}
		aw.blocks = append(aw.blocks, blk)
	}
	return aw, nil
}

// newHash returns the hash of a SUIT digest algorithm.
func newHash(alg int64) (hash.Hash, error) {
	switch alg {
	case AlgSHA256:
		return sha256.New(), nil
	case AlgSHA384:
		return sha512.New384(), nil
	case AlgSHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("%w: digest algorithm %d", ErrUnsupported, alg)
}

// matches reports whether d is the digest of data.
func (d Digest) matches(data []byte) (bool, error) {
	if d.Alg == AlgSHA256 {
		sum := sha256.Sum256(data)
		return bytes.Equal(sum[:], d.Bytes), nil
	}
	h, err := newHash(d.Alg)
	if err != nil {
		return false, err
	}
	h.Write(data)
	return bytes.Equal(h.Sum(nil), d.Bytes), nil
}

// TrustAnchors are the keys a device trusts to sign manifests. Each entry
// is an *ecdsa.PublicKey on P-256 (ES256, ESP256), an ed25519.PublicKey
// (EdDSA, Ed25519) or an HMACKey (COSE_Mac0). Several may be configured so
// an update can rotate them.
type TrustAnchors []any

// HMACKey is a shared secret for COSE_Mac0 HMAC 256/256.
type HMACKey []byte

// Verify authenticates a SUIT envelope and returns its manifest.
//
// Order: (1) envelope shape; (2) the digest of the bstr-wrapped manifest
// against the authentication wrapper (ErrDigestMismatch); (3) at least one
// authentication block verified by one of anchors (ErrUntrusted); (4) the
// manifest itself; (5) each severable member present in the envelope
// against the digest the manifest holds for it (ErrSeveredDigest).
// Errors wrap the sentinels of errors.go. Safe for concurrent use.
func Verify(envelope []byte, anchors TrustAnchors) (*Manifest, error) {
	env, err := parseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	ok, err := env.Digest.matches(env.Manifest)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: authentication-wrapper digest does not match the manifest", ErrDigestMismatch)
	}
	aw := authWrapper{digest: env.Digest, digestItem: env.digestItem, blocks: env.Blocks}
	sigs, trusted := aw.authenticate(nil, anchors)
	if !trusted {
		return nil, fmt.Errorf("%w: %d block(s), %d anchor(s)", ErrUntrusted, len(env.Blocks), len(anchors))
	}
	m, err := env.manifest()
	if err != nil {
		return nil, err
	}
	m.Signatures = sigs
	m.verified = true
	return m, nil
}

// authenticate checks every block against every anchor, over the
// Sig_structure with external_aad aad.
func (aw *authWrapper) authenticate(aad []byte, anchors TrustAnchors) ([]SignatureInfo, bool) {
	sigs := make([]SignatureInfo, len(aw.blocks))
	trusted := false
	for i, blk := range aw.blocks {
		sigs[i] = SignatureInfo{Alg: blk.alg, KeyID: blk.kid, Anchor: -1}
		tbs := toBeSigned(blk.mac, blk.protected, aad, aw.digestItem)
		for j, a := range anchors {
			if verifyBlock(blk, tbs, a) {
				sigs[i].Verified, sigs[i].Anchor = true, j
				trusted = true
				break
			}
		}
	}
	return sigs, trusted
}

// manifest decodes the manifest and binds the envelope's severed members.
func (env *parsedEnvelope) manifest() (*Manifest, error) {
	m, err := decodeManifest(env.Manifest)
	if err != nil {
		return nil, err
	}
	m.Digest = env.Digest
	m.Integrated = env.Integrated
	for _, k := range []int64{keyPayloadFetch, keyInstall, keyText} {
		body, ok := env.Severed[k]
		if !ok {
			continue
		}
		sv := map[int64]*Severable{keyPayloadFetch: &m.PayloadFetch, keyInstall: &m.Install, keyText: &m.Text}[k]
		name := map[int64]string{keyPayloadFetch: SeqPayloadFetch, keyInstall: SeqInstall, keyText: "text"}[k]
		if sv.Digest == nil {
			return nil, fmt.Errorf("%w: envelope carries %s but the manifest holds no digest for it", ErrMalformed, name)
		}
		ok, err := sv.Digest.matches(body)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrSeveredDigest, name)
		}
		if k != keyText {
			if sv.seq, err = decodeSequenceWrapped(body, name, 0); err != nil {
				return nil, err
			}
		} else if _, err := unwrap(body, name); err != nil {
			return nil, err
		}
		sv.Body = body
	}
	return m, nil
}

// Decode splits and decodes an envelope WITHOUT authenticating it, for
// display (`firmcast manifest inspect` without a key). The returned
// manifest is not Verified and a Processor refuses it.
func Decode(envelope []byte) (*Manifest, error) {
	env, err := parseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	m, err := env.manifest()
	if err != nil {
		return nil, err
	}
	for _, blk := range env.Blocks {
		m.Signatures = append(m.Signatures, SignatureInfo{Alg: blk.alg, KeyID: blk.kid, Anchor: -1})
	}
	return m, nil
}
