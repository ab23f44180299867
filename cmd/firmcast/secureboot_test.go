package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// flipInFlash finds needle in the file-backed flash (which stores every byte
// inverted) and flips one bit of its byte at offset at, as an attacker with
// access to the flash chip would.
func flipInFlash(t *testing.T, flash string, needle []byte, at int) {
	t.Helper()
	raw, err := os.ReadFile(flash)
	if err != nil {
		t.Fatal(err)
	}
	inv := make([]byte, len(needle))
	for i, b := range needle {
		inv[i] = ^b
	}
	i := bytes.LastIndex(raw, inv)
	if i < 0 {
		t.Fatalf("%d bytes not found on the flash", len(needle))
	}
	raw[i+at] ^= 0x01
	if err := os.WriteFile(flash, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSecureBootCLI: `boot init --pubkey` turns on secure-boot mode through
// schemas/suit's BootVerifier; an image staged with its validly signed
// envelope boots; an envelope by another key, a tampered envelope, an image
// that is not the one the envelope signs, and an envelope or image altered
// on the flash after staging never boot.
func TestSecureBootCLI(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	imgs := map[int][]byte{}
	for v := 1; v <= 4; v++ {
		imgs[v] = bytes.Repeat([]byte{byte('a' + v), 'f', 'w', byte(v)}, 2500+v*100)
		write(filepath.Join("v"+string(rune('0'+v))+".bin"), imgs[v])
	}
	bin := func(v int) string { return filepath.Join(dir, "v"+string(rune('0'+v))+".bin") }
	key, rogue := filepath.Join(dir, "signer"), filepath.Join(dir, "rogue")
	for _, k := range []string{key, rogue} {
		if _, err := runFirmcast(t, "keys", "gen", "--alg", "ed25519", "--out", k); err != nil {
			t.Fatal(err)
		}
	}
	envelope := func(v int, image, signer string) string {
		out := filepath.Join(dir, filepath.Base(signer)+"-v"+string(rune('0'+v))+".suit")
		if _, err := runFirmcast(t, "manifest", "create", "--image", image, "--vendor-id", vendorUUID,
			"--class-id", classUUID, "--seq", string(rune('0'+v)), "--key", signer+".pem", "--out", out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	flash := filepath.Join(dir, "dev.flash")
	if _, err := bootCLI(t, "init", "--flash", flash, "--slots", "2", "--slot-size", "65536", "--pubkey", write("junk.pem", []byte("junk"))); err == nil || !strings.Contains(err.Error(), "--pubkey") {
		t.Fatalf("init with a junk public key: %v", err)
	}
	var initOut struct {
		SecureBoot bool `json:"secure_boot"`
	}
	bootJSON(t, &initOut, "init", "--flash", flash, "--slots", "2", "--slot-size", "65536", "--pubkey", key+".pub.pem")
	if !initOut.SecureBoot {
		t.Fatal("init did not report secure boot")
	}
	// No envelope at all: refused in secure-boot mode.
	if _, err := bootCLI(t, "stage", "--flash", flash, "--image", bin(1), "--version", "1"); err == nil || !strings.Contains(err.Error(), "no envelope") {
		t.Fatalf("stage without an envelope: %v", err)
	}
	// A valid envelope: v1 boots, version taken from the envelope.
	env1 := envelope(1, bin(1), key)
	var staged struct{ Version uint64 }
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", bin(1), "--envelope", env1)
	if staged.Version != 1 {
		t.Fatalf("staged version %d, want the envelope's 1", staged.Version)
	}
	var r runOut
	bootJSON(t, &r, "run", "--flash", flash)
	if !r.Booted || r.Version != 1 {
		t.Fatalf("first boot: %+v", r)
	}
	bootJSON(t, &r, "confirm", "--flash", flash)

	// Refused at staging: another signer, a tampered envelope, an image the
	// envelope does not sign, a version the envelope does not sign.
	env2 := envelope(2, bin(2), key)
	raw2, _ := os.ReadFile(env2)
	tampered := append([]byte{}, raw2...)
	tampered[len(tampered)-3] ^= 0x40
	for name, args := range map[string][]string{
		"rogue signer":    {"--image", bin(2), "--envelope", envelope(2, bin(2), rogue)},
		"tampered":        {"--image", bin(2), "--envelope", write("tampered.suit", tampered), "--version", "2"},
		"other image":     {"--image", bin(3), "--envelope", env2},
		"version differs": {"--image", bin(2), "--envelope", env2, "--version", "3"},
	} {
		if _, err := bootCLI(t, append([]string{"stage", "--flash", flash}, args...)...); err == nil || !strings.Contains(err.Error(), "envelope refused") {
			t.Errorf("stage %s: %v, want the envelope refused", name, err)
		}
	}
	bootJSON(t, &r, "run", "--flash", flash)
	if !r.Booted || r.Version != 1 || r.Action != "none" {
		t.Fatalf("after refused stages: %+v", r)
	}

	// Refused at boot: v2's envelope, then v3's image, altered on the flash
	// after a valid stage. The device keeps booting v1.
	for _, tc := range []struct {
		name   string
		v      int
		needle func(env []byte) []byte
	}{
		{"envelope altered on flash", 2, func(env []byte) []byte { return env }},
		{"image altered on flash", 3, func([]byte) []byte { return imgs[3] }},
	} {
		env := envelope(tc.v, bin(tc.v), key)
		bootJSON(t, &staged, "stage", "--flash", flash, "--image", bin(tc.v), "--envelope", env)
		raw, _ := os.ReadFile(env)
		needle := tc.needle(raw)
		flipInFlash(t, flash, needle, len(needle)-5)
		bootJSON(t, &r, "run", "--flash", flash)
		if !r.Booted || r.Version != 1 {
			t.Fatalf("%s: %+v, want v1 to keep booting", tc.name, r)
		}
	}

	// A valid v4 still installs over the refused ones.
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", bin(4), "--envelope", envelope(4, bin(4), key))
	bootJSON(t, &r, "run", "--flash", flash)
	if r.Action != "installed" || r.Version != 4 {
		t.Fatalf("v4: %+v", r)
	}
}

// TestSecureBootKeyRotationCLI: `boot init --pubkey` with a file holding two
// keys (the current and the next signing key, during a key rotation) boots
// images signed by either key, in any order; a third key is still refused.
func TestSecureBootKeyRotationCLI(t *testing.T) {
	dir := t.TempDir()
	var bundle []byte
	for _, k := range []string{"current", "next", "rogue"} {
		if _, err := runFirmcast(t, "keys", "gen", "--alg", "ed25519", "--out", filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
		if k != "rogue" {
			pub, err := os.ReadFile(filepath.Join(dir, k+".pub.pem"))
			if err != nil {
				t.Fatal(err)
			}
			bundle = append(bundle, pub...)
		}
	}
	rotation := filepath.Join(dir, "rotation.pub.pem")
	if err := os.WriteFile(rotation, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	flash := filepath.Join(dir, "dev.flash")
	bootJSON(t, &struct{}{}, "init", "--flash", flash, "--slots", "2", "--slot-size", "65536", "--pubkey", rotation)
	for _, tc := range []struct {
		seq     int
		signer  string
		refused bool
	}{
		{1, "current", false},
		{2, "next", false},
		{3, "rogue", true},
		{4, "current", false},
		{5, "next", false},
	} {
		img := filepath.Join(dir, fmt.Sprintf("v%d.bin", tc.seq))
		if err := os.WriteFile(img, bytes.Repeat([]byte{byte(tc.seq), 'f', 'w'}, 3000), 0o644); err != nil {
			t.Fatal(err)
		}
		env := img + ".suit"
		if _, err := runFirmcast(t, "manifest", "create", "--image", img, "--vendor-id", vendorUUID, "--class-id", classUUID,
			"--seq", fmt.Sprint(tc.seq), "--key", filepath.Join(dir, tc.signer+".pem"), "--out", env); err != nil {
			t.Fatal(err)
		}
		_, err := bootCLI(t, "stage", "--flash", flash, "--image", img, "--envelope", env, "--json")
		if tc.refused {
			if err == nil || !strings.Contains(err.Error(), "envelope refused") {
				t.Fatalf("v%d signed by %s: stage %v, want the envelope refused", tc.seq, tc.signer, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("v%d signed by %s: stage: %v", tc.seq, tc.signer, err)
		}
		var r runOut
		bootJSON(t, &r, "run", "--flash", flash)
		if !r.Booted || r.Version != uint64(tc.seq) {
			t.Fatalf("v%d signed by %s: %+v, want it booted", tc.seq, tc.signer, r)
		}
		bootJSON(t, &r, "confirm", "--flash", flash)
	}
}
