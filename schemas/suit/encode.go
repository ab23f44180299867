package suit

import (
	"context"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// NewSeverable makes a severable member holding s: inline in the manifest,
// or severed (the manifest holds its SHA-256 digest and the envelope its
// body, so a device that has installed it can drop it).
func NewSeverable(s Sequence, severed bool) Severable {
	body := marshal(s.encode())
	sv := Severable{Body: body, seq: s}
	if severed {
		sv.Digest = &Digest{Alg: AlgSHA256, Bytes: sha256Sum(body)}
	}
	return sv
}

// encodeSeverable returns the member as the manifest holds it: its digest
// when severed, else its body.
func (s Severable) encode() ([]byte, bool) {
	switch {
	case s.Digest != nil:
		return s.Digest.encode(), true
	case s.Body != nil:
		return s.Body, true
	}
	return nil, false
}

// Encode returns the bstr-wrapped SUIT_Manifest in deterministic CBOR:
// the bytes the authentication wrapper's digest covers. Elements kept raw
// (Extensions, unknown commands and parameters) are copied as decoded, so
// a decoded canonical manifest encodes to the same bytes.
func (m *Manifest) Encode() ([]byte, error) {
	if len(m.Components) == 0 {
		return nil, fmt.Errorf("%w: manifest has no components", ErrParameter)
	}
	common := map[int64][]byte{keyComponents: marshal(componentsValue(m.Components))}
	if m.Shared != nil {
		common[keySharedSequence] = marshal(m.Shared.encode())
	}
	e := map[int64][]byte{
		keyManifestVersion: marshal(uint64(1)),
		keySequenceNumber:  marshal(m.Seq),
		keyCommon:          marshal(encodeIntMap(common)),
	}
	if m.ReferenceURI != "" {
		e[keyReferenceURI] = marshal(m.ReferenceURI)
	}
	for k, s := range map[int64]Sequence{keyValidate: m.Validate, keyLoad: m.Load, keyInvoke: m.Invoke} {
		if s != nil {
			e[k] = marshal(s.encode())
		}
	}
	for k, sv := range map[int64]Severable{keyPayloadFetch: m.PayloadFetch, keyInstall: m.Install, keyText: m.Text} {
		if b, ok := sv.encode(); ok {
			e[k] = b
		}
	}
	for k, v := range m.Extensions {
		if _, clash := e[k]; clash || (k >= 0 && k < 24) {
			return nil, fmt.Errorf("%w: extension key %d", ErrParameter, k)
		}
		e[k] = v
	}
	return marshal(encodeIntMap(e)), nil
}

func componentsValue(cs []ComponentID) [][][]byte {
	out := make([][][]byte, len(cs))
	for i, c := range cs {
		out[i] = [][]byte(c)
		if out[i] == nil {
			out[i] = [][]byte{}
		}
	}
	return out
}

// Seal encodes m and authenticates it with each signer (at least one),
// returning a tagged SUIT envelope that also carries the bodies of m's
// severed members and m.Integrated payloads. Create is Seal for firmcast's
// standard manifest. Seal runs offline; it fails with the signer's error
// (wrapped) when signing fails.
func Seal(ctx context.Context, m *Manifest, signers ...Signer) ([]byte, error) {
	if len(signers) == 0 {
		return nil, fmt.Errorf("%w: no signer", ErrParameter)
	}
	raw, err := m.Encode()
	if err != nil {
		return nil, err
	}
	extra := map[any]any{}
	for k, sv := range map[int64]Severable{keyPayloadFetch: m.PayloadFetch, keyInstall: m.Install, keyText: m.Text} {
		if sv.Digest != nil && sv.Body != nil {
			extra[k] = cbor.RawMessage(sv.Body)
		}
	}
	for k, v := range m.Integrated {
		extra[k] = v
	}
	return seal(ctx, raw, signers, extra)
}
