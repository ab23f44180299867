package publisher_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

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
	if !publisher.VerifySecret(hash, "pass-word-1") || publisher.VerifySecret(hash, "pass-word-2") {
		t.Fatalf("VerifySecret disagrees with mosquitto_passwd on %q", hash)
	}

	st := stacktest.Start(t, stack.Config{Topics: testutil.UniqueTopics(t), NoMQTT: true})
	p := st.Pub
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, st.Admin, publisher.NewDevice{ID: "dev-1", Class: "sensor", Secret: "device-secret-1-0123456789abcdef"}); err != nil {
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
