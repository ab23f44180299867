package suit

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
)

func rawItem(b []byte) cbor.RawMessage { return cbor.RawMessage(b) }

// encImage is an image encrypted the backend's way: the ciphertext, the
// content cipher, and the ImageEncryption with an escrow recipient.
type encImage struct {
	plain, cipher []byte
	cc            *ContentCipher
	enc           *ImageEncryption
}

func encryptTestImage(t *testing.T, plain []byte, escrow KEK) encImage {
	t.Helper()
	cc, err := NewContentCipher(A128CTR, nil)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := cc.Seal(plain)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(plain)
	wd, err := cc.SealDigest(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	esc, err := cc.WrapFor(escrow, nil)
	if err != nil {
		t.Fatal(err)
	}
	return encImage{plain: plain, cipher: ct, cc: cc, enc: &ImageEncryption{Info: cc.Info(*esc), PlaintextDigest: wd}}
}

// An encrypted image's manifest signs the ciphertext's digest, size and
// chunk table and carries the encryption parameter; the device finds its
// content key in the recipient from its notice (not the escrow one),
// decrypts chunks in any order where they land, and the wrapped plaintext
// digest accepts the result. The plaintext's SHA-256 is nowhere in the
// envelope.
func TestImageEncryptionRoundTrip(t *testing.T) {
	ctx := context.Background()
	plain := testImage(50000)
	escrow := KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}
	dev := KEK{KeyID: []byte("dev-1"), Key: bytes.Repeat([]byte{0xd1}, 16)}
	ecPriv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ei := encryptTestImage(t, plain, escrow)
	signer, pub := mustSigner(t, "ed25519", EdDSA)
	env, err := Create(ctx, CreateOptions{Image: bytes.NewReader(ei.cipher), VendorID: testVendor, ClassID: testClass, Seq: 3, ChunkSize: 4096, Encryption: ei.enc}, signer)
	if err != nil {
		t.Fatal(err)
	}
	plainSum := sha256.Sum256(plain)
	if bytes.Contains(env, plainSum[:]) {
		t.Fatal("the envelope holds the plaintext's SHA-256")
	}
	m, err := Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := m.ImageDigest()
	if cs := sha256.Sum256(ei.cipher); !bytes.Equal(d.Bytes, cs[:]) {
		t.Fatal("the manifest's image digest is not the ciphertext's")
	}
	ci, _ := m.ChunkInfo()
	table, err := schemas.BuildChunkTable(bytes.NewReader(ei.cipher), 4096)
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := schemas.Encode(table)
	if ts := sha256.Sum256(tb); !bytes.Equal(ci.TableDigest.Bytes, ts[:]) {
		t.Fatal("the signed chunk table is not the ciphertext's")
	}
	enc, ok, err := m.ImageEncryption()
	if err != nil || !ok {
		t.Fatalf("ImageEncryption: %v %v", ok, err)
	}
	for _, c := range []struct {
		name string
		key  KeyUnwrapper
		wrap KeyWrapper
	}{
		{"A128KW", dev, dev},
		{"ECDH-ES+A128KW", ECDHKey{KeyID: []byte("dev-2"), Key: ecPriv}, ECDHPublicKey{KeyID: []byte("dev-2"), Key: ecPriv.PublicKey()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := ei.cc.WrapFor(c.wrap, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Delivered apart (the notice): encoded and decoded.
			got, err := DecodeRecipient(r.Encode())
			if err != nil {
				t.Fatal(err)
			}
			cc, err := enc.ContentCipher(ctx, c.key, *got)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]byte, len(ei.cipher))
			for _, i := range []int{3, 0, 12, 7, 1, 2, 4, 5, 6, 8, 9, 10, 11} { // chunks land in any order
				lo, hi := i*4096, min((i+1)*4096, len(out))
				if err := cc.XORAt(out[lo:hi], ei.cipher[lo:hi], uint64(lo)); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(out, plain) {
				t.Fatal("chunk-wise decryption differs from the plaintext")
			}
			d, err := enc.OpenDigest(cc)
			if err != nil || !bytes.Equal(d, plainSum[:]) {
				t.Fatalf("the wrapped plaintext digest opens to %x (%v)", d, err)
			}
			// The key and counter block a bootloader decrypts an encrypted
			// slot with: plain AES-CTR over the whole image.
			key, iv, err := cc.CTRKey()
			if err != nil {
				t.Fatal(err)
			}
			blk, err := aes.NewCipher(key)
			if err != nil {
				t.Fatal(err)
			}
			cipher.NewCTR(blk, iv).XORKeyStream(out, ei.cipher)
			if !bytes.Equal(out, plain) {
				t.Fatal("AES-CTR with CTRKey's key and IV does not decrypt the image")
			}
			gcm, err := NewContentCipher(A128GCM, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := gcm.CTRKey(); !errors.Is(err, ErrParameter) {
				t.Fatalf("CTRKey of a GCM cipher: %v, want ErrParameter", err)
			}
		})
	}
}

// Keys that are not the device's, an algorithm that is not an image
// one, and a foreign content key (a forged or swapped recipient, which
// does not open the signed wrapped digest) are refused before anything
// is decrypted.
func TestImageEncryptionRefusals(t *testing.T) {
	ctx := context.Background()
	escrow := KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}
	dev := KEK{KeyID: []byte("dev-1"), Key: bytes.Repeat([]byte{0xd1}, 16)}
	other := KEK{KeyID: []byte("dev-1"), Key: bytes.Repeat([]byte{0x0f}, 16)}
	ei := encryptTestImage(t, testImage(9000), escrow)
	mine, _ := ei.cc.WrapFor(dev, nil)
	notMine, _ := ei.cc.WrapFor(KEK{KeyID: []byte("dev-9"), Key: other.Key}, nil)

	if _, err := ei.enc.ContentCipher(ctx, other, *mine); !errors.Is(err, ErrKeyUnwrap) {
		t.Errorf("wrong KEK: %v, want ErrKeyUnwrap", err)
	}
	if _, err := ei.enc.ContentCipher(ctx, dev, *notMine); !errors.Is(err, ErrNoRecipient) {
		t.Errorf("a wrapped key for another device: %v, want ErrNoRecipient", err)
	}
	if _, err := ei.enc.ContentCipher(ctx, dev); !errors.Is(err, ErrNoRecipient) {
		t.Errorf("no recipient: %v, want ErrNoRecipient", err)
	}
	tampered := *mine
	tampered.raw, tampered.WrappedKey = nil, bytes.Clone(mine.WrappedKey)
	tampered.WrappedKey[3] ^= 1
	if _, err := ei.enc.ContentCipher(ctx, dev, tampered); !errors.Is(err, ErrKeyUnwrap) {
		t.Errorf("tampered wrapped key: %v, want ErrKeyUnwrap", err)
	}
	gcm := &ImageEncryption{Info: &EncryptionInfo{Alg: A128GCM, IV: make([]byte, 12), Recipients: ei.enc.Info.Recipients}, PlaintextDigest: ei.enc.PlaintextDigest}
	if _, err := gcm.ContentCipher(ctx, dev, *mine); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("GCM image: %v, want ErrUnknownAlgorithm", err)
	}
	// A forged content key unwraps but does not open the signed digest.
	forged, _ := NewContentCipher(A128CTR, nil)
	fr, _ := forged.WrapFor(dev, nil)
	if _, err := ei.enc.ContentCipher(ctx, dev, *fr); !errors.Is(err, ErrKeyUnwrap) {
		t.Fatalf("another image's content key: %v, want ErrKeyUnwrap", err)
	}
}

func TestDecodeImageEncryptionMalformed(t *testing.T) {
	escrow := KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}
	ei := encryptTestImage(t, testImage(100), escrow)
	good := ei.enc.Encode()
	if _, err := DecodeImageEncryption(good); err != nil {
		t.Fatal(err)
	}
	info := ei.enc.Info.Encode()
	for name, v := range map[string]any{
		"not wrapped":   map[int64]any{1: info, 2: make([]byte, 40)},
		"short digest":  marshal(map[int64]any{1: rawItem(info), 2: make([]byte, 32)}),
		"no info":       marshal(map[int64]any{2: make([]byte, 40)}),
		"no digest":     marshal(map[int64]any{1: rawItem(info)}),
		"unknown key":   marshal(map[int64]any{1: rawItem(info), 2: make([]byte, 40), 3: 1}),
		"info is bytes": marshal(map[int64]any{1: info, 2: make([]byte, 40)}),
	} {
		if _, err := DecodeImageEncryption(marshal(v)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// IVs and content keys are fresh per image: over many images none
// repeats (a repeated key and IV would reveal the XOR of two images).
func TestContentCipherFreshness(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		cc, err := NewContentCipher(A128CTR, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"k" + string(cc.Key()), "iv" + string(cc.Info().IV)} {
			if seen[k] {
				t.Fatal("a content key or IV repeated")
			}
			seen[k] = true
		}
	}
}

// FuzzDecodeImageEncryption: decoding firmcast's encryption parameter
// never panics; what decodes re-encodes to bytes that decode to the same
// info and digest, and looking for a content key or opening the digest
// with a fixed key never panics. Seeded from the malformed table and a
// valid parameter.
func FuzzDecodeImageEncryption(f *testing.F) {
	escrow := KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}
	plain := testImage(300)
	cc, _ := NewContentCipher(A128CTR, bytes.NewReader(bytes.Repeat([]byte{1}, 64)))
	sum := sha256.Sum256(plain)
	wd, _ := cc.SealDigest(sum[:])
	esc, _ := cc.WrapFor(escrow, nil)
	good := (&ImageEncryption{Info: cc.Info(*esc), PlaintextDigest: wd}).Encode()
	f.Add(good)
	info := cc.Info(*esc).Encode()
	for _, v := range []any{
		map[int64]any{1: rawItem(info), 2: make([]byte, 32)},
		map[int64]any{2: make([]byte, 40)},
		map[int64]any{1: rawItem(info), 2: make([]byte, 40), 3: 1},
		map[int64]any{1: info, 2: make([]byte, 40)},
	} {
		f.Add(marshal(marshal(v)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeImageEncryption(b)
		if err != nil {
			return
		}
		again, err := DecodeImageEncryption(e.Encode())
		if err != nil || !bytes.Equal(again.PlaintextDigest, e.PlaintextDigest) || !bytes.Equal(again.Info.Encode(), e.Info.Encode()) {
			t.Fatalf("re-encoding changes the parameter: %v", err)
		}
		if c, err := e.ContentCipher(context.Background(), escrow); err == nil {
			if _, err := e.OpenDigest(c); err != nil {
				t.Fatalf("ContentCipher succeeded but the digest does not open: %v", err)
			}
		}
	})
}

// An encrypted delta's info travels in DeltaInfo (key 8) and round-trips;
// its content key, fresh and not the image's, unwraps with the image's
// DeltaKEK and with nothing else: not the image's content key itself, not
// another image's DeltaKEK.
func TestDeltaEncryption(t *testing.T) {
	ctx := context.Background()
	escrow := KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}
	img := encryptTestImage(t, testImage(4000), escrow)
	other := encryptTestImage(t, testImage(4000), escrow)
	dplain := testImage(900)
	dcc, err := NewContentCipher(A128CTR, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(dcc.Key(), img.cc.Key()) || bytes.Equal(dcc.Info().IV, img.cc.Info().IV) {
		t.Fatal("the delta's key or IV is the image's")
	}
	r, err := dcc.WrapFor(img.cc.DeltaKEK(), nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(dplain)
	wd, err := dcc.SealDigest(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	info := deltaOffer([]byte("src"), 1)
	info.ChunkSize = 1024
	info.Encryption = &ImageEncryption{Info: dcc.Info(*r), PlaintextDigest: wd}
	got, err := decodeDeltaInfo(info.encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.Encryption == nil || !bytes.Equal(got.Encryption.Encode(), info.Encryption.Encode()) {
		t.Fatal("the delta's encryption did not round-trip")
	}
	c, err := got.Encryption.DeltaCipher(ctx, img.cc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Key(), dcc.Key()) {
		t.Fatal("DeltaCipher unwrapped another key")
	}
	if d, err := got.Encryption.OpenDigest(c); err != nil || !bytes.Equal(d, sum[:]) {
		t.Fatalf("the delta's plaintext digest: %x, %v", d, err)
	}
	if _, err := got.Encryption.DeltaCipher(ctx, other.cc); !errors.Is(err, ErrKeyUnwrap) {
		t.Fatalf("another image's DeltaKEK: %v, want ErrKeyUnwrap", err)
	}
	if _, err := got.Encryption.ContentCipher(ctx, KEK{KeyID: []byte(DeltaKeyID), Key: img.cc.Key()}); !errors.Is(err, ErrKeyUnwrap) {
		t.Fatalf("the image's content key used as the KEK: %v, want ErrKeyUnwrap", err)
	}
}
