package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/internal/devicefile"
)

// `firmcast boot init --encrypted-slots` needs the device's KEK (the
// bootloader derives the slots' key from it) and records the setting in
// the device file, whose bootloader then keeps encrypted slots.
func TestBootInitEncryptedSlots(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "dev.kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("5a", 16)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flash := filepath.Join(dir, "dev.flash")
	if _, err := bootCLI(t, "init", "--flash", flash, "--slot-size", "65536", "--encrypted-slots"); err == nil || !strings.Contains(err.Error(), "--kek-file") {
		t.Fatalf("--encrypted-slots without --kek-file: %v", err)
	}
	if _, err := bootCLI(t, "init", "--flash", flash, "--slot-size", "65536", "--encrypted-slots", "--kek-file", kek, "--pubkey", kek); err == nil {
		t.Fatal("--encrypted-slots with --pubkey accepted")
	}
	var out struct {
		EncryptedSlots bool `json:"encrypted_slots"`
	}
	bootJSON(t, &out, "init", "--flash", flash, "--slot-size", "65536", "--encrypted-slots", "--kek-file", kek)
	df, err := devicefile.Read(flash)
	if err != nil || !out.EncryptedSlots || !df.EncryptedSlots {
		t.Fatalf("init said %v, device file encrypted_slots %v (%v)", out.EncryptedSlots, df.EncryptedSlots, err)
	}
	d, fl, err := devicefile.Open(flash)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	if !d.SupportsEncryptedSlots() {
		t.Fatal("the device file's bootloader does not keep encrypted slots")
	}
}
