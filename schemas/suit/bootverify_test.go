package suit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
)

func TestBootVerifier(t *testing.T) {
	key, err := GenerateKey("ed25519", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := GenerateKey("es256", rand.Reader)
	s, err := NewKeySigner(key, Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(5000)
	env, err := Create(context.Background(), CreateOptions{Image: bytes.NewReader(img), VendorID: testVendor, ClassID: testClass, Seq: 7}, s)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := MarshalPublicKeyPEM(key.Public())
	otherPEM, _ := MarshalPublicKeyPEM(other.Public())
	trust, err := ParseTrustPEM(append(append([]byte{}, otherPEM...), pubPEM...))
	if err != nil || len(trust) != 2 {
		t.Fatalf("ParseTrustPEM: %d keys, %v", len(trust), err)
	}
	seq, dg, size, err := BootVerifier{Trust: trust}.VerifyEnvelope(env)
	if err != nil {
		t.Fatalf("VerifyEnvelope: %v", err)
	}
	if seq != 7 || dg != sha256.Sum256(img) || size != uint64(len(img)) {
		t.Fatalf("got seq %d size %d digest %x", seq, size, dg[:4])
	}

	tampered := append([]byte{}, env...)
	tampered[len(tampered)-10] ^= 1
	for _, tc := range []struct {
		name string
		v    BootVerifier
		env  []byte
		want error
	}{
		{"no anchors", BootVerifier{}, env, ErrUntrusted},
		{"other key", BootVerifier{Trust: TrustAnchors{other.Public()}}, env, ErrUntrusted},
		{"tampered", BootVerifier{Trust: trust}, tampered, ErrDigestMismatch},
		{"truncated", BootVerifier{Trust: trust}, env[:len(env)/2], ErrTruncated},
		{"empty", BootVerifier{Trust: trust}, nil, ErrTruncated},
	} {
		if _, _, _, err := tc.v.VerifyEnvelope(tc.env); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	for _, bad := range [][]byte{nil, []byte("junk"), append(append([]byte{}, pubPEM...), "trailing"...),
		[]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")} {
		if _, err := ParseTrustPEM(bad); !errors.Is(err, ErrKey) {
			t.Errorf("ParseTrustPEM(%q): %v, want ErrKey", bad, err)
		}
	}
}
