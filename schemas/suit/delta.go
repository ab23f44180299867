package suit

import (
	"crypto/sha256"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Delta payloads (firmcast's counterpart of the precursor image digest of
// Pelion's arm-patch-stream manifests). A manifest may offer, besides the
// full image, deltas that each turn one source image into the image it
// signs. Create puts them first in the install sequence's try-each:
//
//	directive-try-each [
//	  [ override-parameters { firmcast-delta: DeltaInfo },
//	    condition-firmcast-precursor, directive-fetch, condition-image-match ],
//	  ...one branch per delta...,
//	  [ directive-fetch, condition-image-match ]  ; the full image
//	]
//
// The precursor condition holds when the component's running image is the
// delta's source (digest and size) and is settled (not a trial image that
// may still be reverted). The Processor does not implement it itself: the
// Target does, through Extension (with a target that does not, the
// update fails with ErrUnsupported; the publisher offers deltas only to
// devices that report their running image's digest). When the
// condition holds, directive-fetch runs with ParamDelta set: the Target
// fetches the delta (its own digest, size and chunk table, signed here),
// applies it to the source and yields the image, which image-match then
// checks against the signed image digest as for any fetch. When the
// condition fails, or the delta fails, the branch ends and the next is
// tried, down to the full image.

// Firmcast's delta labels (SUIT custom labels are negative).
const (
	// ParamDelta is firmcast's delta parameter: bstr .cbor DeltaInfo,
	//
	//	firmcast-delta = {
	//	  1: SUIT_Digest,   ; source (precursor) image digest
	//	  2: uint,          ; source image size
	//	  3: SUIT_Digest,   ; delta digest (SHA-256 of the delta's bytes)
	//	  4: uint,          ; delta size
	//	  5: uint,          ; chunk size of the delta's chunk table
	//	  6: SUIT_Digest,   ; SHA-256 of the delta's chunk table
	//	  ? 7: [+ tstr],    ; URIs the delta can be fetched from
	//	  ? 8: firmcast-encryption, ; an encrypted delta (imageenc.go)
	//	}
	ParamDelta int64 = -270
	// CondPrecursor is condition-firmcast-precursor (a SUIT_Rep_Policy
	// argument): the running image is ParamDelta's source, and settled.
	CondPrecursor int64 = -271
)

func init() {
	commandNames[CondPrecursor] = "condition-firmcast-precursor"
	paramNames[ParamDelta] = "firmcast-delta"
}

// DeltaInfo is the value of ParamDelta: which source the delta applies
// to, and how to fetch and authenticate the delta itself.
type DeltaInfo struct {
	// SourceDigest is the SHA-256 of the source image (32 bytes).
	SourceDigest []byte
	// SourceSize is the source image's size in bytes.
	SourceSize uint64
	// Digest is the SHA-256 of the delta (32 bytes); Size its length.
	Digest []byte
	Size   uint64
	// ChunkSize and ChunkTableDigest describe the delta's own chunk
	// table, as ParamFirmcast does for the image (0: Create's chunk size).
	ChunkSize        uint32
	ChunkTableDigest []byte
	// URIs the delta can be fetched from, besides the device's broker.
	URIs []string
	// Encryption is set for a delta to an encrypted image: the delta is
	// encrypted with its own content key, wrapped with the image's
	// DeltaKEK (ImageEncryption.DeltaCipher); Digest, Size and the chunk
	// table are its ciphertext's.
	Encryption *ImageEncryption
}

// check validates d as Create needs it.
func (d DeltaInfo) check() error {
	if len(d.SourceDigest) != sha256.Size || len(d.Digest) != sha256.Size || len(d.ChunkTableDigest) != sha256.Size {
		return fmt.Errorf("%w: delta: source, delta and chunk-table digests must be SHA-256", ErrParameter)
	}
	if d.SourceSize == 0 || d.Size == 0 || d.ChunkSize == 0 {
		return fmt.Errorf("%w: delta: source size, delta size and chunk size must be set", ErrParameter)
	}
	for _, u := range d.URIs {
		if u == "" {
			return fmt.Errorf("%w: delta: empty URI", ErrParameter)
		}
	}
	return nil
}

// encode returns the bstr-wrapped DeltaInfo (ParamDelta's raw value).
func (d DeltaInfo) encode() []byte {
	m := map[int64]any{
		1: cbor.RawMessage(Digest{Alg: AlgSHA256, Bytes: d.SourceDigest}.encode()),
		2: d.SourceSize,
		3: cbor.RawMessage(Digest{Alg: AlgSHA256, Bytes: d.Digest}.encode()),
		4: d.Size,
		5: uint64(d.ChunkSize),
		6: cbor.RawMessage(Digest{Alg: AlgSHA256, Bytes: d.ChunkTableDigest}.encode()),
	}
	if len(d.URIs) > 0 {
		m[7] = d.URIs
	}
	if d.Encryption != nil {
		m[8] = cbor.RawMessage(d.Encryption.Encode())
	}
	return marshal(marshal(m))
}

// DeltaOf returns the DeltaInfo that p (a component's parameters, as a
// Target sees them in Fetch or Extension.Command) sets, ok=false when it
// sets none, or an error wrapping ErrMalformed (ErrUnsupported for a
// digest other than SHA-256) naming what is wrong.
func DeltaOf(p *Params) (info DeltaInfo, ok bool, err error) {
	raw, ok := p.Other[ParamDelta]
	if !ok {
		return DeltaInfo{}, false, nil
	}
	info, err = decodeDeltaInfo(raw)
	return info, err == nil, err
}

func decodeDeltaInfo(b []byte) (DeltaInfo, error) {
	const what = "firmcast-delta"
	c, err := unwrap(b, what)
	if err != nil {
		return DeltaInfo{}, err
	}
	es, err := entries(c, what)
	if err != nil {
		return DeltaInfo{}, err
	}
	var d DeltaInfo
	var have int
	digest := func(v []byte, name string) ([]byte, error) {
		dg, err := decodeDigest(v, what+": "+name)
		if err != nil {
			return nil, err
		}
		if dg.Alg != AlgSHA256 || len(dg.Bytes) != sha256.Size {
			return nil, fmt.Errorf("%w: %s: %s is not a SHA-256 digest", ErrUnsupported, what, name)
		}
		return dg.Bytes, nil
	}
	size := func(v []byte, name string, lim uint64) (uint64, error) {
		u, ok := asUint(v)
		if !ok || u == 0 || u > lim {
			return 0, fmt.Errorf("%w: %s: %s must be a uint in 1..%d", ErrMalformed, what, name, lim)
		}
		return u, nil
	}
	for _, e := range es {
		k, _ := asInt(e.k)
		var err error
		switch k {
		case 1:
			d.SourceDigest, err = digest(e.v, "source digest")
		case 2:
			d.SourceSize, err = size(e.v, "source size", 1<<40)
		case 3:
			d.Digest, err = digest(e.v, "delta digest")
		case 4:
			d.Size, err = size(e.v, "delta size", 1<<40)
		case 5:
			var u uint64
			u, err = size(e.v, "chunk size", 1<<31)
			d.ChunkSize = uint32(u)
		case 6:
			d.ChunkTableDigest, err = digest(e.v, "chunk-table digest")
		case 7:
			var l [][]byte
			if l, err = items(e.v, what+": uris"); err == nil {
				for _, it := range l {
					s, ok := asText(it)
					if !ok || s == "" {
						return DeltaInfo{}, fmt.Errorf("%w: %s: uri not a non-empty tstr", ErrMalformed, what)
					}
					d.URIs = append(d.URIs, s)
				}
			}
			have |= 1 << 6 // optional
		case 8:
			d.Encryption, err = DecodeImageEncryption(e.v)
			have |= 1 << 7 // optional
		default:
			return DeltaInfo{}, fmt.Errorf("%w: %s: key %s", ErrUnsupported, what, keyString(e.k))
		}
		if err != nil {
			return DeltaInfo{}, err
		}
		have |= 1 << (k - 1)
	}
	if have&0x3f != 0x3f {
		return DeltaInfo{}, fmt.Errorf("%w: %s: want source digest and size, delta digest and size, chunk size and chunk-table digest", ErrMalformed, what)
	}
	return d, nil
}

// Deltas returns the deltas the manifest's install sequence offers, in
// order, for inspection (the publisher, `firmcast manifest show`); a
// malformed one is an error.
func (m *Manifest) Deltas() ([]DeltaInfo, error) {
	s, err := m.Sequence(SeqInstall)
	if err != nil || s == nil {
		return nil, err
	}
	var out []DeltaInfo
	var walk func(s Sequence) error
	walk = func(s Sequence) error {
		for _, c := range s {
			if c.Params != nil {
				if d, ok, err := DeltaOf(c.Params); err != nil {
					return err
				} else if ok {
					out = append(out, d)
				}
			}
			for _, t := range c.Try {
				if err := walk(t); err != nil {
					return err
				}
			}
			if err := walk(c.Run); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(s)
}

// deltaBranch is the install try-each branch of one delta offer.
func deltaBranch(d DeltaInfo, rep uint64) Sequence {
	return Sequence{
		{Label: DirOverrideParams, Params: &Params{Other: map[int64][]byte{ParamDelta: d.encode()}}, Known: true},
		{Label: CondPrecursor, Policy: rep, Known: true},
		{Label: DirFetch, Policy: RecordFailure, Known: true},
		{Label: CondImageMatch, Policy: rep, Known: true},
	}
}
