package suit

import (
	"fmt"
)

// ComponentID is a SUIT_Component_Identifier: a list of byte strings.
type ComponentID [][]byte

// String renders the identifier as its parts, printable ones as text.
func (c ComponentID) String() string {
	s := "["
	for i, p := range c {
		if i > 0 {
			s += " "
		}
		if printable(p) {
			s += fmt.Sprintf("%q", p)
		} else {
			s += fmt.Sprintf("h'%x'", p)
		}
	}
	return s + "]"
}

func printable(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// Severable is a severable member of the manifest (payload-fetch, install,
// text): either inline, or severed (the manifest holds its digest and the
// envelope may carry its body).
type Severable struct {
	// Digest is set when the member is severed.
	Digest *Digest
	// Body is the bstr-wrapped member (header included): inline, or taken
	// from the envelope after its digest matched. Nil when severed and absent.
	Body []byte

	seq Sequence // Body decoded
}

// Present reports whether the manifest has this member at all.
func (s Severable) Present() bool { return s.Digest != nil || s.Body != nil }

// Manifest is a decoded SUIT_Manifest. Only Verify returns one fit to act
// on; the processor refuses others.
type Manifest struct {
	Version      uint64
	Seq          uint64
	Components   []ComponentID
	Shared       Sequence
	ReferenceURI string
	Validate     Sequence
	Load         Sequence
	Invoke       Sequence
	PayloadFetch Severable
	Install      Severable
	Text         Severable
	// Extensions holds manifest elements (keys 24 and up, or negative)
	// this package does not interpret, raw, so that Encode keeps them.
	// Keys 0 to 23 it does not know are refused as critical.
	Extensions map[int64][]byte

	// Signatures describes the envelope's authentication blocks (set by
	// Verify and by Decode).
	Signatures []SignatureInfo
	// Integrated holds the envelope's integrated payloads by key
	// ("#name" URIs refer to them).
	Integrated map[string][]byte
	// Digest is the manifest digest from the authentication wrapper.
	Digest Digest

	raw      []byte // bstr-wrapped manifest, header included
	verified bool
}

// Verified reports whether Verify produced this manifest.
func (m *Manifest) Verified() bool { return m != nil && m.verified }

// Raw returns the bstr-wrapped manifest bytes the digest covers.
func (m *Manifest) Raw() []byte { return m.raw }

// decodeManifest decodes the bstr-wrapped manifest at item.
func decodeManifest(item []byte) (*Manifest, error) {
	c, err := unwrap(item, "manifest")
	if err != nil {
		return nil, err
	}
	es, err := entries(c, "manifest")
	if err != nil {
		return nil, err
	}
	m := &Manifest{raw: item}
	var haveVersion, haveSeq, haveCommon bool
	for _, e := range es {
		k, ok := asInt(e.k)
		if !ok {
			return nil, fmt.Errorf("%w: manifest: key %s not an int", ErrMalformed, keyString(e.k))
		}
		switch k {
		case keyManifestVersion:
			v, ok := asUint(e.v)
			if !ok || v != 1 {
				return nil, fmt.Errorf("%w: manifest-version %s (want 1)", ErrUnsupported, keyString(e.v))
			}
			m.Version, haveVersion = v, true
		case keySequenceNumber:
			v, ok := asUint(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: manifest-sequence-number not a uint", ErrMalformed)
			}
			m.Seq, haveSeq = v, true
		case keyCommon:
			if err := m.decodeCommon(e.v); err != nil {
				return nil, err
			}
			haveCommon = true
		case keyReferenceURI:
			s, ok := asText(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: reference-uri not a tstr", ErrMalformed)
			}
			m.ReferenceURI = s
		case keyValidate, keyLoad, keyInvoke:
			name := map[int64]string{keyValidate: SeqValidate, keyLoad: SeqLoad, keyInvoke: SeqInvoke}[k]
			s, err := decodeSequenceWrapped(e.v, name, 0)
			if err != nil {
				return nil, err
			}
			switch k {
			case keyValidate:
				m.Validate = s
			case keyLoad:
				m.Load = s
			default:
				m.Invoke = s
			}
		case keyPayloadFetch, keyInstall, keyText:
			name := map[int64]string{keyPayloadFetch: SeqPayloadFetch, keyInstall: SeqInstall, keyText: "text"}[k]
			var sv Severable
			if _, isBstr := asBytes(e.v); isBstr {
				if _, err := unwrap(e.v, name); err != nil {
					return nil, err
				}
				sv.Body = e.v
			} else {
				d, err := decodeDigest(e.v, name+" digest")
				if err != nil {
					return nil, err
				}
				sv.Digest = &d
			}
			switch k {
			case keyPayloadFetch:
				m.PayloadFetch = sv
			case keyInstall:
				m.Install = sv
			default:
				m.Text = sv
			}
		case keyManifestComponent, keyDependencyRes, keyUninstall, keyCoswid:
			// Dependencies and uninstall change what the manifest does:
			// refuse rather than ignore.
			return nil, fmt.Errorf("%w: manifest element %d (trust-domains / update-management extension)", ErrUnsupported, k)
		default:
			if k >= 0 && k < 24 {
				return nil, fmt.Errorf("%w: manifest element %d", ErrUnsupported, k)
			}
			if m.Extensions == nil {
				m.Extensions = map[int64][]byte{}
			}
			m.Extensions[k] = e.v
		}
	}
	switch {
	case !haveVersion:
		return nil, fmt.Errorf("%w: manifest: missing manifest-version", ErrMalformed)
	case !haveSeq:
		return nil, fmt.Errorf("%w: manifest: missing manifest-sequence-number", ErrMalformed)
	case !haveCommon:
		return nil, fmt.Errorf("%w: manifest: missing common", ErrMalformed)
	}
	// Severable members decode when they are present, so a malformed body
	// is reported now rather than when it runs.
	for _, sv := range []struct {
		s    *Severable
		name string
	}{{&m.PayloadFetch, SeqPayloadFetch}, {&m.Install, SeqInstall}} {
		if sv.s.Body != nil {
			if sv.s.seq, err = decodeSequenceWrapped(sv.s.Body, sv.name, 0); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Manifest) decodeCommon(b []byte) error {
	c, err := unwrap(b, "common")
	if err != nil {
		return err
	}
	es, err := entries(c, "common")
	if err != nil {
		return err
	}
	for _, e := range es {
		k, _ := asInt(e.k)
		switch {
		case k == keyComponents && len(e.k) == 1:
			l, err := items(e.v, "components")
			if err != nil {
				return err
			}
			if len(l) == 0 || len(l) > maxComponents {
				return fmt.Errorf("%w: components: want 1 to %d", ErrMalformed, maxComponents)
			}
			for i, ce := range l {
				parts, err := items(ce, fmt.Sprintf("component %d", i))
				if err != nil {
					return err
				}
				id := make(ComponentID, 0, len(parts))
				for _, p := range parts {
					v, ok := asBytes(p)
					if !ok {
						return fmt.Errorf("%w: component %d: part not a bstr", ErrMalformed, i)
					}
					id = append(id, v)
				}
				m.Components = append(m.Components, id)
			}
		case k == keySharedSequence && len(e.k) == 1:
			s, err := decodeSequenceWrapped(e.v, SeqShared, 0)
			if err != nil {
				return err
			}
			m.Shared = s
		case k == keyDependencies && len(e.k) == 1:
			return fmt.Errorf("%w: common: dependencies (trust-domains)", ErrUnsupported)
		default:
			return fmt.Errorf("%w: common: element %s", ErrUnsupported, keyString(e.k))
		}
	}
	if len(m.Components) == 0 {
		return fmt.Errorf("%w: common: no components", ErrMalformed)
	}
	return nil
}

// Sequence returns the decoded command sequence by name (SeqInstall...).
// It returns ErrSeveredMissing for a severed member whose body the envelope
// did not carry, and (nil, nil) for an absent one.
func (m *Manifest) Sequence(name string) (Sequence, error) {
	switch name {
	case SeqShared:
		return m.Shared, nil
	case SeqValidate:
		return m.Validate, nil
	case SeqLoad:
		return m.Load, nil
	case SeqInvoke:
		return m.Invoke, nil
	case SeqPayloadFetch, SeqInstall:
		sv := m.PayloadFetch
		if name == SeqInstall {
			sv = m.Install
		}
		if sv.Body == nil {
			if sv.Digest != nil {
				return nil, fmt.Errorf("%w: %s", ErrSeveredMissing, name)
			}
			return nil, nil
		}
		if sv.seq != nil {
			return sv.seq, nil
		}
		return decodeSequenceWrapped(sv.Body, name, 0)
	}
	return nil, fmt.Errorf("%w: no sequence %q", ErrUnsupported, name)
}

// ParamsFor evaluates the parameters the shared sequence sets for component
// idx (override- and set-parameters, honouring set-component-index and
// try-each's first branch). It runs nothing; it is for inspection.
func (m *Manifest) ParamsFor(idx int) *Params {
	p := &Params{}
	collectParams(m.Shared, idx, p, true)
	return p
}

// collectParams folds the parameter directives of s that apply to idx into p.
func collectParams(s Sequence, idx int, p *Params, selected bool) bool {
	for _, c := range s {
		switch c.Label {
		case DirSetComponentIdx:
			selected = c.Index.All
			for _, i := range c.Index.List {
				if int(i) == idx {
					selected = true
				}
			}
		case DirOverrideParams, DirSetParameters:
			if selected {
				p.merge(c.Params, c.Label == DirSetParameters)
			}
		case DirTryEach:
			if len(c.Try) > 0 {
				collectParams(c.Try[0], idx, p, selected)
			}
		case DirRunSequence:
			selected = collectParams(c.Run, idx, p, selected)
		}
	}
	return selected
}

// Accessors for the fields firmcast's publisher and agent use. They report
// component 0's parameters as set by the shared sequence.

// VendorID returns the vendor identifier (16-byte UUID), or nil.
func (m *Manifest) VendorID() []byte { return m.ParamsFor(0).VendorID }

// ClassID returns the class identifier (16-byte UUID), or nil.
func (m *Manifest) ClassID() []byte { return m.ParamsFor(0).ClassID }

// ImageDigest returns the image digest, if set.
func (m *Manifest) ImageDigest() (Digest, bool) {
	d := m.ParamsFor(0).ImageDigest
	if d == nil {
		return Digest{}, false
	}
	return *d, true
}

// ImageSize returns the image size, if set.
func (m *Manifest) ImageSize() (uint64, bool) {
	s := m.ParamsFor(0).ImageSize
	if s == nil {
		return 0, false
	}
	return *s, true
}

// UseBefore returns the use-before deadline (Unix seconds), if set.
func (m *Manifest) UseBefore() (uint64, bool) {
	s := m.ParamsFor(0).UseBefore
	if s == nil {
		return 0, false
	}
	return *s, true
}

// ChunkInfo returns firmcast's chunk parameter, if set.
func (m *Manifest) ChunkInfo() (ChunkInfo, bool) {
	c := m.ParamsFor(0).Firmcast
	if c == nil {
		return ChunkInfo{}, false
	}
	return *c, true
}

// CodedTableDigest returns the digest of the image's coded chunk table
// (ParamFirmcastCodedTable) and whether the manifest sets one; a value
// that is not a SUIT_Digest is ErrMalformed.
func (m *Manifest) CodedTableDigest() (Digest, bool, error) {
	raw, ok := m.ParamsFor(0).Other[ParamFirmcastCodedTable]
	if !ok {
		return Digest{}, false, nil
	}
	d, err := decodeDigest(raw, ParamName(ParamFirmcastCodedTable))
	if err != nil {
		return Digest{}, false, err
	}
	return d, true, nil
}

// SecurityVersion returns firmcast's security version
// (ParamSecurityVersion) and whether the manifest sets one; a value that
// is not a uint up to MaxSecurityVersion is ErrMalformed.
func (m *Manifest) SecurityVersion() (uint64, bool, error) {
	raw, ok := m.ParamsFor(0).Other[ParamSecurityVersion]
	if !ok {
		return 0, false, nil
	}
	v, ok := asUint(raw)
	if !ok || v > MaxSecurityVersion {
		return 0, false, fmt.Errorf("%w: %s must be a uint up to %d", ErrMalformed, ParamName(ParamSecurityVersion), MaxSecurityVersion)
	}
	return v, true, nil
}

// URIs returns every URI the manifest's sequences set, in order, without
// duplicates (payload-fetch and install first, then the others).
func (m *Manifest) URIs() []string {
	var out []string
	seen := map[string]bool{}
	var walk func(s Sequence)
	walk = func(s Sequence) {
		for _, c := range s {
			if c.Params != nil && c.Params.URI != nil && !seen[*c.Params.URI] {
				seen[*c.Params.URI] = true
				out = append(out, *c.Params.URI)
			}
			for _, t := range c.Try {
				walk(t)
			}
			walk(c.Run)
		}
	}
	for _, name := range []string{SeqPayloadFetch, SeqInstall, SeqShared, SeqValidate, SeqLoad, SeqInvoke} {
		s, _ := m.Sequence(name)
		walk(s)
	}
	return out
}
