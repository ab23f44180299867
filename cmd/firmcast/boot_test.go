package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/devicefile"
)

// bootCLI runs `firmcast boot ...` in-process and returns stdout.
func bootCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"boot"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func bootJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := bootCLI(t, append(args, "--json")...)
	if err != nil {
		t.Fatalf("boot %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("boot %s: %v in %q", strings.Join(args, " "), err, out)
	}
}

type runOut struct {
	Action     string `json:"action"`
	Booted     bool   `json:"booted"`
	Version    uint64 `json:"version"`
	Trial      bool   `json:"trial"`
	Reason     string `json:"reason"`
	Ops        uint64 `json:"ops"`
	PowerCut   bool   `json:"power_cut"`
	TrialBoots int    `json:"trial_boots"`
}

func TestBootCLI(t *testing.T) {
	dir := t.TempDir()
	flash := filepath.Join(dir, "dev.flash")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	v1 := write("v1.bin", bytes.Repeat([]byte("firmware one "), 3000))
	v2 := write("v2.bin", bytes.Repeat([]byte("firmware two! "), 4000))

	var initOut struct {
		ImageCapacity int64 `json:"image_capacity"`
	}
	bootJSON(t, &initOut, "init", "--flash", flash, "--slots", "2", "--slot-size", "65536",
		"--device-key", "000102030405060708090a0b0c0d0e0f")
	if initOut.ImageCapacity != 65536-4096 {
		t.Fatalf("capacity %d", initOut.ImageCapacity)
	}
	var r runOut
	var ee *exitError
	if out, err := bootCLI(t, "run", "--flash", flash, "--json"); !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(out, `"failed"`) {
		t.Fatalf("empty flash: %v %s", err, out)
	}
	var staged struct{ Slot int }
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", v1, "--version", "1", "--security-counter", "1", "--campaign", "c1")
	bootJSON(t, &r, "run", "--flash", flash)
	if !r.Booted || r.Version != 1 {
		t.Fatalf("first boot: %+v", r)
	}
	bootJSON(t, &staged, "stage", "--flash", flash, "--image", v2, "--version", "2", "--security-counter", "2")
	if staged.Slot != 1 {
		t.Fatalf("v2 staged in slot %d, want the free slot 1", staged.Slot)
	}
	// Cut power in the middle of the install, tearing that write.
	bootJSON(t, &r, "run", "--flash", flash, "--cut-after", "12", "--torn")
	if !r.PowerCut || r.Ops != 12 {
		t.Fatalf("cut: %+v", r)
	}
	bootJSON(t, &r, "run", "--flash", flash)
	if r.Action != "installed" || r.Version != 2 || !r.Trial {
		t.Fatalf("after the cut: %+v", r)
	}
	var st struct {
		Active struct{ Version uint64 } `json:"active"`
		Floor  uint64                   `json:"floor"`
		Trial  bool                     `json:"trial"`
	}
	bootJSON(t, &st, "confirm", "--flash", flash)
	if st.Trial || st.Floor != 2 || st.Active.Version != 2 {
		t.Fatalf("confirm: %+v", st)
	}
	bootJSON(t, &st, "inspect", "--flash", flash)
	if st.Active.Version != 2 || st.Trial {
		t.Fatalf("inspect: %+v", st)
	}
	text, err := bootCLI(t, "inspect", "--flash", flash)
	if err != nil || !strings.Contains(text, "active   version 2") {
		t.Fatalf("inspect text: %v\n%s", err, text)
	}

	// combine: bootloader then application; a gap is refused.
	bl := write("boot.bin", []byte("bootloader code"))
	out := filepath.Join(dir, "full.bin")
	var comb struct{ Size int }
	bootJSON(t, &comb, "combine", "--bootloader", bl, "--app", v1, "--out", out, "--slot-size", "65536",
		"--device-key", "000102030405060708090a0b0c0d0e0f", "--version", "1")
	img, err := os.ReadFile(out)
	if err != nil || len(img) != comb.Size || !bytes.HasPrefix(img, []byte("bootloader code")) {
		t.Fatalf("combined image: %d bytes, %v", len(img), err)
	}
	if _, err := bootCLI(t, "combine", "--bootloader", bl, "--app", v1, "--out", out, "--slot-size", "65536",
		"--device-key", "000102030405060708090a0b0c0d0e0f", "--app-offset", "65536"); err == nil ||
		!strings.Contains(err.Error(), "not right after the bootloader") {
		t.Fatalf("gap: %v", err)
	}

	// Flag errors name the flag.
	for _, args := range [][]string{
		{"init", "--flash", filepath.Join(dir, "x"), "--slots", "1", "--slot-size", "65536"},
		{"init", "--flash", filepath.Join(dir, "x"), "--slot-size", "1000"},
		{"init", "--flash", filepath.Join(dir, "x"), "--slot-size", "65536", "--device-key", "abcd"},
		{"run", "--flash", flash, "--torn"},
	} {
		_, err := bootCLI(t, args...)
		if err == nil || !strings.Contains(err.Error(), "--") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// TestBootTrialBoots: the device file's trial_boots sets the bootloader's
// trial limit; 0, or the field left out, means bootctl.DefaultTrialBoots
// (internal/devicefile), and a value out of range is refused naming the
// field.
func TestBootTrialBoots(t *testing.T) {
	for _, tc := range []struct {
		name      string
		edit      func(m map[string]any)
		wantLimit int
		wantErr   string
	}{
		{"as written by init", func(map[string]any) {}, bootctl.DefaultTrialBoots, ""},
		{"zero", func(m map[string]any) { m["trial_boots"] = 0 }, bootctl.DefaultTrialBoots, ""},
		{"absent", func(m map[string]any) { delete(m, "trial_boots") }, bootctl.DefaultTrialBoots, ""},
		{"one", func(m map[string]any) { m["trial_boots"] = 1 }, 1, ""},
		{"negative", func(m map[string]any) { m["trial_boots"] = -1 }, 0, "trial_boots -1"},
		{"over the maximum", func(m map[string]any) { m["trial_boots"] = bootctl.MaxTrialBoots + 1 }, 0, "trial_boots 251"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flash := filepath.Join(t.TempDir(), "dev.flash")
			bootJSON(t, &struct{}{}, "init", "--flash", flash, "--slot-size", "65536")
			side := devicefile.Path(flash)
			b, err := os.ReadFile(side)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			tc.edit(m)
			if b, err = json.Marshal(m); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(side, b, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := bootCLI(t, "inspect", "--flash", flash, "--json")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), side) {
					t.Fatalf("inspect: %v, want an error naming %s and %q", err, side, tc.wantErr)
				}
				return
			}
			var st struct {
				TrialLimit int `json:"trial_limit"`
			}
			if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.TrialLimit != tc.wantLimit {
				t.Fatalf("inspect: %v %s, want trial limit %d", err, out, tc.wantLimit)
			}
		})
	}
}
