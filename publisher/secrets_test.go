package publisher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/broker"
)

// A network client holding only a read-scoped API key lists the devices,
// shows one, and (with the admin key) lists the API keys, creates a
// device and a key: no answer carries a device secret's hash or a key's
// hash, in any field.
func TestReadKeyGetsNoSecretHashes(t *testing.T) {
	f := newAPIFixture(t)
	admin := testAdminKey
	for _, c := range []struct{ method, path, key, body string }{
		{"GET", "/api/v1/devices", f.read, ""},
		{"GET", "/api/v1/devices/" + devName(0), f.read, ""},
		{"GET", "/api/v1/devices", admin, ""},
		{"GET", "/api/v1/apikeys", admin, ""},
		{"POST", "/api/v1/devices", admin, `{"id":"dev-new","class":"sensor"}`},
		{"POST", "/api/v1/apikeys", admin, `{"name":"k","scopes":["read"]}`},
	} {
		code, body := f.do(t, c.method, c.path, c.key, c.body)
		if code >= 300 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, code, body)
		}
		for _, leak := range []string{"secret_hash", "$7$", `"hash"`, "hmac-sha256$"} {
			if strings.Contains(body, leak) {
				t.Errorf("%s %s answers with %q:\n%s", c.method, c.path, leak, body)
			}
		}
	}
}

// Device secrets hold at least 128 bits: generated ones do; a shorter one
// chosen by the operator is refused with an error that says why.
func TestDeviceSecretStrength(t *testing.T) {
	for _, c := range []struct {
		secret string
		ok     bool
	}{
		{"s3cret-s3cret", false},
		{"0123456789abcdef0123456789abcde", false}, // 31 hex: 124 bits
		{"0123456789abcdef0123456789abcdef", true}, // 32 hex: 128 bits
		{"123456789012345678901234567890123456789", true},
		{"12345678901234567890123456789012345678", false}, // 38 digits: 126 bits
		{"AbCdEfGhIjKlMnOpQrStUv", true},                  // 22 base64: 132 bits
		{"AbCdEfGhIjKlMnOpQrStU", false},
		{"!!!!!!!!!!!!!!!!!!!!", true},
		{"secret with spaces 0123456789abcdef", false},
		{strings.Repeat("a", 257), false},
	} {
		err := CheckSecretStrength(c.secret)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("CheckSecretStrength(%q) = %v, want ok=%v", c.secret, err, c.ok)
		}
	}
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	_, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-weak", Class: "c", Secret: "password1"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "need 128") {
		t.Errorf("a 9-character secret: %v, want ErrInvalid saying it needs 128 bits", err)
	}
	_, secret, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-gen", Class: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if CheckSecretStrength(secret) != nil || len(secret) < 32 {
		t.Errorf("generated secret %q is weak", secret)
	}
}

// The bootstrap key needs 128 bits, is stored salted (two publishers
// configured with the same key store different hashes) and is still
// accepted; a key stored unsalted before still verifies.
func TestBootstrapKeyStrengthAndSalt(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := e.cfg
	cfg.Transport = e.hub.Conn()
	cfg.BootstrapKey = "short-key"
	if _, err := New(ctx, cfg); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "bootstrap API key") {
		t.Errorf("short bootstrap key: %v, want ErrInvalid naming it", err)
	}
	p, _ := e.start(nil)
	var rec apiKeyRecord
	if _, err := getJSON(ctx, p.st.keys, "api key", bootstrapKeyID, &rec); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec.Hash, "hmac-sha256$") || strings.Contains(rec.Hash, fmt.Sprintf("%x", []byte(testAdminKey))) {
		t.Errorf("bootstrap key stored as %q, want a salted HMAC", rec.Hash)
	}
	if h1, h2 := hashToken(testAdminKey), hashToken(testAdminKey); h1 == h2 {
		t.Error("two hashes of one token are equal: no salt")
	}
	if _, err := p.Authenticate(ctx, testAdminKey); err != nil {
		t.Errorf("bootstrap key refused: %v", err)
	}
	if verifyToken(rec.Hash, testAdminKey+"x") {
		t.Error("a wrong token verified")
	}
	// Keys stored by earlier versions: hex SHA-256.
	legacy := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" // sha256("test")
	if !verifyToken(legacy, "test") || verifyToken(legacy, "tesT") {
		t.Error("legacy SHA-256 key hashes no longer verify")
	}
}

// BenchmarkConnectAuth measures what one CONNECT costs the embedded
// brokers' authenticator (DeviceAuthenticator: one registry read from an
// embedded JetStream KV and one PBKDF2 verify), with the right secret and
// with a garbage one (the cost an attacker's CONNECT flood imposes), at
// the registry's work factor; VerifySecret alone at several iteration
// counts shows what the work factor costs (mosquitto pays the same per
// CONNECT on its one thread). Run:
//
//	go test -run XXX -bench ConnectAuth -benchtime 2s ./publisher/
func BenchmarkConnectAuth(b *testing.B) {
	e := newEnv(b)
	p, _ := e.start(nil)
	ctx := context.Background()
	_, secret, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-bench", Class: "c"})
	if err != nil {
		b.Fatal(err)
	}
	auth := p.DeviceAuthenticator(nil)
	b.Run("registry/good-secret", func(b *testing.B) {
		for range b.N {
			if _, err := auth.Authenticate(ctx, "dev-bench", secret); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("registry/garbage-secret", func(b *testing.B) {
		for range b.N {
			if _, err := auth.Authenticate(ctx, "dev-bench", "garbage"); !errors.Is(err, broker.ErrNotAuthorized) {
				b.Fatal(err)
			}
		}
	})
	b.Run("registry/unknown-user", func(b *testing.B) {
		for range b.N {
			if _, err := auth.Authenticate(ctx, "dev-nobody", "garbage"); !errors.Is(err, broker.ErrNotAuthorized) {
				b.Fatal(err)
			}
		}
	})
	for _, iter := range []int{101, 1000, 10000, 100000} {
		h, err := hashSecretIter(secret, iter)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("pbkdf2-sha512/iter=%d", iter), func(b *testing.B) {
			for range b.N {
				if VerifySecret(h, "garbage") {
					b.Fatal("garbage verified")
				}
			}
		})
	}
}
