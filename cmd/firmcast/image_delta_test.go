package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/schemas/suit"
)

// TestImageDeltaCLI: `image delta --from --to` makes the delta between two
// uploaded images on the server, once, and names what is wrong otherwise.
func TestImageDeltaCLI(t *testing.T) {
	url := apiStartServer(t)
	t.Setenv("FIRMCAST_SERVER", url)
	t.Setenv("FIRMCAST_API_KEY", "cli-admin-0123456789abcdef01")
	dir := t.TempDir()
	v1 := make([]byte, 30000)
	rand.Read(v1)
	v2 := bytes.Clone(v1)
	copy(v2[12000:], "a small change")
	digests := map[string]string{}
	for name, b := range map[string][]byte{"v1": v1, "v2": v2} {
		p := filepath.Join(dir, name+".bin")
		os.WriteFile(p, b, 0o600)
		out, err := runFirmcast(t, "image", "upload", p)
		if err != nil {
			t.Fatal(err)
		}
		digests[name] = regexp.MustCompile(`^[0-9a-f]{64}`).FindString(out)
	}
	out, err := runFirmcast(t, "image", "delta", "--from", digests["v1"], "--to", digests["v2"])
	if err != nil || !regexp.MustCompile(`^[0-9a-f]{64}  delta of [0-9]+ bytes \([0-9.]+% of the 30000-byte image\)`).MatchString(out) {
		t.Fatalf("image delta: %v\n%s", err, out)
	}
	var img struct {
		Digest    string `json:"digest"`
		DeltaFrom string `json:"delta_from"`
		DeltaTo   string `json:"delta_to"`
		Size      int64  `json:"size"`
	}
	out, err = runFirmcast(t, "image", "delta", "--from", digests["v1"], "--to", digests["v2"], "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &img); err != nil || img.DeltaFrom != digests["v1"] || img.DeltaTo != digests["v2"] || img.Size*10 > 30000 {
		t.Fatalf("image delta --json: %+v, %v\n%s", img, err, out)
	}
	if !strings.HasPrefix(out, "{") || !strings.Contains(mustList(t), img.Digest) {
		t.Errorf("the delta is not listed with the images")
	}
	if _, err := runFirmcast(t, "image", "delta", "--from", strings.Repeat("ab", 32), "--to", digests["v2"]); err == nil ||
		!strings.Contains(err.Error(), "source image") {
		t.Errorf("unknown source: %v", err)
	}
	if _, err := runFirmcast(t, "image", "delta", "--to", digests["v2"]); err == nil || !strings.Contains(err.Error(), "from") {
		t.Errorf("no --from: %v", err)
	}
}

func mustList(t *testing.T) string {
	t.Helper()
	out, err := runFirmcast(t, "image", "list")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestManifestCreateDeltaFrom: `manifest create --delta-from` writes the
// delta beside the envelope and the envelope offers it, from the source
// image, with the delta's digest, size and chunk table.
func TestManifestCreateDeltaFrom(t *testing.T) {
	dir := t.TempDir()
	v1 := make([]byte, 20000)
	rand.Read(v1)
	v2 := bytes.Clone(v1)
	copy(v2[5000:], "a small change")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		return p
	}
	src, img := write("v1.bin", v1), write("v2.bin", v2)
	key := filepath.Join(dir, "k")
	if _, err := runFirmcast(t, "keys", "gen", "--alg", "ed25519", "--out", key); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "v2.suit")
	text, err := runFirmcast(t, "manifest", "create", "--image", img, "--vendor-id", vendorUUID, "--class-id", classUUID, "--seq", "2",
		"--key", key+".pem", "--out", out, "--chunk-size", "1024", "--delta-from", src)
	if err != nil {
		t.Fatalf("manifest create: %v\n%s", err, text)
	}
	files, _ := filepath.Glob(out + ".delta-*.bin")
	if len(files) != 1 {
		t.Fatalf("delta files %v\n%s", files, text)
	}
	d, _ := os.ReadFile(files[0])
	env, _ := os.ReadFile(out)
	m, err := suit.Decode(env)
	if err != nil {
		t.Fatal(err)
	}
	offers, err := m.Deltas()
	if err != nil || len(offers) != 1 {
		t.Fatalf("offers %+v, %v", offers, err)
	}
	ss, ds := sha256.Sum256(v1), sha256.Sum256(d)
	if o := offers[0]; !bytes.Equal(o.SourceDigest, ss[:]) || !bytes.Equal(o.Digest, ds[:]) || o.Size != uint64(len(d)) || o.ChunkSize != 1024 {
		t.Fatalf("offer %+v", o)
	}
	if len(d)*10 > len(v2) {
		t.Errorf("delta of %d bytes for a %d-byte image", len(d), len(v2))
	}
}
