package suit

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
)

// MaxAEADPayload bounds a payload decrypted with AES-GCM: Go's AEAD
// checks the tag only over the whole ciphertext held in memory, so GCM is
// for small payloads (parameter-content); images are AES-CTR.
const MaxAEADPayload = 1 << 20

// gcmTagSize is the AES-GCM tag size (A128GCM, A256GCM).
const gcmTagSize = 16

// ContentCipher is the content layer of one encrypted payload with its
// content key: it encrypts (the backend) or decrypts (the device). Its
// methods are safe for concurrent use; each Reader or Writer it returns
// is not.
type ContentCipher struct {
	alg       Algorithm
	key       []byte
	iv        []byte
	protected []byte
	block     cipher.Block
}

// NewContentCipher makes a fresh content key and IV for alg (A128GCM,
// A256GCM, A128CTR or A256CTR) from rnd (crypto/rand when nil; a
// deterministic reader in tests). Use one per payload, never twice: a
// reused key and IV reveals the XOR of two plaintexts.
func NewContentCipher(alg Algorithm, rnd io.Reader) (*ContentCipher, error) {
	n := contentKeySize(alg)
	if n == 0 {
		return nil, fmt.Errorf("%w: content algorithm %s", ErrUnknownAlgorithm, encAlgName(alg))
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	key := make([]byte, n)
	iv := make([]byte, ivSize(alg))
	if _, err := io.ReadFull(rnd, key); err != nil {
		return nil, fmt.Errorf("suit: content key: %w", err)
	}
	if _, err := io.ReadFull(rnd, iv); err != nil {
		return nil, fmt.Errorf("suit: IV: %w", err)
	}
	// GCM authenticates its protected header, so alg goes there (as the
	// draft's examples); AES-CTR authenticates nothing and RFC 9459 wants
	// an empty protected header.
	prot := []byte{}
	if isGCM(alg) {
		prot = protectedAlg(alg)
	}
	return newContentCipher(alg, key, iv, prot)
}

// Cipher returns the content cipher of e keyed with the content key cek:
// on the device once a recipient unwrapped it, on the backend to wrap a
// stored key for another device. It fails with ErrUnknownAlgorithm for an
// algorithm this package does not implement, ErrMalformed for an IV of the
// wrong size, ErrKeyUnwrap for a key of the wrong size.
func (e *EncryptionInfo) Cipher(cek []byte) (*ContentCipher, error) {
	n := contentKeySize(e.Alg)
	switch {
	case n == 0:
		return nil, fmt.Errorf("%w: content algorithm %s", ErrUnknownAlgorithm, encAlgName(e.Alg))
	case len(e.IV) != ivSize(e.Alg):
		return nil, fmt.Errorf("%w: encryption-info: %s IV of %d bytes (want %d)", ErrMalformed, encAlgName(e.Alg), len(e.IV), ivSize(e.Alg))
	case len(cek) != n:
		return nil, fmt.Errorf("%w: content key of %d bytes for %s", ErrKeyUnwrap, len(cek), encAlgName(e.Alg))
	}
	return newContentCipher(e.Alg, bytes.Clone(cek), e.IV, e.Protected)
}

func newContentCipher(alg Algorithm, key, iv, prot []byte) (*ContentCipher, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: content key: %v", ErrKey, err)
	}
	return &ContentCipher{alg: alg, key: key, iv: iv, protected: prot, block: blk}, nil
}

func isGCM(a Algorithm) bool { return a == A128GCM || a == A256GCM }

func ivSize(a Algorithm) int {
	if isGCM(a) {
		return 12
	}
	return aes.BlockSize
}

// Algorithm returns the content algorithm.
func (c *ContentCipher) Algorithm() Algorithm { return c.alg }

// Key returns a copy of the content key (the backend keeps it, with its
// key-encryption keys, to wrap it for devices that join later).
func (c *ContentCipher) Key() []byte { return bytes.Clone(c.key) }

// Authenticated reports whether the algorithm authenticates the
// ciphertext itself (GCM). Without it (CTR), a decrypted payload is
// accepted only when it matches a signed image digest.
func (c *ContentCipher) Authenticated() bool { return isGCM(c.alg) }

// Overhead is the number of bytes the ciphertext is longer than the
// plaintext: the GCM tag, or 0.
func (c *ContentCipher) Overhead() int {
	if isGCM(c.alg) {
		return gcmTagSize
	}
	return 0
}

// Info returns the SUIT_Encryption_Info for this payload and recipients
// (see WrapFor), ready for parameter-encryption-info.
func (c *ContentCipher) Info(recipients ...Recipient) *EncryptionInfo {
	return &EncryptionInfo{Alg: c.alg, IV: bytes.Clone(c.iv), Protected: bytes.Clone(c.protected), Recipients: recipients}
}

// WrapFor wraps the content key for one recipient key (a device's KEK or
// ECDH public key), with randomness from rnd (crypto/rand when nil).
func (c *ContentCipher) WrapFor(k KeyWrapper, rnd io.Reader) (*Recipient, error) {
	return k.WrapKey(c.key, rnd)
}

// encStructure is the AAD of the content layer (RFC 9052 section 5.3):
// ["Encrypt", protected, external_aad (empty)].
func (c *ContentCipher) encStructure() []byte {
	return marshal([]any{"Encrypt", c.protected, []byte{}})
}

// Seal encrypts a whole payload: GCM returns ciphertext||tag (the detached
// ciphertext of COSE_Encrypt), CTR the ciphertext. GCM payloads are
// bounded by MaxAEADPayload (ErrTooLarge).
func (c *ContentCipher) Seal(plaintext []byte) ([]byte, error) {
	if !isGCM(c.alg) {
		out := make([]byte, len(plaintext))
		c.stream(0).XORKeyStream(out, plaintext)
		return out, nil
	}
	if len(plaintext) > MaxAEADPayload {
		return nil, fmt.Errorf("%w: %d bytes for %s (max %d; use AES-CTR)", ErrTooLarge, len(plaintext), encAlgName(c.alg), MaxAEADPayload)
	}
	g, err := cipher.NewGCM(c.block)
	if err != nil {
		return nil, fmt.Errorf("suit: GCM: %w", err)
	}
	return g.Seal(nil, c.iv, plaintext, c.encStructure()), nil
}

// Open decrypts a whole payload. For GCM it returns the plaintext only if
// the tag verifies (ErrDecrypt otherwise: a tampered ciphertext, tag, IV
// or protected header, or the wrong content key). CTR authenticates
// nothing: its result counts only once it matches a signed digest.
func (c *ContentCipher) Open(ciphertext []byte) ([]byte, error) {
	if !isGCM(c.alg) {
		out := make([]byte, len(ciphertext))
		c.stream(0).XORKeyStream(out, ciphertext)
		return out, nil
	}
	if len(ciphertext) > MaxAEADPayload+gcmTagSize {
		return nil, fmt.Errorf("%w: %d bytes for %s (max %d)", ErrTooLarge, len(ciphertext), encAlgName(c.alg), MaxAEADPayload)
	}
	g, err := cipher.NewGCM(c.block)
	if err != nil {
		return nil, fmt.Errorf("suit: GCM: %w", err)
	}
	pt, err := g.Open(nil, c.iv, ciphertext, c.encStructure())
	if err != nil {
		return nil, fmt.Errorf("%w: %s tag does not verify", ErrDecrypt, encAlgName(c.alg))
	}
	return pt, nil
}

// NewReader returns a Reader of the AES-CTR transform of r (decryption and
// encryption are the same), r's first byte being byte offset of the
// payload (0 from the start; a resumed copy starts later). It holds no
// buffer of its own. GCM cannot stream: it fails with ErrParameter.
func (c *ContentCipher) NewReader(r io.Reader, offset uint64) (io.Reader, error) {
	if isGCM(c.alg) {
		return nil, fmt.Errorf("%w: %s cannot be streamed", ErrParameter, encAlgName(c.alg))
	}
	return &cipher.StreamReader{S: c.stream(offset), R: r}, nil
}

// NewWriter returns a Writer that writes the AES-CTR transform of what it
// is given to w, starting at byte offset of the payload, through a fixed
// 16 KiB buffer. After an error it must not be used again. GCM fails with
// ErrParameter.
func (c *ContentCipher) NewWriter(w io.Writer, offset uint64) (io.Writer, error) {
	if isGCM(c.alg) {
		return nil, fmt.Errorf("%w: %s cannot be streamed", ErrParameter, encAlgName(c.alg))
	}
	return &ctrWriter{s: c.stream(offset), w: w, buf: make([]byte, 16<<10)}, nil
}

// stream returns the CTR keystream positioned at byte offset: the counter
// block is the IV plus offset/16 (a 128-bit big-endian add), and the
// first offset%16 keystream bytes are skipped.
func (c *ContentCipher) stream(offset uint64) cipher.Stream {
	ctr := bytes.Clone(c.iv)
	hi := binary.BigEndian.Uint64(ctr[:8])
	lo := binary.BigEndian.Uint64(ctr[8:])
	add := offset / aes.BlockSize
	if lo+add < lo {
		hi++
	}
	lo += add
	binary.BigEndian.PutUint64(ctr[:8], hi)
	binary.BigEndian.PutUint64(ctr[8:], lo)
	s := cipher.NewCTR(c.block, ctr)
	if skip := offset % aes.BlockSize; skip > 0 {
		var b [aes.BlockSize]byte
		s.XORKeyStream(b[:skip], b[:skip])
	}
	return s
}

// ctrWriter is the CTR transform as an io.Writer with a bounded buffer.
type ctrWriter struct {
	s   cipher.Stream
	w   io.Writer
	buf []byte
}

func (cw *ctrWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), len(cw.buf))
		cw.s.XORKeyStream(cw.buf[:k], p[:k])
		m, err := cw.w.Write(cw.buf[:k])
		n += m
		if err != nil {
			return n, err
		}
		if m < k {
			return n, io.ErrShortWrite
		}
		p = p[k:]
	}
	return n, nil
}
