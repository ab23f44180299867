package suit

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

// detRand is a deterministic random source for tests: SHA-256 in counter
// mode over a seed.
type detRand struct {
	seed []byte
	n    uint64
	buf  []byte
}

func newDetRand(seed string) *detRand { return &detRand{seed: []byte(seed)} }

func (d *detRand) Read(p []byte) (int, error) {
	for len(d.buf) < len(p) {
		h := sha256.New()
		h.Write(d.seed)
		h.Write([]byte{byte(d.n >> 56), byte(d.n >> 48), byte(d.n >> 40), byte(d.n >> 32), byte(d.n >> 24), byte(d.n >> 16), byte(d.n >> 8), byte(d.n)})
		d.n++
		d.buf = h.Sum(d.buf)
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

// TestKeyWrapRFC3394 pins AES key wrap to RFC 3394 section 4's vectors
// (4.1: 128-bit key, 128-bit KEK; 4.3: 128-bit key, 256-bit KEK; 4.6:
// 256-bit key, 256-bit KEK), both ways.
func TestKeyWrapRFC3394(t *testing.T) {
	kek128 := mustHex("000102030405060708090A0B0C0D0E0F")
	kek256 := mustHex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	for _, tc := range []struct {
		name         string
		kek, key, ct []byte
	}{
		{"4.1", kek128, mustHex("00112233445566778899AABBCCDDEEFF"), mustHex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")},
		{"4.3", kek256, mustHex("00112233445566778899AABBCCDDEEFF"), mustHex("64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7")},
		{"4.6", kek256, mustHex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F"),
			mustHex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wrapKey(tc.kek, tc.key)
			if err != nil || !bytes.Equal(got, tc.ct) {
				t.Fatalf("wrap = %X, %v; want %X", got, err, tc.ct)
			}
			back, err := unwrapKey(tc.kek, tc.ct, len(tc.key), &Recipient{})
			if err != nil || !bytes.Equal(back, tc.key) {
				t.Fatalf("unwrap = %X, %v", back, err)
			}
			bad := bytes.Clone(tc.ct)
			bad[len(bad)-1] ^= 1
			if _, err := unwrapKey(tc.kek, bad, len(tc.key), &Recipient{}); !errors.Is(err, ErrKeyUnwrap) {
				t.Fatalf("tampered: %v, want ErrKeyUnwrap", err)
			}
		})
	}
	// Sizes that do not fit the content key are refused before unwrapping
	// (the library would panic on fewer than 16 bytes).
	for _, n := range []int{0, 1, 8, 16, 23, 25, 40} {
		if _, err := unwrapKey(kek128, make([]byte, n), 16, &Recipient{}); !errors.Is(err, ErrKeyUnwrap) {
			t.Errorf("%d-byte wrapped key: %v, want ErrKeyUnwrap", n, err)
		}
	}
}

func TestKeyUnwrappers(t *testing.T) {
	ctx := context.Background()
	cek := bytes.Repeat([]byte{7}, 16)
	kekA := KEK{KeyID: []byte("a"), Key: bytes.Repeat([]byte{1}, 16)}
	kekA2 := KEK{KeyID: []byte("a"), Key: bytes.Repeat([]byte{2}, 16)} // same id, rotated
	kek256 := KEK{KeyID: []byte("b"), Key: bytes.Repeat([]byte{3}, 32)}
	p256, _ := ephemeralKey(ecdh.P256(), newDetRand("dev p256"))
	x25519, _ := ephemeralKey(ecdh.X25519(), newDetRand("dev x25519"))
	ecP := ECDHKey{KeyID: []byte("ec"), Key: p256}
	ecX := ECDHKey{KeyID: []byte("ecx"), Key: x25519}
	wrap := func(w KeyWrapper) *Recipient {
		t.Helper()
		r, err := w.WrapKey(cek, newDetRand("eph"))
		if err != nil {
			t.Fatal(err)
		}
		// Through the wire format, as a device receives it.
		d, err := DecodeRecipient(r.Encode())
		if err != nil {
			t.Fatalf("DecodeRecipient: %v", err)
		}
		return d
	}
	rA, rA2, r256 := wrap(kekA), wrap(kekA2), wrap(kek256)
	rP := wrap(ECDHPublicKey{KeyID: []byte("ec"), Key: p256.PublicKey()})
	rP256 := wrap(ECDHPublicKey{KeyID: []byte("ec"), Key: p256.PublicKey(), Alg: ECDHESA256KW})
	rX := wrap(ECDHPublicKey{KeyID: []byte("ecx"), Key: x25519.PublicKey()})
	for _, tc := range []struct {
		name string
		k    KeyUnwrapper
		r    *Recipient
		want error
	}{
		{"A128KW", kekA, rA, nil},
		{"A256KW", kek256, r256, nil},
		{"ECDH-ES+A128KW P-256", ecP, rP, nil},
		{"ECDH-ES+A256KW P-256", ecP, rP256, nil},
		{"ECDH-ES+A128KW X25519", ecX, rX, nil},
		{"other key id", kekA, r256, ErrNoRecipient},
		{"KEK for an ECDH recipient", kekA, rP, ErrNoRecipient},
		{"ECDH key for a KEK recipient", ecP, rA, ErrNoRecipient},
		{"other curve", ECDHKey{Key: x25519}, rP, ErrNoRecipient},
		{"wrong KEK, same id", kekA, rA2, ErrKeyUnwrap},
		{"keyring: rotated key after the old one", Keyring{kekA, kekA2}, rA2, nil},
		{"keyring: KEK and ECDH", Keyring{kekA, ecP}, rP, nil},
		{"keyring: none", Keyring{kek256, ecX}, rA, ErrNoRecipient},
		{"keyring: wrong key", Keyring{kekA}, rA2, ErrKeyUnwrap},
		{"KEK of a bad size", KEK{Key: []byte("short")}, rA, ErrNoRecipient},
		{"ECDH key without a key", ECDHKey{}, rP, ErrNoRecipient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.k.UnwrapKey(ctx, tc.r, 16)
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, cek) {
					t.Fatalf("got %x, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, k := range []KeyUnwrapper{kekA, ecP} {
		if _, err := k.UnwrapKey(cancelled, rA, 16); !errors.Is(err, context.Canceled) {
			t.Errorf("%T with a cancelled ctx: %v", k, err)
		}
	}
}

// TestWrapKeyDeterministic: with an injected reader the ephemeral key,
// and so the recipient, is reproducible; with crypto/rand (nil) it is
// fresh each time.
func TestWrapKeyDeterministic(t *testing.T) {
	dev, _ := ephemeralKey(ecdh.P256(), newDetRand("dev"))
	pub := ECDHPublicKey{KeyID: []byte("d"), Key: dev.PublicKey()}
	cek := bytes.Repeat([]byte{9}, 16)
	a, _ := pub.WrapKey(cek, newDetRand("x"))
	b, _ := pub.WrapKey(cek, newDetRand("x"))
	if !bytes.Equal(a.Encode(), b.Encode()) {
		t.Fatal("same reader, different recipients")
	}
	c, _ := pub.WrapKey(cek, nil)
	d, _ := pub.WrapKey(cek, nil)
	if bytes.Equal(c.Ephemeral.Bytes(), d.Ephemeral.Bytes()) || bytes.Equal(c.WrappedKey, d.WrappedKey) {
		t.Fatal("crypto/rand gave the same ephemeral key twice")
	}
	if _, err := pub.WrapKey(cek, io.LimitReader(newDetRand("short"), 10)); err == nil {
		t.Fatal("a failing reader made a key")
	}
	for _, bad := range []KeyWrapper{KEK{Key: []byte("x")}, ECDHPublicKey{}, ECDHPublicKey{Key: dev.PublicKey(), Alg: A128KW}} {
		if _, err := bad.WrapKey(cek, nil); !errors.Is(err, ErrKey) {
			t.Errorf("%+v: %v, want ErrKey", bad, err)
		}
	}
}
