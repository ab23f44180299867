package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestBootChainCLI: `boot chain` boots a two-stage device (bootloader
// stage, application), installs a new bootloader stage across a power
// cut, and confirms it.
func TestBootChainCLI(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bl, app := filepath.Join(dir, "bl.flash"), filepath.Join(dir, "app.flash")
	for _, f := range []string{bl, app} {
		if _, err := bootCLI(t, "init", "--flash", f, "--slot-size", "65536", "--device-key", "000102030405060708090a0b0c0d0e0f"); err != nil {
			t.Fatal(err)
		}
	}
	var staged struct{ Slot int }
	bootJSON(t, &staged, "stage", "--flash", bl, "--image", write("bl1.bin", bytes.Repeat([]byte("boot one "), 900)), "--version", "1", "--security-counter", "1")
	bootJSON(t, &staged, "stage", "--flash", app, "--image", write("app1.bin", bytes.Repeat([]byte("app one "), 900)), "--version", "1", "--security-counter", "1")
	type chainOut struct {
		Stages []struct {
			Booted  bool   `json:"booted"`
			Version uint64 `json:"version"`
			Action  string `json:"action"`
			Trial   bool   `json:"trial"`
		} `json:"stages"`
		PowerCut  bool `json:"power_cut"`
		Confirmed bool `json:"confirmed"`
	}
	var out chainOut
	bootJSON(t, &out, "chain", "--flash", bl, "--flash", app, "--confirm")
	if len(out.Stages) != 2 || !out.Stages[0].Booted || !out.Stages[1].Booted || !out.Confirmed {
		t.Fatalf("first chain boot: %+v", out)
	}
	bootJSON(t, &staged, "stage", "--flash", bl, "--image", write("bl2.bin", bytes.Repeat([]byte("boot two "), 950)), "--version", "2", "--security-counter", "2")
	bootJSON(t, &out, "chain", "--flash", bl, "--flash", app, "--cut-after", "3", "--cut-stage", "1")
	if !out.PowerCut {
		t.Fatalf("cut: %+v", out)
	}
	bootJSON(t, &out, "chain", "--flash", bl, "--flash", app, "--confirm")
	if len(out.Stages) != 2 || out.Stages[0].Version != 2 || !out.Stages[1].Booted || out.Stages[1].Version != 1 || !out.Confirmed {
		t.Fatalf("after the cut: %+v", out)
	}
}
