package bootctl

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// Encrypted slots (issue 17, at rest). With encrypted slots the device
// agent writes an encrypted image's ciphertext into the candidate slot as
// it arrives, and Commit seals it with a version 2 header; the bootloader
// decrypts while it copies the slot into the active region, which always
// holds plaintext (as MCUboot does for an external-flash slot). AES-CTR is
// seekable, but the install copy needs no seek: a copy a power cut
// interrupted starts over from the journal, like a plain one.
//
// The key material comes only from the root of trust: the header carries
// the content key (and the plaintext's SHA-256) wrapped (RFC 3394 AES key
// wrap) with the slot key, HKDF-SHA256(RootOfTrust.KEK, info SlotKeyInfo),
// so that a flash dump yields neither the key nor the plaintext digest,
// and the device's KEK (the one the agent unwraps content keys with) is
// used for one purpose per derived key. The HMAC of the header covers the
// block as it covers every field.
//
// Encryption block (128 bytes at offset 176 of a version 2 header):
//
//	off  len  field
//	  0    1  content algorithm: 1 AES-128-CTR, 2 AES-256-CTR
//	  1    1  wrapped length: 56 (AES-128) or 72 (AES-256)
//	  2   14  zero
//	 16   16  initial counter block (RFC 9459: the IV)
//	 32   72  AESKW(slot key, content key || plaintext SHA-256), zero padded
//	104   24  zero

// SlotKeyInfo is the HKDF info that derives the slot key from the
// device's KEK.
const SlotKeyInfo = "firmcast slot key v1"

const (
	encBlockSize  = 128
	encEnvelopeAt = envelopeOffset + encBlockSize

	encAlgAES128CTR = 1
	encAlgAES256CTR = 2
)

// SlotEncryption tells Commit that the candidate slot holds AES-CTR
// ciphertext: the device agent fills it from the verified manifest and
// the content key it unwrapped.
type SlotEncryption struct {
	// Key is the content key: 16 bytes (AES-128-CTR) or 32 (AES-256-CTR).
	Key []byte
	// IV is the initial counter block; byte offset o of the image is
	// encrypted with counter IV + o/16 (128-bit big endian).
	IV [16]byte
	// CiphertextDigest is the signed SHA-256 of the ciphertext, what the
	// slot holds.
	CiphertextDigest [32]byte
}

// slotCipher is an encrypted slot's key material as read and unwrapped
// from its header (memory only).
type slotCipher struct {
	block  cipher.Block
	iv     [16]byte
	stored Digest // the ciphertext's SHA-256: what the slot bytes hash to
}

// slotKey derives the key that wraps content keys in slot headers.
func slotKey(kek []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, kek, nil, SlotKeyInfo, len(kek))
}

// sealEncBlock makes the encryption block for e and the plaintext digest.
func sealEncBlock(kek []byte, e *SlotEncryption, plain Digest) ([]byte, error) {
	alg := byte(encAlgAES128CTR)
	switch len(e.Key) {
	case 16:
	case 32:
		alg = encAlgAES256CTR
	default:
		return nil, fmt.Errorf("%w: content key of %d bytes, want 16 or 32", ErrInvalidOption, len(e.Key))
	}
	sk, err := slotKey(kek)
	if err != nil {
		return nil, fmt.Errorf("%w: slot key: %w", ErrInvalidOption, err)
	}
	defer clear(sk)
	blk, err := aes.NewCipher(sk)
	if err != nil {
		return nil, fmt.Errorf("%w: slot key: %w", ErrInvalidOption, err)
	}
	in := append(append([]byte(nil), e.Key...), plain[:]...)
	defer clear(in)
	w, err := josecipher.KeyWrap(blk, in)
	if err != nil {
		return nil, fmt.Errorf("%w: key wrap: %w", ErrInvalidOption, err)
	}
	b := make([]byte, encBlockSize)
	b[0], b[1] = alg, byte(len(w))
	copy(b[16:32], e.IV[:])
	copy(b[32:104], w)
	return b, nil
}

// openEncBlock checks an encryption block's fields and unwraps it with
// the slot key derived from kek. It returns the cipher and the plaintext
// digest. Errors: ErrHeaderCorrupt (bad fields), ErrSlotKey (no KEK, or
// the wrap does not open with it).
func openEncBlock(kek, b []byte, stored Digest) (*slotCipher, Digest, error) {
	keyLen := 0
	switch b[0] {
	case encAlgAES128CTR:
		keyLen = 16
	case encAlgAES256CTR:
		keyLen = 32
	default:
		return nil, Digest{}, fmt.Errorf("%w: encryption block: content algorithm %d", ErrHeaderCorrupt, b[0])
	}
	wl := keyLen + sha256.Size + 8
	if int(b[1]) != wl {
		return nil, Digest{}, fmt.Errorf("%w: encryption block: wrapped length %d, want %d", ErrHeaderCorrupt, b[1], wl)
	}
	if !isZero(b[2:16]) || !isZero(b[32+wl:]) {
		return nil, Digest{}, fmt.Errorf("%w: encryption block: padding not zero", ErrHeaderCorrupt)
	}
	if len(kek) == 0 {
		return nil, Digest{}, fmt.Errorf("%w: the root of trust holds no KEK", ErrSlotKey)
	}
	sk, err := slotKey(kek)
	if err != nil {
		return nil, Digest{}, fmt.Errorf("%w: %w", ErrSlotKey, err)
	}
	defer clear(sk)
	kb, err := aes.NewCipher(sk)
	if err != nil {
		return nil, Digest{}, fmt.Errorf("%w: %w", ErrSlotKey, err)
	}
	in, err := josecipher.KeyUnwrap(kb, b[32:32+wl])
	if err != nil {
		return nil, Digest{}, fmt.Errorf("%w: integrity check failed", ErrSlotKey)
	}
	defer clear(in)
	blk, err := aes.NewCipher(in[:keyLen])
	if err != nil {
		return nil, Digest{}, fmt.Errorf("%w: %w", ErrSlotKey, err)
	}
	c := &slotCipher{block: blk, stored: stored}
	copy(c.iv[:], b[16:32])
	var plain Digest
	copy(plain[:], in[keyLen:])
	return c, plain, nil
}

// checkKEK validates RootOfTrust.KEK: empty, 16 or 32 bytes.
func checkKEK(kek []byte) error {
	if n := len(kek); n != 0 && n != 16 && n != 32 {
		return fmt.Errorf("%w: KEK of %d bytes, want 16 or 32", ErrInvalidOption, n)
	}
	return nil
}

// ctrAt returns the keystream of c from image offset off: AES-CTR is
// seekable (counter IV + off/16, then off%16 bytes skipped).
func (c *slotCipher) ctrAt(off uint64) cipher.Stream {
	ctr := c.iv
	hi, lo := binary.BigEndian.Uint64(ctr[:8]), binary.BigEndian.Uint64(ctr[8:])
	add := off / aes.BlockSize
	if lo+add < lo {
		hi++
	}
	lo += add
	binary.BigEndian.PutUint64(ctr[:8], hi)
	binary.BigEndian.PutUint64(ctr[8:], lo)
	s := cipher.NewCTR(c.block, ctr[:])
	if skip := off % aes.BlockSize; skip > 0 {
		var b [aes.BlockSize]byte
		s.XORKeyStream(b[:skip], b[:skip])
	}
	return s
}

func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}
