package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

var (
	firmcastOnce sync.Once
	firmcastPath string
	firmcastErr  error
)

// firmcastBin builds the firmcast command once, for the tests that drive
// the same simulated device with both binaries.
func firmcastBin(t *testing.T) string {
	t.Helper()
	firmcastOnce.Do(func() {
		firmcastPath = filepath.Join(filepath.Dir(agentBin), "firmcast")
		out, err := exec.Command("go", "build", "-o", firmcastPath, "../firmcast").CombinedOutput()
		if err != nil {
			firmcastErr = err
			firmcastPath = string(out)
		}
	})
	if firmcastErr != nil {
		t.Fatalf("building firmcast: %v\n%s", firmcastErr, firmcastPath)
	}
	return firmcastPath
}

// TestSecureBootKeyRotation: a device whose device file trusts two signing
// keys (`firmcast boot init --pubkey` with a file holding the current and
// the next key, as during a key rotation) runs a factory image signed by
// the first key, installed with `firmcast boot`; firmcast-agent then takes
// it to an update signed by the second key, which the bootloader must
// accept at staging and at every boot; `firmcast boot inspect` sees it.
// The agent trusts the keys for manifests through one --trust file per key,
// or through the same two-key file as the device file.
func TestSecureBootKeyRotation(t *testing.T) {
	for _, bundled := range []bool{false, true} {
		name := map[bool]string{false: "trust files", true: "trust bundle"}[bundled]
		t.Run(name, func(t *testing.T) { testKeyRotation(t, bundled) })
	}
}

func testKeyRotation(t *testing.T, bundled bool) {
	fc := firmcastBin(t)
	s := newBrokerSetup(t)
	keyA := s.key
	keyB := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{4}, 32))
	var bundle []byte
	var trust []string
	for i, k := range []ed25519.PrivateKey{keyA, keyB} {
		pem, err := suit.MarshalPublicKeyPEM(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, pem...)
		p := filepath.Join(s.dir, "key"+string(rune('a'+i))+".pub.pem")
		if err := os.WriteFile(p, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		trust = append(trust, p)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(s.dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	firmcast := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(fc, append([]string{"boot"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("firmcast boot %v: %v\n%s", args, err, out)
		}
		return out
	}

	// The factory: a secure-boot device trusting both keys, v1 signed by A.
	rotation := write("rotation.pub.pem", bundle)
	if bundled {
		trust = []string{rotation}
	}
	firmcast("init", "--flash", s.flash, "--slots", "2", "--slot-size", "262144", "--pubkey", rotation)
	v1 := randomImage(20 << 10)
	signer, err := suit.NewKeySigner(keyA, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	vendor, _ := parseUUID("", vendorUUID)
	class, _ := parseUUID("", classUUID)
	env1, err := suit.Create(context.Background(), suit.CreateOptions{Image: bytes.NewReader(v1), VendorID: vendor, ClassID: class, Seq: 1}, signer)
	if err != nil {
		t.Fatal(err)
	}
	firmcast("stage", "--flash", s.flash, "--image", write("v1.bin", v1), "--envelope", write("v1.suit", env1))
	firmcast("run", "--flash", s.flash)
	firmcast("confirm", "--flash", s.flash)

	// The agent takes v2, signed by B, to confirmed.
	args := []string{"run", "--device-id", "dev-rot", "--broker", s.url, "--flash", s.flash,
		"--state", filepath.Join(s.dir, "state"), "--vendor-id", vendorUUID, "--class-id", classUUID,
		"--root", s.topics.Root(), "--chunk-idle", "500ms", "--log-level", "warn"}
	for _, p := range trust {
		args = append(args, "--trust", p)
	}
	cmd := exec.Command(agentBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	s.wait(t, 20*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.ActiveVersion == 1 })
	s.key = keyB
	s.offer(t, "dev-rot", randomImage(60<<10+5), 4096)
	r := s.wait(t, 30*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "c1" && (r.State == schemas.StateConfirmed || r.State == schemas.StateFailed ||
			r.State == schemas.StateRolledBack || r.State == schemas.StateSkipped)
	})
	if r.State != schemas.StateConfirmed || r.ActiveVersion != 2 {
		t.Fatalf("update signed by the second trusted key: %s, version %d, %s: %s; want confirmed version 2",
			r.State, r.ActiveVersion, r.Code, r.Text)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, stderr.String())
	}

	// The bootloader keeps booting it.
	var st struct {
		Active struct{ Version uint64 } `json:"active"`
		Trial  bool                     `json:"trial"`
	}
	if err := json.Unmarshal(firmcast("run", "--flash", s.flash, "--json"), &st); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(firmcast("inspect", "--flash", s.flash, "--json"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Active.Version != 2 || st.Trial {
		t.Fatalf("after the update: %+v, want version 2 active and confirmed", st)
	}
}

// TestRunDeviceFile: the agent refuses a device file the bootloader would
// refuse (the same internal/devicefile rules as `firmcast boot`), naming the
// field, before it connects.
func TestRunDeviceFile(t *testing.T) {
	dir := t.TempDir()
	flash := filepath.Join(dir, "flash.bin")
	pem, err := suit.MarshalPublicKeyPEM(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)).Public())
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(dir, "trust.pub.pem")
	if err := os.WriteFile(trust, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	l := bootctl.DefaultLayout(8, 2, 8)
	valid, err := json.Marshal(devicefile.File{Geometry: bootctl.Geometry{SectorSize: 4096, Sectors: l.Sectors(), WriteAlign: 16},
		Layout: l, TrialBoots: 3, DeviceKey: strings.Repeat("07", 32)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(m map[string]any) // nil: no device file
		want string
	}{
		{"missing", nil, "firmcast boot init"},
		{"trial_boots negative", func(m map[string]any) { m["trial_boots"] = -1 }, "trial_boots -1"},
		{"trial_boots over the maximum", func(m map[string]any) { m["trial_boots"] = 1000 }, "trial_boots 1000"},
		{"public_key junk", func(m map[string]any) { m["public_key"] = []byte("junk") }, "public_key"},
		{"unknown field", func(m map[string]any) { m["trial_boot"] = 1 }, `unknown field "trial_boot"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(devicefile.Path(flash))
			if tc.edit != nil {
				var m map[string]any
				if err := json.Unmarshal(valid, &m); err != nil {
					t.Fatal(err)
				}
				tc.edit(m)
				b, _ := json.Marshal(m)
				if err := os.WriteFile(devicefile.Path(flash), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			out, err := exec.Command(agentBin, "run", "--device-id", "d", "--broker", "mqtt://127.0.0.1:1", "--flash", flash,
				"--state", filepath.Join(dir, "state"), "--trust", trust, "--vendor-id", vendorUUID, "--class-id", classUUID).CombinedOutput()
			if err == nil || !bytes.Contains(out, []byte("--flash")) || !bytes.Contains(out, []byte(tc.want)) {
				t.Fatalf("err %v, output %q; want --flash and %q", err, out, tc.want)
			}
		})
	}
}
