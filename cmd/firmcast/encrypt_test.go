package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/publisher"
)

// The operator's path to an encrypted image: `device key --generate
// --out` provisions a device KEK (written once, mode 0600), `boot init
// --kek-file` puts it in the device file, `image add --encrypt
// --recipients` stores the image encrypted (GET /images serves the
// ciphertext, named by its digest); bad flag combinations are refused.
func TestEncryptCommands(t *testing.T) {
	const admin = "cli-admin-0123456789abcdef01"
	url := apiStartServer(t, func(c *publisher.Config) { c.KeyCustody = bytes.Repeat([]byte{0x5c}, 16) })
	t.Setenv("FIRMCAST_SERVER", url)
	t.Setenv("FIRMCAST_API_KEY", admin)
	must := func(args ...string) string { t.Helper(); return mustFirmcast(t, args...) }
	dir := t.TempDir()
	must("device", "add", "d1", "--class", "sensor")
	must("device", "add", "d2", "--class", "sensor")
	kekFile := filepath.Join(dir, "d1.kek")
	if out := must("device", "key", "d1", "--generate", "--out", kekFile); !strings.Contains(out, "d1#1") {
		t.Errorf("device key --generate: %s", out)
	}
	fi, err := os.Stat(kekFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file: %v %v", fi, err)
	}
	kekHex, _ := os.ReadFile(kekFile)
	if out, err := runFirmcast(t, "device", "show", "d1"); err != nil || strings.Contains(out, strings.TrimSpace(string(kekHex))) {
		t.Errorf("device show answers with the KEK (or failed: %v)", err)
	}
	flash := filepath.Join(dir, "flash")
	must("boot", "init", "--flash", flash, "--slot-size", "65536", "--kek-file", kekFile, "--kek-id", "d1#1")
	df, err := devicefile.Read(flash)
	if err != nil || df.KEK != strings.TrimSpace(string(kekHex)) || df.KEKID != "d1#1" {
		t.Fatalf("device file: kek %q id %q, %v", df.KEK, df.KEKID, err)
	}

	img := filepath.Join(dir, "fw.bin")
	data := make([]byte, 5000)
	rand.Read(data)
	os.WriteFile(img, data, 0o600)
	for _, bad := range [][]string{
		{"image", "add", img, "--encrypt"},
		{"image", "add", img, "--recipients", "device:d1"},
		{"image", "add", img, "--encrypt", "--recipients", "dev:d1"},
		{"image", "add", img, "--encrypt", "--recipients", "device:d2"}, // no key
		{"device", "key", "d1", "--generate"},
	} {
		if _, err := runFirmcast(t, bad...); err == nil {
			t.Errorf("firmcast %s: accepted", strings.Join(bad, " "))
		}
	}
	out := must("image", "add", img, "--encrypt", "--recipients", "device:d1")
	digest := regexp.MustCompile(`^[0-9a-f]{64}`).FindString(out)
	if digest == "" || !strings.Contains(out, "encrypted") {
		t.Fatalf("image add --encrypt printed %q", out)
	}
	req, _ := http.NewRequest("GET", url+"/images/"+digest, nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if sum := sha256.Sum256(ct); hex.EncodeToString(sum[:]) != digest || bytes.Contains(ct, data[:64]) || len(ct) != len(data) {
		t.Fatal("GET /images does not serve the ciphertext the digest names")
	}
	if img, err := (&publisher.Client{BaseURL: url, Key: admin}).Image(context.Background(), digest); err != nil || !img.Encrypted {
		t.Errorf("image record: %+v %v", img, err)
	}
}
