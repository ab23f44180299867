package suit

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestContentCipherRoundTrip(t *testing.T) {
	pt := testImage(5000)
	for _, alg := range []Algorithm{A128GCM, A256GCM, A128CTR, A256CTR} {
		t.Run(encAlgName(alg), func(t *testing.T) {
			c, err := NewContentCipher(alg, newDetRand(encAlgName(alg)))
			if err != nil {
				t.Fatal(err)
			}
			ct, err := c.Seal(pt)
			if err != nil {
				t.Fatal(err)
			}
			if len(ct) != len(pt)+c.Overhead() || bytes.Contains(ct, pt[:64]) {
				t.Fatalf("ciphertext of %d bytes", len(ct))
			}
			// The device's side: the info through the wire, the key from
			// the backend's copy.
			info, err := DecodeEncryptionInfo(c.Info(Recipient{Alg: A128KW, WrappedKey: make([]byte, 24)}).Encode())
			if err != nil {
				t.Fatal(err)
			}
			d, err := info.Cipher(c.Key())
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Open(ct)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open: %v", err)
			}
			if c.Authenticated() {
				bad := bytes.Clone(ct)
				bad[len(bad)/2] ^= 1
				if _, err := d.Open(bad); !errors.Is(err, ErrDecrypt) {
					t.Fatalf("tampered: %v, want ErrDecrypt", err)
				}
				if _, err := d.NewReader(bytes.NewReader(ct), 0); !errors.Is(err, ErrParameter) {
					t.Fatalf("GCM reader: %v", err)
				}
				return
			}
			// Streaming both ways, in odd-sized pieces, equals Seal.
			r, _ := d.NewReader(iotest.OneByteReader(bytes.NewReader(ct)), 0)
			got, err = io.ReadAll(r)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("NewReader: %v", err)
			}
			var buf bytes.Buffer
			w, _ := c.NewWriter(&buf, 0)
			for rest := pt; len(rest) > 0; {
				n := min(len(rest), 7777)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if !bytes.Equal(buf.Bytes(), ct) {
				t.Fatal("NewWriter differs from Seal")
			}
		})
	}
}

// TestCTROffset: a stream started at any offset (a resumed copy) gives
// the same bytes as the whole stream from 0, also when the counter's low
// 64 bits carry into the high ones.
func TestCTROffset(t *testing.T) {
	pt := testImage(1000)
	for _, iv := range [][]byte{
		mustHex("000102030405060708090a0b0c0d0e0f"),
		mustHex("00000000000000fffffffffffffffffe"), // carries after 2 blocks
		mustHex("ffffffffffffffffffffffffffffffff"), // wraps the whole block
	} {
		key := bytes.Repeat([]byte{5}, 16)
		c, err := newContentCipher(A128CTR, key, iv, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Reference: crypto/cipher's CTR over the whole payload.
		blk, _ := aes.NewCipher(key)
		want := make([]byte, len(pt))
		cipher.NewCTR(blk, iv).XORKeyStream(want, pt)
		for _, off := range []uint64{0, 1, 15, 16, 17, 32, 33, 500, 999} {
			r, _ := c.NewReader(bytes.NewReader(pt[off:]), off)
			got, _ := io.ReadAll(r)
			if !bytes.Equal(got, want[off:]) {
				t.Fatalf("iv %x offset %d: differs", iv, off)
			}
		}
	}
}

// TestContentCipherFresh: every payload gets its own key and IV from
// crypto/rand; an injected reader makes them reproducible.
func TestContentCipherFresh(t *testing.T) {
	keys, ivs := map[string]bool{}, map[string]bool{}
	for i := 0; i < 1000; i++ {
		c, err := NewContentCipher(A128CTR, nil)
		if err != nil {
			t.Fatal(err)
		}
		if keys[string(c.key)] || ivs[string(c.iv)] {
			t.Fatalf("key or IV repeated after %d payloads", i)
		}
		keys[string(c.key)], ivs[string(c.iv)] = true, true
	}
	a, _ := NewContentCipher(A256GCM, newDetRand("s"))
	b, _ := NewContentCipher(A256GCM, newDetRand("s"))
	if !bytes.Equal(a.Key(), b.Key()) || !bytes.Equal(a.iv, b.iv) {
		t.Fatal("same reader, different key or IV")
	}
	if _, err := NewContentCipher(A128GCM, iotest.ErrReader(io.ErrUnexpectedEOF)); err == nil {
		t.Fatal("a failing reader made a key")
	}
}

func TestEncryptionInfoCipherRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		info EncryptionInfo
		cek  []byte
		want error
	}{
		{"unknown content algorithm", EncryptionInfo{Alg: 2, IV: make([]byte, 12)}, make([]byte, 24), ErrUnknownAlgorithm},
		{"ChaCha20/Poly1305", EncryptionInfo{Alg: 24, IV: make([]byte, 12)}, make([]byte, 32), ErrUnknownAlgorithm},
		{"GCM IV of 16 bytes", EncryptionInfo{Alg: A128GCM, IV: make([]byte, 16)}, make([]byte, 16), ErrMalformed},
		{"CTR IV of 12 bytes", EncryptionInfo{Alg: A128CTR, IV: make([]byte, 12)}, make([]byte, 16), ErrMalformed},
		{"A256 key for A128GCM", EncryptionInfo{Alg: A128GCM, IV: make([]byte, 12)}, make([]byte, 32), ErrKeyUnwrap},
		{"A128 key for A256CTR", EncryptionInfo{Alg: A256CTR, IV: make([]byte, 16)}, make([]byte, 16), ErrKeyUnwrap},
	} {
		if _, err := tc.info.Cipher(tc.cek); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := NewContentCipher(A128KW, nil); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("A128KW as a content algorithm: %v", err)
	}
	c, _ := NewContentCipher(A128GCM, nil)
	if _, err := c.Seal(make([]byte, MaxAEADPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize GCM payload: %v", err)
	}
}
