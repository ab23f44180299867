package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootFactoryImage: `boot combine` then `boot init --from` makes a
// device that boots the combined application, plain and in secure-boot
// mode (combined with --envelope); combine refuses overlapping and
// misaligned regions, and init --from an image it cannot verify.
func TestBootFactoryImage(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const key = "000102030405060708090a0b0c0d0e0f"
	bl := write("boot.bin", []byte("bootloader code"))
	app := write("app.bin", bytes.Repeat([]byte("application one "), 2000))
	combined := filepath.Join(dir, "factory.bin")
	var comb struct{ Size int }
	bootJSON(t, &comb, "combine", "--bootloader", bl, "--app", app, "--out", combined, "--slot-size", "65536",
		"--device-key", key, "--version", "1", "--security-counter", "1")

	flash := filepath.Join(dir, "dev.flash")
	var initOut struct {
		Active struct {
			Version uint64 `json:"version"`
			Valid   bool   `json:"valid"`
		} `json:"active"`
	}
	bootJSON(t, &initOut, "init", "--flash", flash, "--slot-size", "65536", "--device-key", key, "--from", combined)
	if !initOut.Active.Valid || initOut.Active.Version != 1 {
		t.Fatalf("init --from: %+v", initOut)
	}
	var r runOut
	bootJSON(t, &r, "run", "--flash", flash)
	if !r.Booted || r.Version != 1 {
		t.Fatalf("boot of the factory image: %+v", r)
	}
	// A device from it takes updates as any other: stage v2, boot it.
	app2 := write("app2.bin", bytes.Repeat([]byte("application two "), 2100))
	var staged struct{ Slot int }
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", app2, "--version", "2", "--security-counter", "2")
	bootJSON(t, &r, "run", "--flash", flash)
	if r.Action != "installed" || r.Version != 2 {
		t.Fatalf("update after the factory image: %+v", r)
	}

	// Secure boot: the application's signed envelope in its header.
	signer := filepath.Join(dir, "signer")
	if _, err := runFirmcast(t, "keys", "gen", "--alg", "ed25519", "--out", signer); err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(dir, "app.suit")
	if _, err := runFirmcast(t, "manifest", "create", "--image", app, "--vendor-id", vendorUUID, "--class-id", classUUID,
		"--seq", "1", "--key", signer+".pem", "--out", env); err != nil {
		t.Fatal(err)
	}
	secure := filepath.Join(dir, "secure.bin")
	bootJSON(t, &comb, "combine", "--bootloader", bl, "--app", app, "--out", secure, "--slot-size", "65536",
		"--device-key", key, "--version", "1", "--envelope", env)
	sflash := filepath.Join(dir, "secure.flash")
	bootJSON(t, &initOut, "init", "--flash", sflash, "--slot-size", "65536", "--device-key", key, "--pubkey", signer+".pub.pem", "--from", secure)
	bootJSON(t, &r, "run", "--flash", sflash)
	if !r.Booted || r.Version != 1 {
		t.Fatalf("secure boot of the factory image: %+v", r)
	}
	// Without the envelope, a secure-boot device refuses the image.
	if _, err := bootCLI(t, "init", "--flash", filepath.Join(dir, "x.flash"), "--slot-size", "65536", "--device-key", key,
		"--pubkey", signer+".pub.pem", "--from", combined); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("secure boot without an envelope: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.flash")); err == nil {
		t.Error("a refused init --from left its flash file")
	}

	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"overlap":            {[]string{"combine", "--app-offset", "4096"}, "overlaps the bootloader"},
		"misaligned app":     {[]string{"combine", "--app-offset", "32868"}, "misaligned"},
		"misaligned boot":    {[]string{"combine", "--boot-size", "5000"}, "misaligned"},
		"gap":                {[]string{"combine", "--app-offset", "65536"}, "not right after the bootloader"},
		"bootloader too big": {[]string{"combine", "--boot-size", "4096", "--bootloader", write("big.bin", make([]byte, 5000))}, "bootloader of 5000 bytes"},
		"wrong key":          {[]string{"init", "--flash", filepath.Join(dir, "y.flash"), "--device-key", "ffffffffffffffffffffffffffffffff", "--from", combined}, "does not verify"},
		"other layout":       {[]string{"init", "--flash", filepath.Join(dir, "z.flash"), "--device-key", key, "--boot-size", "4096", "--from", combined}, "larger than the flash"},
		"no key":             {[]string{"init", "--flash", filepath.Join(dir, "w.flash"), "--from", combined}, "--device-key"},
	} {
		args := tc.args
		if args[0] == "combine" {
			args = append([]string{"combine", "--bootloader", bl, "--app", app, "--out", filepath.Join(dir, "bad.bin"),
				"--device-key", key}, args[1:]...)
		}
		args = append(args, "--slot-size", "65536")
		if _, err := bootCLI(t, args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}
