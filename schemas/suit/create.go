package suit

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
)

// CreateOptions describes the envelope Create builds. Pass it by value.
type CreateOptions struct {
	// Image is read to EOF to compute the image digest, size and chunk
	// table when ImageDigest is empty. Either Image or ImageDigest,
	// ImageSize and ChunkTableDigest must be set.
	Image io.Reader
	// ImageDigest is the SHA-256 of the image (32 bytes), when known.
	ImageDigest []byte
	// ImageSize is the image size in bytes, when ImageDigest is set.
	ImageSize uint64
	// VendorID and ClassID are RFC 4122 UUIDs (16 bytes each). Required.
	VendorID, ClassID []byte
	// Seq is the manifest sequence number (anti-rollback).
	Seq uint64
	// URIs the install sequence fetches from, in order (try-each when
	// several). None: the device uses its default source (the broadcast).
	URIs []string
	// Component names the component; empty means [h'00'].
	Component string
	// ChunkSize is the chunk size of the image's chunk table (default
	// 16384).
	ChunkSize uint32
	// ChunkTableDigest is the SHA-256 of the image's encoded
	// schemas.ChunkTable; computed from Image when empty.
	ChunkTableDigest []byte
	// CodedTableDigest, when set, is the SHA-256 of the image's coded
	// schemas.ChunkTable (ParamFirmcastCodedTable), for devices that
	// speak coded repair; ChunkTableDigest then names the plain table
	// (the same chunk hashes without parity), which the others take.
	CodedTableDigest []byte
	// UseBefore, when non-zero, adds the use-before condition: the
	// manifest is refused after this time.
	UseBefore time.Time
	// SecurityVersion, when non-zero, sets ParamSecurityVersion (at most
	// MaxSecurityVersion): the image's anti-rollback counter. Zero leaves
	// it out, and a device then keeps its anti-rollback floor as it is.
	SecurityVersion uint64
	// Encryption, when set, makes the image an encrypted one
	// (ParamFirmcastEncryption): ImageDigest, ImageSize and
	// ChunkTableDigest (or Image) are then those of the ciphertext.
	Encryption *ImageEncryption
	// Deltas are offered before the full image (see DeltaInfo): a device
	// running one's source takes that delta, any other the full image. A
	// zero ChunkSize is ChunkSize.
	Deltas []DeltaInfo
}

// DefaultChunkSize is the chunk size Create uses when none is given.
const DefaultChunkSize = 16384

// Create builds a SUIT envelope in deterministic CBOR and authenticates it
// with each signer (at least one). The shared sequence sets vendor, class,
// image digest and size, firmcast's chunk parameter and, optionally,
// use-before, then checks vendor and class; install fetches
// the image (try-each over several URIs) and checks its digest and size;
// validate checks it again. With UseBefore, install first checks the
// deadline. Create runs offline. It fails with ErrParameter
// on bad options and with the signer's error (wrapped) if signing fails.
func Create(ctx context.Context, opts CreateOptions, signers ...Signer) ([]byte, error) {
	if len(signers) == 0 {
		return nil, fmt.Errorf("%w: no signer", ErrParameter)
	}
	if len(opts.VendorID) != 16 || len(opts.ClassID) != 16 {
		return nil, fmt.Errorf("%w: vendor-id and class-id must be 16-byte UUIDs", ErrParameter)
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if len(opts.ImageDigest) == 0 {
		if opts.Image == nil {
			return nil, fmt.Errorf("%w: no image and no image digest", ErrParameter)
		}
		d, size, table, err := hashImage(ctx, opts.Image, opts.ChunkSize)
		if err != nil {
			return nil, err
		}
		opts.ImageDigest, opts.ImageSize = d, size
		if len(opts.ChunkTableDigest) == 0 {
			opts.ChunkTableDigest = table
		}
	}
	if len(opts.ImageDigest) != sha256.Size || len(opts.ChunkTableDigest) != sha256.Size {
		return nil, fmt.Errorf("%w: image and chunk-table digests must be SHA-256", ErrParameter)
	}
	if len(opts.CodedTableDigest) != 0 && len(opts.CodedTableDigest) != sha256.Size {
		return nil, fmt.Errorf("%w: the coded chunk-table digest must be SHA-256", ErrParameter)
	}
	if opts.ImageSize == 0 {
		return nil, fmt.Errorf("%w: image is empty", ErrParameter)
	}
	for _, u := range opts.URIs {
		if u == "" {
			return nil, fmt.Errorf("%w: empty URI", ErrParameter)
		}
	}
	if e := opts.Encryption; e != nil && (e.Info == nil || len(e.Info.Recipients) == 0 || len(e.PlaintextDigest) != sha256.Size+8) {
		return nil, fmt.Errorf("%w: encryption needs an encryption info with a recipient and a 40-byte wrapped plaintext digest", ErrParameter)
	}
	for i := range opts.Deltas {
		d := &opts.Deltas[i]
		if d.ChunkSize == 0 {
			d.ChunkSize = opts.ChunkSize
		}
		if err := d.check(); err != nil {
			return nil, err
		}
		if string(d.SourceDigest) == string(opts.ImageDigest) {
			return nil, fmt.Errorf("%w: delta %d is from the image itself", ErrParameter, i)
		}
	}
	if opts.SecurityVersion > MaxSecurityVersion {
		return nil, fmt.Errorf("%w: security version %d over %d", ErrParameter, opts.SecurityVersion, MaxSecurityVersion)
	}
	return seal(ctx, buildManifest(opts), signers, nil)
}

// seal authenticates the bstr-wrapped manifest with each signer and returns
// the tagged envelope.
func seal(ctx context.Context, manifest []byte, signers []Signer, extra map[any]any) ([]byte, error) {
	auth, err := authenticate(ctx, manifest, nil, signers)
	if err != nil {
		return nil, err
	}
	content := map[any]any{
		uint64(keyAuthentication): auth, // bstr .cbor SUIT_Authentication
		uint64(keyManifest):       cbor.RawMessage(manifest),
	}
	for k, v := range extra {
		if i, ok := k.(int64); ok && i >= 0 {
			k = uint64(i)
		}
		content[k] = v
	}
	return marshal(cbor.Tag{Number: EnvelopeTag, Content: content}), nil
}

// authenticate returns the encoded SUIT_Authentication array over payload:
// its SHA-256 digest, then one COSE block per signer over that digest with
// external_aad aad.
func authenticate(ctx context.Context, payload, aad []byte, signers []Signer) ([]byte, error) {
	digestItem := Digest{Alg: AlgSHA256, Bytes: sha256Sum(payload)}.encode()
	auth := []any{digestItem}
	for i, s := range signers {
		alg := s.Algorithm()
		protected := marshal(map[int64]any{1: int64(alg)})
		sig, err := s.Sign(ctx, toBeSigned(alg.isMAC(), protected, aad, digestItem))
		if err != nil {
			return nil, fmt.Errorf("suit: signer %d (%v): %w", i, alg, err)
		}
		var kid []byte
		if k, ok := s.(KeyIDer); ok {
			kid = k.KeyID()
		}
		auth = append(auth, encodeBlock(alg, kid, protected, sig))
	}
	return marshal(auth), nil
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// buildManifest returns the bstr-wrapped manifest (header included).
func buildManifest(o CreateOptions) []byte {
	comp := []byte{0}
	if o.Component != "" {
		comp = []byte(o.Component)
	}
	size := o.ImageSize
	shared := &Params{
		VendorID:    o.VendorID,
		ClassID:     o.ClassID,
		ImageDigest: &Digest{Alg: AlgSHA256, Bytes: o.ImageDigest},
		ImageSize:   &size,
		Firmcast:    &ChunkInfo{ChunkSize: o.ChunkSize, TableDigest: Digest{Alg: AlgSHA256, Bytes: o.ChunkTableDigest}},
	}
	const rep = RecordSuccess | RecordFailure | SysinfoSuccess | SysinfoFailure
	sharedSeq := Sequence{
		{Label: DirOverrideParams, Params: shared, Known: true},
		{Label: CondVendorID, Policy: rep, Known: true},
		{Label: CondClassID, Policy: rep, Known: true},
	}
	if !o.UseBefore.IsZero() {
		ub := uint64(o.UseBefore.Unix())
		shared.UseBefore = &ub
	}
	if o.SecurityVersion != 0 {
		shared.Other = map[int64][]byte{ParamSecurityVersion: marshal(o.SecurityVersion)}
	}
	if o.Encryption != nil {
		if shared.Other == nil {
			shared.Other = map[int64][]byte{}
		}
		shared.Other[ParamFirmcastEncryption] = o.Encryption.Encode()
	}
	if len(o.CodedTableDigest) != 0 {
		if shared.Other == nil {
			shared.Other = map[int64][]byte{}
		}
		shared.Other[ParamFirmcastCodedTable] = Digest{Alg: AlgSHA256, Bytes: o.CodedTableDigest}.encode()
	}
	fetchFrom := func(uri string) Sequence {
		u := uri
		return Sequence{
			{Label: DirOverrideParams, Params: &Params{URI: &u}, Known: true},
			{Label: DirFetch, Policy: RecordFailure, Known: true},
			{Label: CondImageMatch, Policy: rep, Known: true},
		}
	}
	var install Sequence
	switch {
	case len(o.URIs) == 0 && len(o.Deltas) == 0:
		install = Sequence{{Label: DirFetch, Policy: RecordFailure, Known: true}, {Label: CondImageMatch, Policy: rep, Known: true}}
	case len(o.URIs) == 1 && len(o.Deltas) == 0:
		install = fetchFrom(o.URIs[0])
	default:
		// Deltas first (each guarded by its precursor condition), then
		// the full image from each URI (or the default source).
		try := Command{Label: DirTryEach, Known: true}
		for _, d := range o.Deltas {
			try.Try = append(try.Try, deltaBranch(d, rep))
		}
		for _, u := range o.URIs {
			try.Try = append(try.Try, fetchFrom(u))
		}
		if len(o.URIs) == 0 {
			try.Try = append(try.Try, Sequence{{Label: DirFetch, Policy: RecordFailure, Known: true}, {Label: CondImageMatch, Policy: rep, Known: true}})
		}
		install = Sequence{try, {Label: CondImageMatch, Policy: rep, Known: true}}
	}
	if !o.UseBefore.IsZero() {
		// In install, not shared: an expired manifest is not installed, but
		// an installed one still validates and boots.
		install = append(Sequence{{Label: CondUseBefore, Policy: rep, Known: true}}, install...)
	}
	common := marshal(map[int64]any{
		keyComponents:     [][][]byte{{comp}},
		keySharedSequence: sharedSeq.encode(),
	})
	m := marshal(map[int64]any{
		keyManifestVersion: 1,
		keySequenceNumber:  o.Seq,
		keyCommon:          common,
		keyValidate:        Sequence{{Label: CondImageMatch, Policy: rep, Known: true}}.encode(),
		keyInstall:         install.encode(),
	})
	return marshal(m)
}

// hashImage streams the image once through schemas.BuildChunkTable: the
// whole-image SHA-256, its size, and the digest of its chunk table.
func hashImage(ctx context.Context, r io.Reader, chunkSize uint32) (digest []byte, size uint64, table []byte, err error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, nil, err
	}
	t, err := schemas.BuildChunkTable(r, chunkSize)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%w: image: %w", ErrParameter, err)
	}
	td, err := t.Digest()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%w: chunk table: %w", ErrParameter, err)
	}
	return t.Image, t.ImageSize, td[:], nil
}
