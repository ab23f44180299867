package publisher

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

func TestDeviceAuthenticator(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-1", Class: "sensor", Secret: "s3cret-s3cret-0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	backends := broker.NewCredentialStore()
	if err := backends.Add(broker.Identity{Username: "backend", Role: broker.RoleBackend}, "backend-secret"); err != nil {
		t.Fatal(err)
	}
	auth := p.DeviceAuthenticator(backends)
	id, err := auth.Authenticate(ctx, "dev-1", "s3cret-s3cret-0123456789abcdef")
	if err != nil || id.Role != broker.RoleDevice || id.Device != "dev-1" || id.Class != "sensor" {
		t.Errorf("device: %+v, %v", id, err)
	}
	if _, err := auth.Authenticate(ctx, "dev-1", "wrong"); !errors.Is(err, broker.ErrNotAuthorized) {
		t.Errorf("wrong secret: %v", err)
	}
	if id, err := auth.Authenticate(ctx, "backend", "backend-secret"); err != nil || id.Role != broker.RoleBackend {
		t.Errorf("backend via next: %+v, %v", id, err)
	}
	for _, u := range []string{"nobody", "a.b", ""} {
		if _, err := p.DeviceAuthenticator(nil).Authenticate(ctx, u, "x"); !errors.Is(err, broker.ErrNotAuthorized) {
			t.Errorf("user %q without next: %v", u, err)
		}
	}
}

// The registry's hashes are mosquitto's: mosquitto_passwd's verify with
// VerifySecret, and a mosquitto process accepts devices from a password
// file made of MosquittoPasswordLines.
func TestMosquittoReadsRegistryHashes(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if out, err := exec.Command("mosquitto_passwd", "-b", "-c", pw, "u1", "pass-word-1").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	b, _ := os.ReadFile(pw)
	_, hash, _ := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !VerifySecret(hash, "pass-word-1") || VerifySecret(hash, "pass-word-2") {
		t.Fatalf("VerifySecret disagrees with mosquitto_passwd on %q", hash)
	}

	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-1", Class: "sensor", Secret: "device-secret-1-0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	lines, err := p.MosquittoPasswordLines(ctx)
	if err != nil || len(lines) != 1 {
		t.Fatalf("lines %v, %v", lines, err)
	}
	os.WriteFile(pw, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	mq := testutil.StartMosquitto(t, "allow_anonymous false\npassword_file "+pw+"\n")
	dial := func(secret string) error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		tr, err := broker.Dial(cctx, broker.Config{URL: mq.URL(), Username: "dev-1", Password: secret, ClientID: "dev-1"})
		if err == nil {
			tr.Close(ctx)
		}
		return err
	}
	if err := dial("device-secret-1-0123456789abcdef"); err != nil {
		t.Errorf("mosquitto refused the registered secret: %v", err)
	}
	if err := dial("wrong-secret"); err == nil {
		t.Error("mosquitto accepted a wrong secret")
	}
}
