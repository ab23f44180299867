package deviceagent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Encrypted images (issue 17; schemas/suit ImageEncryption). The signed
// manifest names the image by its ciphertext: digest, size and chunk
// table are the ciphertext's, so the fetcher checks every chunk before
// anything is decrypted, and the notice, the topics and the fetch
// progress know only the ciphertext. The content key is unwrapped before
// the download starts, with Config.Keys (the device's root of trust) and
// the wrapped key of the device's own signed notice (Record.Key): a
// device that holds no key for the image refuses it before it erases a
// slot; so does a content key that is not the image's (it does not open
// the manifest's wrapped plaintext digest). Chunks are decrypted where
// they land (AES-CTR at their offset, decryptSink), so the candidate slot
// holds plaintext, as the bootloader expects (with Config.EncryptedSlots
// the slot keeps the ciphertext and the bootloader decrypts it:
// encslots.go); the plaintext's SHA-256,
// unwrapped from the signed manifest, is what bootctl checks the slot
// against when it commits the candidate (the one hash pass a plain image
// takes too): nothing decrypted becomes bootable before it checks. The
// content key and the plaintext digest live in memory only: after a
// restart they are derived again from the persisted envelope and wrapped
// key.

// encUpdate is the in-memory state of the encrypted update in progress.
type encUpdate struct {
	env   []byte // the envelope it was derived from
	cc    *suit.ContentCipher
	enc   *suit.ImageEncryption
	plain []byte // the plaintext's SHA-256 (signed, unwrapped with cc)
}

// contentKey returns the content cipher of the update in progress whose
// verified manifest is m, or nil for a plain image. It unwraps the key
// once per envelope. Errors are permanent: a malformed encryption
// parameter or wrapped key (CodeMalformed), no key of this device for it
// or a key that does not unwrap (CodeUnauthorized), an unknown
// algorithm (CodeUnsupported).
func (a *Agent) contentKey(ctx context.Context, m *suit.Manifest) (*encUpdate, error) {
	enc, ok, err := m.ImageEncryption()
	if !ok {
		return nil, nil
	}
	if err != nil {
		return nil, permanent(schemas.CodeMalformed, err)
	}
	if a.cfg.Boot.SecureBoot() {
		// The bootloader would check the slot's plaintext against the
		// envelope's image digest, which is the ciphertext's: refuse now
		// rather than stage an image it will not boot.
		return nil, permanent(schemas.CodeUnsupported, fmt.Errorf("%w: encrypted images on a secure-boot device (its envelope signs the ciphertext digest, and its bootloader takes no encrypted slot)", suit.ErrUnsupported))
	}
	a.mu.Lock()
	env, wrapped, cur := a.st.Envelope, a.st.Key, a.enc
	a.mu.Unlock()
	if cur != nil && string(cur.env) == string(env) {
		return cur, nil
	}
	var extra []suit.Recipient
	if len(wrapped) > 0 {
		r, err := suit.DecodeRecipient(wrapped)
		if err != nil {
			return nil, permanent(schemas.CodeMalformed, fmt.Errorf("the notice's wrapped content key: %w", err))
		}
		extra = append(extra, *r)
	}
	cc, err := enc.ContentCipher(ctx, a.cfg.Keys, extra...)
	if err != nil {
		code, _ := classify(err)
		return nil, permanent(code, fmt.Errorf("encrypted image: %w", err))
	}
	plain, err := enc.OpenDigest(cc)
	if err != nil {
		return nil, permanent(schemas.CodeUnauthorized, fmt.Errorf("encrypted image: %w", err))
	}
	u := &encUpdate{env: env, cc: cc, enc: enc, plain: plain}
	a.mu.Lock()
	a.enc = u
	a.mu.Unlock()
	return u, nil
}

// encrypted reports whether the persisted update is of an encrypted
// image, and its content key state (derived again after a restart).
func (a *Agent) encrypted(ctx context.Context) (*encUpdate, error) {
	a.mu.Lock()
	env, cur := a.st.Envelope, a.enc
	a.mu.Unlock()
	if cur != nil && string(cur.env) == string(env) {
		return cur, nil
	}
	if len(env) == 0 {
		return nil, nil
	}
	m, err := suit.Verify(env, a.cfg.Trust)
	if err != nil {
		return nil, err
	}
	return a.contentKey(ctx, m)
}

// candidateDigest is the digest bootctl checks the candidate against and
// its header carries: the notice's image digest for a plain image, the
// signed plaintext SHA-256 for an encrypted one.
func (a *Agent) candidateDigest(ctx context.Context, st Record) ([]byte, error) {
	if !st.Encrypted {
		return st.Image, nil
	}
	u, err := a.encrypted(ctx)
	if err != nil {
		return nil, err
	}
	if u == nil {
		return nil, permanent(schemas.CodeMalformed, fmt.Errorf("the update's manifest lost its encryption parameter"))
	}
	return u.plain, nil
}

// scrubPlaintext keeps the plaintext digest out of an encrypted update's
// failure (bootctl's mismatch names the digests it compared), which goes
// into the state file and the report: a digest mismatch becomes
// suit.ErrPlaintextDigest without the digests.
func scrubPlaintext(st Record, err error) error {
	if !st.Encrypted || !errors.Is(err, bootctl.ErrDigestMismatch) {
		return err
	}
	return permanent(schemas.CodeDigest, fmt.Errorf("%w: the decrypted candidate does not match the signed plaintext digest", suit.ErrPlaintextDigest))
}

// scrub removes, during an encrypted update, every digest bootctl or the
// agent knows (the plaintext's among them, whole or as the 8-byte
// prefixes error messages show) from text bound for the state file, the
// log or a report. It takes a.mu itself.
func (a *Agent) scrub(text string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.scrubLocked(text)
}

// scrubLocked is scrub with a.mu held.
func (a *Agent) scrubLocked(text string) string {
	if text == "" || !a.st.Encrypted {
		return text
	}
	var known [][]byte
	if a.enc != nil && a.enc.plain != nil {
		known = append(known, a.enc.plain)
	}
	if st, err := a.cfg.Boot.Status(); err == nil {
		known = append(known, st.Active.Digest[:])
		for _, s := range st.Slots {
			known = append(known, s.Digest[:])
		}
	}
	for _, d := range known {
		if len(d) < 8 || string(d) == string(make([]byte, len(d))) {
			continue
		}
		h := hex.EncodeToString(d)
		text = strings.ReplaceAll(text, h, "<digest>")
		text = strings.ReplaceAll(text, h[:16], "<digest>")
	}
	return text
}

// isUpdateImage reports whether an image the bootloader names (digest,
// version, campaign of its header) is the update in progress: its digest
// for a plain image; for an encrypted one, whose header carries the
// plaintext digest the agent does not persist, the version and campaign
// the agent committed it with (and the digest, while it is known).
func (a *Agent) isUpdateImage(d bootctl.Digest, version uint64, campaign string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.st.Encrypted {
		return string(d[:]) == string(a.st.Image)
	}
	if a.enc != nil && string(a.enc.env) == string(a.st.Envelope) && string(a.enc.plain) != string(d[:]) {
		return false
	}
	return version == a.st.Seq && campaign == a.st.Campaign
}

// decryptSink decrypts each verified ciphertext chunk where it lands (the
// fetcher checked it against the signed chunk table first), and encrypts
// what it reads back, so that the fetcher's resume checks see the
// ciphertext its table describes. Buffers come from a pool: the fetcher
// writes one chunk at a time per source.
type decryptSink struct {
	slotSink
	cc   *suit.ContentCipher
	pool *sync.Pool
}

func newDecryptSink(s slotSink, cc *suit.ContentCipher) decryptSink {
	return decryptSink{slotSink: s, cc: cc, pool: &sync.Pool{}}
}

func (d decryptSink) buf(n int) *[]byte {
	if b, ok := d.pool.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

// WriteAt implements fetcher.Sink.
func (d decryptSink) WriteAt(p []byte, off int64) (int, error) {
	b := d.buf(len(p))
	defer d.pool.Put(b)
	if err := d.cc.XORAt(*b, p, uint64(off)); err != nil {
		return 0, err
	}
	return d.slotSink.WriteAt(*b, off)
}

// ReadAt implements io.ReaderAt: the ciphertext of what the slot holds.
func (d decryptSink) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.slotSink.ReadAt(p, off)
	if xerr := d.cc.XORAt(p[:n], p[:n], uint64(off)); xerr != nil && err == nil {
		err = xerr
	}
	return n, err
}

var _ fetcher.Sink = decryptSink{}
