package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
