package suit

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
)

// contentCipher finds this device's content key for info: the manifest's
// recipients first, then p.Recipients, each offered to p.Keys. A
// recipient of an algorithm this package does not know is skipped. It
// fails with ErrUnknownAlgorithm (the content algorithm, or only unknown
// recipients), ErrKeyUnwrap (a recipient named one of the device's keys
// and did not unwrap), ErrNoRecipient (none is for this device), or the
// KeyUnwrapper's own error.
func (r *run) contentCipher(ctx context.Context, info *EncryptionInfo) (*ContentCipher, error) {
	return findContentKey(ctx, r.p.Keys, info, r.p.Recipients)
}

// findContentKey is contentCipher for any caller holding keys (the
// Processor, or an agent that decrypts in its own fetch path): the
// info's recipients first, then extra, each offered to keys.
func findContentKey(ctx context.Context, keys KeyUnwrapper, info *EncryptionInfo, extra []Recipient) (*ContentCipher, error) {
	n := contentKeySize(info.Alg)
	if n == 0 {
		return nil, fmt.Errorf("%w: content algorithm %s", ErrUnknownAlgorithm, encAlgName(info.Alg))
	}
	if keys == nil {
		return nil, fmt.Errorf("%w: the device has no decryption keys", ErrNoRecipient)
	}
	var unwrapErr, unknownErr error
	known := 0
	for _, list := range [][]Recipient{info.Recipients, extra} {
		for i := range list {
			rc := &list[i]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if kekSize(rc.Alg) == 0 || rc.ephErr != nil {
				unknownErr = fmt.Errorf("%w: recipient %q: %s", ErrUnknownAlgorithm, rc.KeyID, encAlgName(rc.Alg))
				if rc.ephErr != nil {
					unknownErr = rc.ephErr
				}
				continue
			}
			known++
			cek, err := keys.UnwrapKey(ctx, rc, n)
			switch {
			case err == nil:
				c, err := info.Cipher(cek)
				clear(cek)
				return c, err
			case errors.Is(err, ErrKeyUnwrap):
				unwrapErr = err // another recipient may still be ours
			case !errors.Is(err, ErrNoRecipient):
				return nil, err
			}
		}
	}
	switch {
	case unwrapErr != nil:
		return nil, unwrapErr
	case known == 0 && unknownErr != nil:
		return nil, unknownErr
	}
	return nil, fmt.Errorf("%w: %d recipient(s), none for this device", ErrNoRecipient, known)
}

// decryptTo reads the ciphertext from src (at most max bytes of plaintext;
// copy reads exactly up to the bound, fetch and write must fit in it),
// decrypts it into w and checks it: GCM by its tag before anything is
// written, every payload against the component's image-digest (and
// image-size) when set. A CTR payload needs an image digest: its
// plaintext is accepted by that digest alone. On any error w has
// received nothing or content the caller must abort.
func (r *run) decryptTo(w io.Writer, src io.Reader, c *ContentCipher, p *Params, max uint64, fromComponent bool) error {
	var h hash.Hash
	if p.ImageDigest != nil {
		var err error
		if h, err = newHash(p.ImageDigest.Alg); err != nil {
			return err
		}
	} else if !c.Authenticated() {
		return fmt.Errorf("%w: %s payload without image-digest", ErrParameter, encAlgName(c.alg)) // write checks it first
	}
	var n uint64
	if c.Authenticated() && p.ImageSize != nil && *p.ImageSize > MaxAEADPayload {
		return fmt.Errorf("%w: %s payload of %d bytes (max %d; images use AES-CTR)", ErrTooLarge, encAlgName(c.alg), *p.ImageSize, MaxAEADPayload)
	}
	if c.Authenticated() {
		bound := min(max, MaxAEADPayload) + uint64(c.Overhead())
		read := bound + 1
		if fromComponent {
			read = bound
		}
		ct, err := io.ReadAll(io.LimitReader(src, int64(read)))
		if err != nil {
			return fmt.Errorf("suit: reading ciphertext: %w", err)
		}
		if uint64(len(ct)) > bound {
			return fmt.Errorf("%w: ciphertext over %d bytes", ErrTooLarge, bound)
		}
		pt, err := c.Open(ct)
		if err != nil {
			return err
		}
		if h != nil {
			h.Write(pt)
		}
		if _, err := w.Write(pt); err != nil {
			return fmt.Errorf("suit: writing plaintext: %w", err)
		}
		n = uint64(len(pt))
	} else {
		read := max + 1
		if fromComponent {
			read = max
		}
		dec, err := c.NewReader(io.LimitReader(src, int64(read)), 0)
		if err != nil {
			return err
		}
		m, err := io.CopyBuffer(io.MultiWriter(w, h), dec, make([]byte, 32<<10))
		if err != nil {
			return fmt.Errorf("suit: decrypting: %w", err)
		}
		if n = uint64(m); n > max {
			return fmt.Errorf("%w: content over %d bytes", ErrTooLarge, max)
		}
	}
	if h == nil {
		return nil
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), p.ImageDigest.Bytes) != 1 || (p.ImageSize != nil && *p.ImageSize != n) {
		return fmt.Errorf("%w: %d bytes decrypted with %s", ErrPlaintextDigest, n, encAlgName(c.alg))
	}
	return nil
}
