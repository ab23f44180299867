package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/firmcast/firmcast/schemas/suit"
)

// Encrypted deltas (issue 17; docs/SECURITY.md, "Firmware encryption").
// A delta to an encrypted image carries the image's plaintext (its
// literal bytes, the target digest in its header), so MakeDelta decrypts
// the target with its escrowed content key, makes the delta in memory,
// and stores it encrypted like an image: a fresh AES-128-CTR content key
// and initial counter block of its own (crypto/rand, never the image's or
// another delta's), only the ciphertext stored and served, named by its
// SHA-256, its chunk table the ciphertext's; its content key kept wrapped
// with the custody key (its image key record, recipients those of the
// target). A campaign's manifest offers it with its ImageEncryption
// (suit.DeltaInfo.Encryption): the delta's key wrapped with the image's
// DeltaKEK, so the devices that can open the image (each with the
// wrapped key of its own notice) and those alone can open the delta.
// Deltas are made from plain sources only (MakeDelta).

// deltaEncryption is a delta's encryption while it is made: its fresh
// content cipher, the target's recipients, and the delta's plaintext
// SHA-256 as it streams into the cipher.
type deltaEncryption struct {
	cc         *suit.ContentCipher
	recipients []string
	sum        []byte
}

// decryptTarget decrypts, in place, the encrypted image digest read whole
// into b (its ciphertext), checks it against the image's signed plaintext
// digest and returns the encryption its delta gets: a fresh content key
// and IV.
func (p *Publisher) decryptTarget(ctx context.Context, digest string, b []byte) (*deltaEncryption, error) {
	cust, err := p.custody()
	if err != nil {
		return nil, err
	}
	rec, enc, err := p.imageKey(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("publisher: key of encrypted image %s: %w", digest, err)
	}
	icc, err := enc.ContentCipher(ctx, cust)
	if err != nil {
		return nil, fmt.Errorf("publisher: content key of %s: %w", digest, err)
	}
	want, err := enc.OpenDigest(icc)
	if err != nil {
		return nil, err
	}
	if err := icc.XORAt(b, b, 0); err != nil {
		return nil, err
	}
	if got := sha256.Sum256(b); !bytes.Equal(got[:], want) {
		clear(b)
		return nil, fmt.Errorf("publisher: encrypted image %s does not decrypt to its signed plaintext digest", digest)
	}
	cc, err := suit.NewContentCipher(suit.A128CTR, nil) // fresh key and IV, crypto/rand
	if err != nil {
		return nil, err
	}
	return &deltaEncryption{cc: cc, recipients: rec.Recipients}, nil
}

// encrypt returns the ciphertext of the delta read from r, hashing the
// plaintext as it streams (d.sum once r is drained).
func (d *deltaEncryption) encrypt(r io.Reader) (io.Reader, error) {
	h := sha256.New()
	ct, err := d.cc.NewReader(io.TeeReader(r, h), 0)
	if err != nil {
		return nil, err
	}
	return &sumOnEOF{r: ct, h: h, out: &d.sum}, nil
}

// sumOnEOF records the hash's sum when r reaches io.EOF.
type sumOnEOF struct {
	r   io.Reader
	h   interface{ Sum([]byte) []byte }
	out *[]byte
}

func (s *sumOnEOF) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err == io.EOF && *s.out == nil {
		*s.out = s.h.Sum(nil)
	}
	return n, err
}

// storeDeltaKey keeps the encrypted delta digest's content key, wrapped
// with the custody key, and its wrapped plaintext digest, as an image
// key record: before the delta's metadata makes it visible.
func (p *Publisher) storeDeltaKey(ctx context.Context, digest string, d *deltaEncryption) error {
	if d.sum == nil {
		return fmt.Errorf("publisher: encrypted delta %s: the plaintext was not read to its end", digest)
	}
	cust, err := p.custody()
	if err != nil {
		return err
	}
	esc, err := d.cc.WrapFor(cust, nil)
	if err != nil {
		return fmt.Errorf("publisher: escrow delta content key: %w", err)
	}
	wd, err := d.cc.SealDigest(d.sum)
	if err != nil {
		return err
	}
	enc := &suit.ImageEncryption{Info: d.cc.Info(*esc), PlaintextDigest: wd}
	_, err = createJSON(ctx, p.st.cryptKeys, "image key", imgKeyName(digest), imageKeyRecord{Encryption: enc.Encode(), Recipients: d.recipients})
	return err
}

// deltaOfferEncryption returns what a manifest of encrypted image img
// signs of its encrypted delta: the delta's content key wrapped with the
// image's DeltaKEK, the delta's IV and wrapped plaintext digest.
func (p *Publisher) deltaOfferEncryption(ctx context.Context, img, deltaDigest string) (*suit.ImageEncryption, error) {
	ik, err := p.contentKey(ctx, img)
	if err != nil {
		return nil, err
	}
	dk, err := p.contentKey(ctx, deltaDigest)
	if err != nil {
		return nil, fmt.Errorf("publisher: key of encrypted delta %s: %w", deltaDigest, err)
	}
	kek := ik.cc.DeltaKEK()
	defer clear(kek.Key)
	r, err := dk.cc.WrapFor(kek, nil)
	if err != nil {
		return nil, fmt.Errorf("publisher: wrap delta content key: %w", err)
	}
	return &suit.ImageEncryption{Info: dk.cc.Info(*r), PlaintextDigest: dk.enc.PlaintextDigest}, nil
}
