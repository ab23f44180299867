package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas/suit"
)

func newManifestCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "manifest",
		Short: "Create and inspect signed SUIT manifests",
	}
	c.AddCommand(newManifestCreateCmd(), newManifestInspectCmd())
	return c
}

type createFlags struct {
	image, vendor, class, component, out, useBefore, coseAlg string
	seq, securityVersion                                     uint64
	uris, keys, deltaFrom                                    []string
	chunkSize                                                uint32
}

func newManifestCreateCmd() *cobra.Command {
	f := &createFlags{}
	c := &cobra.Command{
		Use:   "create --image FILE --vendor-id UUID --class-id UUID --seq N --key NAME.pem --out FILE.suit",
		Short: "Write a signed SUIT envelope for an image (offline)",
		Long: `Write a signed SUIT envelope (draft-ietf-suit-manifest-34, deterministic
CBOR) for an image. Its install sequence fetches the image from the --uri
sources (try-each when several; none: the device's default source) and
checks its digest and size. It also records the chunk size and the SHA-256
of the image's chunk table, so a device authenticates every chunk.

Runs offline: sign on an air-gapped machine, then upload the envelope.
Each --key adds one signature (ES256 for P-256 keys, EdDSA for Ed25519,
or the fully specified ESP256 / Ed25519 with --cose-alg).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := runManifestCreate(cmd, f); err != nil {
				return fmt.Errorf("manifest create: %w", err)
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.image, "image", "", "firmware image file (required)")
	fl.StringVar(&f.vendor, "vendor-id", "", "vendor UUID (required)")
	fl.StringVar(&f.class, "class-id", "", "device class UUID (required)")
	fl.Uint64Var(&f.seq, "seq", 0, "manifest sequence number (required; devices refuse lower ones)")
	fl.StringArrayVar(&f.uris, "uri", nil, "image URI (repeatable, tried in order)")
	fl.StringVar(&f.component, "component", "", "component name (default: the single component [h'00'])")
	fl.StringArrayVar(&f.keys, "key", nil, "PKCS#8 private key file (required, repeatable)")
	fl.StringVar(&f.out, "out", "", "output envelope file (required)")
	fl.Uint32Var(&f.chunkSize, "chunk-size", suit.DefaultChunkSize, "chunk size of the image's chunk table, bytes")
	fl.StringVar(&f.coseAlg, "cose-alg", "", "COSE algorithm: es256 or esp256 for P-256 keys, eddsa or ed25519 for Ed25519 keys (default es256 / eddsa)")
	fl.StringVar(&f.useBefore, "use-before", "", "refuse installation after this time (RFC 3339, or a duration from now such as 720h)")
	fl.StringArrayVar(&f.deltaFrom, "delta-from", nil, "also offer a delta from this source image file (repeatable): it is written to OUT.delta-<source digest>.bin, to upload with firmcast image upload; devices running the source take it, the others the full image")
	fl.Uint64Var(&f.securityVersion, "security-version", 0, fmt.Sprintf("anti-rollback security version (1..%d), the bootloader's counter: raise it on purpose when older versions must never run again (default: none, devices keep their floor)", suit.MaxSecurityVersion))
	return c
}

func runManifestCreate(cmd *cobra.Command, f *createFlags) error {
	switch {
	case f.image == "":
		return errors.New("--image is required")
	case !cmd.Flags().Changed("seq"):
		return errors.New("--seq is required")
	case len(f.keys) == 0:
		return errors.New("--key is required")
	case f.out == "":
		return errors.New("--out is required")
	}
	vendor, err := parseUUID(f.vendor)
	if err != nil {
		return fmt.Errorf("--vendor-id: %w", err)
	}
	class, err := parseUUID(f.class)
	if err != nil {
		return fmt.Errorf("--class-id: %w", err)
	}
	var useBefore time.Time
	if f.useBefore != "" {
		if d, derr := time.ParseDuration(f.useBefore); derr == nil {
			useBefore = time.Now().Add(d)
		} else if useBefore, err = time.Parse(time.RFC3339, f.useBefore); err != nil {
			return fmt.Errorf("--use-before %q: want RFC 3339 time or a duration", f.useBefore)
		}
	}
	alg, ok := map[string]suit.Algorithm{"": 0, "es256": suit.ES256, "esp256": suit.ESP256, "eddsa": suit.EdDSA, "ed25519": suit.Ed25519}[strings.ToLower(f.coseAlg)]
	if !ok {
		return fmt.Errorf("--cose-alg %q: want es256, esp256, eddsa or ed25519", f.coseAlg)
	}
	var signers []suit.Signer
	for _, k := range f.keys {
		b, err := os.ReadFile(k)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		key, err := suit.ParsePrivateKeyPEM(b)
		if err != nil {
			return fmt.Errorf("--key %s: %w", k, err)
		}
		s, err := suit.NewKeySigner(key, alg)
		if err != nil {
			return fmt.Errorf("--key %s: %w", k, err)
		}
		signers = append(signers, s)
	}
	img, err := os.Open(f.image)
	if err != nil {
		return fmt.Errorf("--image: %w", err)
	}
	defer img.Close()
	deltas, err := manifestDeltas(cmd, f)
	if err != nil {
		return err
	}
	env, err := suit.Create(cmd.Context(), suit.CreateOptions{
		Image: img, VendorID: vendor, ClassID: class, Seq: f.seq, URIs: f.uris,
		Component: f.component, ChunkSize: f.chunkSize, UseBefore: useBefore, SecurityVersion: f.securityVersion,
		Deltas: deltas,
	}, signers...)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(f.out, env, 0o644); err != nil {
		return err
	}
	sv := ""
	if f.securityVersion != 0 {
		sv = fmt.Sprintf(", security version %d", f.securityVersion)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%d bytes, sequence number %d%s, %d signature(s))\n", f.out, len(env), f.seq, sv, len(signers))
	return nil
}

// parseUUID accepts the canonical 8-4-4-4-12 form or 32 hex digits.
func parseUUID(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("required")
	}
	h := strings.ReplaceAll(s, "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 || (strings.Contains(s, "-") && len(s) != 36) {
		return nil, fmt.Errorf("%q is not a UUID", s)
	}
	return b, nil
}

func formatUUID(b []byte) string {
	if len(b) != 16 {
		return hex.EncodeToString(b)
	}
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// inspectJSON is the --json output of manifest inspect.
type inspectJSON struct {
	SequenceNumber   uint64          `json:"sequence_number"`
	SecurityVersion  *uint64         `json:"security_version,omitempty"`
	Components       []string        `json:"components"`
	VendorID         string          `json:"vendor_id,omitempty"`
	ClassID          string          `json:"class_id,omitempty"`
	ImageDigest      string          `json:"image_digest,omitempty"`
	ImageDigestAlg   int64           `json:"image_digest_alg,omitempty"`
	ImageSize        *uint64         `json:"image_size,omitempty"`
	URIs             []string        `json:"uris"`
	ChunkSize        uint32          `json:"chunk_size,omitempty"`
	ChunkTableDigest string          `json:"chunk_table_digest,omitempty"`
	UseBefore        string          `json:"use_before,omitempty"`
	ReferenceURI     string          `json:"reference_uri,omitempty"`
	Description      string          `json:"description,omitempty"`
	ManifestDigest   string          `json:"manifest_digest"`
	Sequences        map[string]int  `json:"sequences"`
	Signatures       []signatureJSON `json:"signatures"`
	Verified         bool            `json:"verified"`
}

type signatureJSON struct {
	Alg      string `json:"alg"`
	KeyID    string `json:"key_id,omitempty"`
	Verified bool   `json:"verified"`
	Key      string `json:"key,omitempty"`
}

func newManifestInspectCmd() *cobra.Command {
	var keys []string
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect FILE.suit [--key PUB.pem ...] [--json]",
		Short: "Print a SUIT envelope; verify it with --key",
		Long: `Print a SUIT envelope in readable form, or as JSON with --json. With one
or more --key public keys (SubjectPublicKeyInfo PEM), the envelope is
verified the way a device verifies it, and the command fails if it does not
verify. Without --key nothing is verified and "verified" is false.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := runManifestInspect(cmd, args[0], keys, asJSON); err != nil {
				return fmt.Errorf("manifest inspect %s: %w", args[0], err)
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&keys, "key", nil, "trusted public key file (repeatable); verify the envelope")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func runManifestInspect(cmd *cobra.Command, path string, keys []string, asJSON bool) error {
	env, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	anchors, err := readTrustFiles("key", keys)
	if err != nil {
		return err
	}
	var m *suit.Manifest
	if len(keys) > 0 {
		m, err = suit.Verify(env, anchors)
		if err != nil {
			return fmt.Errorf("verification failed: %w", err)
		}
	} else if m, err = suit.Decode(env); err != nil {
		return fmt.Errorf("decoding failed: %w", err)
	}
	out := describe(m, keys)
	if asJSON {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printInspect(cmd.OutOrStdout(), path, out)
	return nil
}

func describe(m *suit.Manifest, keys []string) inspectJSON {
	out := inspectJSON{
		SequenceNumber: m.Seq,
		URIs:           m.URIs(),
		ReferenceURI:   m.ReferenceURI,
		ManifestDigest: hex.EncodeToString(m.Digest.Bytes),
		Sequences:      map[string]int{},
		Verified:       m.Verified(),
	}
	if out.URIs == nil {
		out.URIs = []string{}
	}
	for _, c := range m.Components {
		out.Components = append(out.Components, c.String())
	}
	if v := m.VendorID(); v != nil {
		out.VendorID = formatUUID(v)
	}
	if v := m.ClassID(); v != nil {
		out.ClassID = formatUUID(v)
	}
	if d, ok := m.ImageDigest(); ok {
		out.ImageDigest, out.ImageDigestAlg = hex.EncodeToString(d.Bytes), d.Alg
	}
	if s, ok := m.ImageSize(); ok {
		out.ImageSize = &s
	}
	if sv, ok, err := m.SecurityVersion(); err == nil && ok {
		out.SecurityVersion = &sv
	}
	if ci, ok := m.ChunkInfo(); ok {
		out.ChunkSize, out.ChunkTableDigest = ci.ChunkSize, hex.EncodeToString(ci.TableDigest.Bytes)
	}
	if ub, ok := m.UseBefore(); ok {
		out.UseBefore = time.Unix(int64(ub), 0).UTC().Format(time.RFC3339)
	}
	for _, name := range []string{suit.SeqShared, suit.SeqPayloadFetch, suit.SeqInstall, suit.SeqValidate, suit.SeqLoad, suit.SeqInvoke} {
		s, err := m.Sequence(name)
		switch {
		case err != nil:
			out.Sequences[name] = -1 // severed and absent
		case s != nil:
			out.Sequences[name] = len(s)
		}
	}
	if texts, err := m.Texts(); err == nil {
		// Prefer English; otherwise any language's description.
		for lang, t := range texts {
			if d := t.Fields[suit.TextManifestDescription]; d != "" && (out.Description == "" || strings.HasPrefix(lang, "en")) {
				out.Description = d
			}
		}
	}
	out.Signatures = []signatureJSON{}
	for _, s := range m.Signatures {
		sj := signatureJSON{Alg: s.Alg.String(), Verified: s.Verified}
		if len(s.KeyID) > 0 {
			sj.KeyID = hex.EncodeToString(s.KeyID)
		}
		if s.Verified && s.Anchor >= 0 && s.Anchor < len(keys) {
			sj.Key = keys[s.Anchor]
		}
		out.Signatures = append(out.Signatures, sj)
	}
	return out
}

func printInspect(w io.Writer, path string, o inspectJSON) {
	state := "NOT VERIFIED (no --key given)"
	if o.Verified {
		state = "verified"
	}
	fmt.Fprintf(w, "SUIT envelope %s: %s\n", path, state)
	line := func(label, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-26s %s\n", label+":", v)
		}
	}
	line("sequence number", fmt.Sprint(o.SequenceNumber))
	if o.SecurityVersion != nil {
		line("security version", fmt.Sprint(*o.SecurityVersion))
	}
	line("components", strings.Join(o.Components, ", "))
	line("vendor id", o.VendorID)
	line("class id", o.ClassID)
	if o.ImageDigest != "" {
		line("image digest", fmt.Sprintf("%s (alg %d)", o.ImageDigest, o.ImageDigestAlg))
	}
	if o.ImageSize != nil {
		line("image size", fmt.Sprintf("%d bytes", *o.ImageSize))
	}
	if o.ChunkTableDigest != "" {
		line("chunk size", fmt.Sprintf("%d bytes", o.ChunkSize))
		line("chunk table digest", o.ChunkTableDigest)
	}
	line("use before", o.UseBefore)
	line("reference uri", o.ReferenceURI)
	if o.Description != "" {
		first, _, _ := strings.Cut(o.Description, "\n")
		line("description", first)
	}
	for i, u := range o.URIs {
		line(fmt.Sprintf("uri %d", i+1), u)
	}
	line("manifest digest", o.ManifestDigest)
	for _, name := range []string{suit.SeqShared, suit.SeqPayloadFetch, suit.SeqInstall, suit.SeqValidate, suit.SeqLoad, suit.SeqInvoke} {
		if n, ok := o.Sequences[name]; ok {
			v := fmt.Sprintf("%d command(s)", n)
			if n < 0 {
				v = "severed, not in this envelope"
			}
			line("sequence "+name, v)
		}
	}
	for i, s := range o.Signatures {
		v := s.Alg
		if s.KeyID != "" {
			v += " kid " + s.KeyID
		}
		if s.Verified {
			v += " verified by " + s.Key
		} else {
			v += " not verified"
		}
		line(fmt.Sprintf("signature %d", i+1), v)
	}
}
