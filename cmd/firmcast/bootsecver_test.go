package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `firmcast boot stage` takes the security counter from the envelope (the
// manifest's security version, made by `manifest create
// --security-version`), not from a flag defaulting to 0: without an
// envelope the flag is required, a flag that disagrees with the envelope
// is refused, and an envelope without a security version keeps the floor.
func TestBootStageSecurityCounterFromEnvelope(t *testing.T) {
	dir := t.TempDir()
	img := func(v int) string {
		p := filepath.Join(dir, "v"+string(rune('0'+v))+".bin")
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte('a' + v), 'f', 'w'}, 3000+v), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := filepath.Join(dir, "signer")
	if _, err := runFirmcast(t, "keys", "gen", "--alg", "ed25519", "--out", key); err != nil {
		t.Fatal(err)
	}
	envelope := func(v int, sv string) string {
		out := filepath.Join(dir, "v"+string(rune('0'+v))+".suit")
		args := []string{"manifest", "create", "--image", img(v), "--vendor-id", vendorUUID, "--class-id", classUUID,
			"--seq", "17960832000" + string(rune('0'+v)), "--key", key + ".pem", "--out", out}
		if sv != "" {
			args = append(args, "--security-version", sv)
		}
		if _, err := runFirmcast(t, args...); err != nil {
			t.Fatal(err)
		}
		return out
	}
	flash := filepath.Join(dir, "dev.flash")
	var initOut struct{}
	bootJSON(t, &initOut, "init", "--flash", flash, "--slots", "3", "--slot-size", "65536", "--device-key", "000102030405060708090a0b0c0d0e0f")
	if _, err := bootCLI(t, "stage", "--flash", flash, "--image", img(1), "--version", "1"); err == nil || !strings.Contains(err.Error(), "--security-counter is required") {
		t.Errorf("stage without envelope or counter: %v", err)
	}
	var staged struct {
		Version         uint64 `json:"version"`
		SecurityCounter uint64 `json:"security_counter"`
	}
	var r runOut
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", img(1), "--version", "1", "--security-counter", "1")
	bootJSON(t, &r, "run", "--flash", flash)
	env2 := envelope(2, "5")
	if _, err := bootCLI(t, "stage", "--flash", flash, "--image", img(2), "--envelope", env2, "--security-counter", "4"); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Errorf("a counter that disagrees with the envelope: %v", err)
	}
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", img(2), "--envelope", env2)
	if staged.SecurityCounter != 5 || staged.Version != 179608320002 {
		t.Fatalf("staged %+v, want the envelope's security version 5 (not its sequence number)", staged)
	}
	bootJSON(t, &r, "run", "--flash", flash)
	var st struct {
		Floor uint64 `json:"floor"`
	}
	bootJSON(t, &st, "confirm", "--flash", flash)
	if st.Floor != 5 {
		t.Fatalf("floor %d after confirming security version 5", st.Floor)
	}
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", img(3), "--envelope", envelope(3, ""))
	if staged.SecurityCounter != 5 {
		t.Errorf("an envelope without security version staged with counter %d, want the floor 5", staged.SecurityCounter)
	}
}
