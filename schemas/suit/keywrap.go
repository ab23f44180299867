package suit

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// KeyUnwrapper is the device's root of trust for encrypted payloads: it
// holds the device's key-encryption keys and ECDH private keys (outside
// flash and outside the agent's state) and recovers a content key from one
// recipient. The Processor chooses the recipients and checks what the key
// decrypts; a KeyUnwrapper only unwraps.
//
// KEK, ECDHKey and Keyring implement it for keys in memory; a secure
// element implements it (or ECDHKey's ECDH half) without exporting keys.
type KeyUnwrapper interface {
	// UnwrapKey returns the content key, of keySize bytes, that r carries.
	// It returns an error wrapping ErrNoRecipient when it holds no key for
	// r (another key id, another algorithm), and ErrKeyUnwrap when it holds
	// the key r names but the wrapped key does not unwrap with it. It may
	// block (a secure element) and honours ctx.
	UnwrapKey(ctx context.Context, r *Recipient, keySize int) ([]byte, error)
}

// KeyWrapper wraps a content key for one recipient: the sender's side of
// a KeyUnwrapper (the backend, holding a device's key-encryption key or
// ECDH public key). KEK and ECDHPublicKey implement it.
type KeyWrapper interface {
	// WrapKey returns a recipient carrying cek, taking any randomness it
	// needs (an ephemeral key) from rnd.
	WrapKey(cek []byte, rnd io.Reader) (*Recipient, error)
}

// kdfOther is SuppPubInfo.other of the COSE KDF context for SUIT payload
// encryption (draft-ietf-suit-firmware-encryption, ES-DH section).
const kdfOther = "SUIT Payload Encryption"

// KEK is a pre-shared AES key-encryption key named by KeyID: 16 bytes for
// A128KW, 32 for A256KW. It unwraps on the device and wraps on the
// backend. The zero KeyID matches recipients of any key id.
type KEK struct {
	KeyID []byte
	Key   []byte
}

func (k KEK) alg() Algorithm {
	switch len(k.Key) {
	case 16:
		return A128KW
	case 32:
		return A256KW
	}
	return 0
}

// UnwrapKey implements KeyUnwrapper for A128KW and A256KW recipients.
func (k KEK) UnwrapKey(ctx context.Context, r *Recipient, keySize int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if k.alg() == 0 || r.Alg != k.alg() || !kidMatch(k.KeyID, r.KeyID) {
		return nil, fmt.Errorf("%w: %s recipient %q", ErrNoRecipient, encAlgName(r.Alg), r.KeyID)
	}
	return unwrapKey(k.Key, r.WrappedKey, keySize, r)
}

// WrapKey implements KeyWrapper: an A128KW or A256KW recipient (alg in
// the unprotected header, empty protected header, as the draft's examples).
func (k KEK) WrapKey(cek []byte, _ io.Reader) (*Recipient, error) {
	if k.alg() == 0 {
		return nil, fmt.Errorf("%w: key-encryption key of %d bytes (want 16 or 32)", ErrKey, len(k.Key))
	}
	w, err := wrapKey(k.Key, cek)
	if err != nil {
		return nil, err
	}
	return &Recipient{Alg: k.alg(), KeyID: bytes.Clone(k.KeyID), Protected: []byte{}, WrappedKey: w}, nil
}

// ECDHPrivateKey is the private half of a device's ECDH key: an
// *ecdh.PrivateKey, or a secure element that performs the agreement
// without exporting the key.
type ECDHPrivateKey interface {
	ECDH(remote *ecdh.PublicKey) ([]byte, error)
	PublicKey() *ecdh.PublicKey
}

// ECDHKey is a device's static ECDH key (P-256 or X25519) named by KeyID,
// for ECDH-ES+A128KW and ECDH-ES+A256KW recipients. The zero KeyID matches
// recipients of any key id.
type ECDHKey struct {
	KeyID []byte
	Key   ECDHPrivateKey
}

// UnwrapKey implements KeyUnwrapper: ECDH with the recipient's ephemeral
// key, HKDF-SHA256 over the COSE KDF context (RFC 9053 section 5.2: the
// key wrap's algorithm and size, the recipient's protected header, and
// "SUIT Payload Encryption"), then AES key unwrap.
func (k ECDHKey) UnwrapKey(ctx context.Context, r *Recipient, keySize int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if k.Key == nil || !isECDH(r.Alg) || !kidMatch(k.KeyID, r.KeyID) ||
		r.Ephemeral == nil || r.Ephemeral.Curve() != k.Key.PublicKey().Curve() {
		return nil, fmt.Errorf("%w: %s recipient %q", ErrNoRecipient, encAlgName(r.Alg), r.KeyID)
	}
	z, err := k.Key.ECDH(r.Ephemeral)
	if err != nil {
		return nil, fmt.Errorf("%w: key agreement: %v", ErrKeyUnwrap, err)
	}
	defer clear(z)
	kek, err := ecdhKEK(z, r.Alg, r.Protected)
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	return unwrapKey(kek, r.WrappedKey, keySize, r)
}

// ECDHPublicKey is a device's ECDH public key as the backend holds it: it
// wraps content keys for the device (ECDH-ES with a fresh ephemeral key).
// Alg is ECDHESA128KW (the zero value) or ECDHESA256KW.
type ECDHPublicKey struct {
	KeyID []byte
	Key   *ecdh.PublicKey
	Alg   Algorithm
}

// WrapKey implements KeyWrapper. The ephemeral key is drawn from rnd
// (crypto/rand when nil), so tests can make it deterministic.
func (k ECDHPublicKey) WrapKey(cek []byte, rnd io.Reader) (*Recipient, error) {
	alg := k.Alg
	if alg == 0 {
		alg = ECDHESA128KW
	}
	if !isECDH(alg) || k.Key == nil {
		return nil, fmt.Errorf("%w: ECDH-ES recipient needs a public key and %s or %s", ErrKey, encAlgName(ECDHESA128KW), encAlgName(ECDHESA256KW))
	}
	eph, err := ephemeralKey(k.Key.Curve(), rnd)
	if err != nil {
		return nil, err
	}
	z, err := eph.ECDH(k.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: key agreement: %v", ErrKey, err)
	}
	defer clear(z)
	prot := protectedAlg(alg)
	kek, err := ecdhKEK(z, alg, prot)
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	w, err := wrapKey(kek, cek)
	if err != nil {
		return nil, err
	}
	return &Recipient{Alg: alg, KeyID: bytes.Clone(k.KeyID), Protected: prot, Ephemeral: eph.PublicKey(), WrappedKey: w}, nil
}

// Keyring is several device keys (rotation: the old and the new
// key-encryption key; or a KEK and an ECDH key). UnwrapKey asks each in
// order and returns the first answer that is not ErrNoRecipient.
type Keyring []KeyUnwrapper

// UnwrapKey implements KeyUnwrapper.
func (kr Keyring) UnwrapKey(ctx context.Context, r *Recipient, keySize int) ([]byte, error) {
	var unwrapErr error
	for _, k := range kr {
		cek, err := k.UnwrapKey(ctx, r, keySize)
		switch {
		case err == nil:
			return cek, nil
		case errors.Is(err, ErrKeyUnwrap):
			unwrapErr = err // a key of the same id may follow (rotation)
		case !errors.Is(err, ErrNoRecipient):
			return nil, err
		}
	}
	if unwrapErr != nil {
		return nil, unwrapErr
	}
	return nil, fmt.Errorf("%w: %s recipient %q", ErrNoRecipient, encAlgName(r.Alg), r.KeyID)
}

// kidMatch: a key without id matches any recipient, a recipient without
// id matches any key; otherwise the ids must be equal.
func kidMatch(key, recipient []byte) bool {
	return len(key) == 0 || len(recipient) == 0 || bytes.Equal(key, recipient)
}

// ecdhKEK derives the key-encryption key of an ECDH-ES+AxxxKW recipient
// from the shared secret z: HKDF-SHA256 (no salt) with the serialized
// COSE_KDF_Context as info. The context's AlgorithmID is that of the key
// wrap (A128KW, -3), not of the recipient (-29), as libcsuit and the
// draft's examples do.
func ecdhKEK(z []byte, alg Algorithm, protected []byte) ([]byte, error) {
	n := kekSize(alg)
	wrap := A128KW
	if n == 32 {
		wrap = A256KW
	}
	if protected == nil {
		protected = []byte{}
	}
	info := marshal([]any{
		int64(wrap),
		[]any{nil, nil, nil}, // PartyUInfo: identity, nonce, other
		[]any{nil, nil, nil}, // PartyVInfo
		[]any{uint64(n * 8), protected, []byte(kdfOther)}, // SuppPubInfo
	})
	kek, err := hkdf.Key(sha256.New, z, nil, string(info), n)
	if err != nil {
		return nil, fmt.Errorf("%w: HKDF: %v", ErrKeyUnwrap, err)
	}
	return kek, nil
}

// unwrapKey undoes RFC 3394 key wrap of a content key of keySize bytes.
// The integrity check failing (a wrong key, a tampered wrapped key) and a
// wrapped key of the wrong size are ErrKeyUnwrap.
func unwrapKey(kek, wrapped []byte, keySize int, r *Recipient) ([]byte, error) {
	if len(wrapped) != keySize+8 {
		return nil, fmt.Errorf("%w: recipient %q: wrapped key of %d bytes for a %d-byte content key", ErrKeyUnwrap, r.KeyID, len(wrapped), keySize)
	}
	blk, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("%w: key-encryption key: %v", ErrKey, err)
	}
	cek, err := josecipher.KeyUnwrap(blk, wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: recipient %q (%s): integrity check failed", ErrKeyUnwrap, r.KeyID, encAlgName(r.Alg))
	}
	return cek, nil
}

// wrapKey wraps a content key with RFC 3394 key wrap.
func wrapKey(kek, cek []byte) ([]byte, error) {
	if len(cek) != 16 && len(cek) != 32 {
		return nil, fmt.Errorf("%w: content key of %d bytes", ErrKey, len(cek))
	}
	blk, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("%w: key-encryption key: %v", ErrKey, err)
	}
	w, err := josecipher.KeyWrap(blk, cek)
	if err != nil {
		return nil, fmt.Errorf("%w: key wrap: %v", ErrKey, err)
	}
	return w, nil
}

// ephemeralKey draws an ECDH private key from rnd (crypto/rand when nil)
// by rejection sampling, so that an injected reader makes it
// deterministic (ecdh's GenerateKey ignores custom readers).
func ephemeralKey(c ecdh.Curve, rnd io.Reader) (*ecdh.PrivateKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	n := 32
	switch c {
	case ecdh.P256(), ecdh.X25519():
	default:
		return nil, fmt.Errorf("%w: curve %v (want P-256 or X25519)", ErrKey, c)
	}
	b := make([]byte, n)
	defer clear(b)
	for range 64 {
		if _, err := io.ReadFull(rnd, b); err != nil {
			return nil, fmt.Errorf("suit: ephemeral key: %w", err)
		}
		if k, err := c.NewPrivateKey(b); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: no valid ephemeral key from the random source", ErrKey)
}
