package devicefile

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas/suit"
)

var (
	testLayout = bootctl.DefaultLayout(8, 2, 8)
	testGeom   = bootctl.Geometry{SectorSize: 4096, Sectors: testLayout.Sectors(), WriteAlign: 16}
	testKey    = strings.Repeat("07", 32)
	testKEKHex = strings.Repeat("0b", 16)
	vendorID   = bytes.Repeat([]byte{0xfa}, 16)
	classID    = bytes.Repeat([]byte{0xc1}, 16)
)

// signingKey returns a deterministic Ed25519 key and its PEM public key.
func signingKey(t testing.TB, seed byte) (ed25519.PrivateKey, []byte) {
	t.Helper()
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	pub, err := suit.MarshalPublicKeyPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return k, pub
}

func validFile(t testing.TB) File {
	return File{Geometry: testGeom, Layout: testLayout, TrialBoots: 3, DeviceKey: testKey}
}

// jsonWith is the JSON of validFile with edit applied to its generic form.
func jsonWith(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	b, err := json.Marshal(validFile(t))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeCases are the table of TestDecode and the seeds of FuzzDecode.
func decodeCases(t testing.TB) []struct {
	name    string
	in      []byte
	wantErr string // "" for a valid file
} {
	_, pubA := signingKey(t, 1)
	_, pubB := signingKey(t, 2)
	return []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"plain", jsonWith(t, func(map[string]any) {}), ""},
		{"secure boot, one key", jsonWith(t, func(m map[string]any) { m["public_key"] = pubA }), ""},
		{"secure boot, two keys", jsonWith(t, func(m map[string]any) { m["public_key"] = append(append([]byte{}, pubA...), pubB...) }), ""},
		{"trial_boots absent", jsonWith(t, func(m map[string]any) { delete(m, "trial_boots") }), ""},
		{"trial_boots 0", jsonWith(t, func(m map[string]any) { m["trial_boots"] = 0 }), ""},
		{"trial_boots max", jsonWith(t, func(m map[string]any) { m["trial_boots"] = bootctl.MaxTrialBoots }), ""},
		{"trial_boots negative", jsonWith(t, func(m map[string]any) { m["trial_boots"] = -1 }), "trial_boots -1"},
		{"trial_boots over max", jsonWith(t, func(m map[string]any) { m["trial_boots"] = bootctl.MaxTrialBoots + 1 }), "trial_boots 251"},
		{"device_key not hex", jsonWith(t, func(m map[string]any) { m["device_key"] = "zz" + testKey[2:] }), "device_key: not hex"},
		{"device_key short", jsonWith(t, func(m map[string]any) { m["device_key"] = testKey[:30] }), "device_key: 15 bytes"},
		{"device_key absent", jsonWith(t, func(m map[string]any) { delete(m, "device_key") }), "device_key: 0 bytes"},
		{"public_key junk", jsonWith(t, func(m map[string]any) { m["public_key"] = []byte("junk") }), "public_key"},
		{"public_key second block junk", jsonWith(t, func(m map[string]any) {
			m["public_key"] = append(append([]byte{}, pubA...), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"...)
		}), "public_key: PEM block 1"},
		{"layout absent", jsonWith(t, func(m map[string]any) { delete(m, "layout") }), "geometry and layout"},
		{"write alignment 0", jsonWith(t, func(m map[string]any) { m["geometry"].(map[string]any)["WriteAlign"] = 0 }), "geometry"},
		{"public_key empty", jsonWith(t, func(m map[string]any) { m["public_key"] = "" }), ""},
		{"encrypted slots", jsonWith(t, func(m map[string]any) { m["kek"] = testKEKHex; m["encrypted_slots"] = true }), ""},
		{"encrypted slots without kek", jsonWith(t, func(m map[string]any) { m["encrypted_slots"] = true }), "encrypted_slots without kek"},
		{"encrypted slots with secure boot", jsonWith(t, func(m map[string]any) {
			m["kek"], m["encrypted_slots"], m["public_key"] = testKEKHex, true, pubA
		}), "encrypted_slots with public_key"},
		{"unknown field", jsonWith(t, func(m map[string]any) { m["trial_boot"] = 1 }), `unknown field "trial_boot"`},
		{"trailing data", append(jsonWith(t, func(map[string]any) {}), "{}"...), "data after the JSON object"},
		{"not JSON", []byte("flash"), "invalid character"},
		{"null", []byte("null"), "geometry"},
		{"empty", nil, "EOF"},
	}
}

// TestDecode: a valid device file decodes; an invalid one is refused with
// ErrInvalid naming the field.
func TestDecode(t *testing.T) {
	for _, tc := range decodeCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Decode: %v, want ErrInvalid naming %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzDecode: Decode never panics, and a file it accepts encodes and
// decodes back to the same File.
func FuzzDecode(f *testing.F) {
	for _, tc := range decodeCases(f) {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		df, err := Decode(b)
		if err != nil {
			return
		}
		enc, err := Encode(df)
		if err != nil {
			t.Fatalf("Encode of a decoded file: %v", err)
		}
		back, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode of an encoded file: %v", err)
		}
		if d := cmp.Diff(back, df); d != "" {
			t.Fatalf("round trip (-got +want):\n%s", d)
		}
	})
}

// TestWriteRead: Write refuses an invalid file and writes a valid one at
// mode 0600 (it holds the device key); Read returns it; a missing file
// says how to make one.
func TestWriteRead(t *testing.T) {
	flash := filepath.Join(t.TempDir(), "dev.flash")
	if _, err := Read(flash); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "firmcast boot init") {
		t.Fatalf("Read of a missing file: %v, want fs.ErrNotExist and a hint", err)
	}
	bad := validFile(t)
	bad.TrialBoots = -1
	if err := Write(flash, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Write of an invalid file: %v, want ErrInvalid", err)
	}
	if _, err := os.Stat(Path(flash)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an invalid file was written: %v", err)
	}
	_, pub := signingKey(t, 1)
	want := validFile(t)
	want.PublicKey = pub
	if err := Write(flash, want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(Path(flash))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device file mode %v (%v), want 0600", fi.Mode(), err)
	}
	got, err := Read(flash)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Fatalf("Read (-got +want):\n%s", d)
	}
	if err := os.WriteFile(Path(flash), bytes.Repeat([]byte(" "), maxSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(flash); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), Path(flash)) {
		t.Fatalf("Read of an oversized file: %v, want ErrInvalid naming the file", err)
	}
}

// newDevice writes a device file and an erased flash for it.
func newDevice(t *testing.T, df File) string {
	t.Helper()
	flash := filepath.Join(t.TempDir(), "dev.flash")
	fl, err := bootctl.CreateFileFlash(flash, df.Geometry)
	if err != nil {
		t.Fatal(err)
	}
	if err := fl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Write(flash, df); err != nil {
		t.Fatal(err)
	}
	return flash
}

// TestTrialBoots: trial_boots 0 (or absent) opens the device with
// bootctl.DefaultTrialBoots; any other valid value is the trial limit.
func TestTrialBoots(t *testing.T) {
	for _, tc := range []struct {
		trialBoots, wantLimit int
	}{
		{0, bootctl.DefaultTrialBoots},
		{1, 1},
		{3, 3},
		{7, 7},
		{bootctl.MaxTrialBoots, bootctl.MaxTrialBoots},
	} {
		df := validFile(t)
		df.TrialBoots = tc.trialBoots
		flash := newDevice(t, df)
		d, fl, err := Open(flash)
		if err != nil {
			t.Fatalf("trial_boots %d: %v", tc.trialBoots, err)
		}
		st, err := d.Status()
		fl.Close()
		if err != nil || st.TrialLimit != tc.wantLimit {
			t.Errorf("trial_boots %d: trial limit %d (%v), want %d", tc.trialBoots, st.TrialLimit, err, tc.wantLimit)
		}
	}
}

// envelope signs a manifest for img with key.
func envelope(t *testing.T, img []byte, seq uint64, key ed25519.PrivateKey) []byte {
	t.Helper()
	s, err := suit.NewKeySigner(key, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	env, err := suit.Create(context.Background(), suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID, ClassID: classID, Seq: seq}, s)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestEncryptedSlotsKEK: the bootloader opened through a device file gets
// the device's KEK in its root of trust, so it keeps encrypted slots; a
// device file without a KEK gives a bootloader that cannot.
func TestEncryptedSlotsKEK(t *testing.T) {
	for _, withKEK := range []bool{false, true} {
		df := validFile(t)
		if withKEK {
			df.KEK, df.EncryptedSlots = testKEKHex, true
		}
		d, fl, err := Open(newDevice(t, df))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.SupportsEncryptedSlots(); got != withKEK {
			t.Errorf("kek %v: SupportsEncryptedSlots %v", withKEK, got)
		}
		fl.Close()
	}
}

// TestSecureBootKeys: a device file trusting two keys (the current and the
// next, across a key rotation) boots images signed by either; an image
// signed by a third key is refused when staged.
func TestSecureBootKeys(t *testing.T) {
	keyA, pubA := signingKey(t, 1)
	keyB, pubB := signingKey(t, 2)
	rogue, _ := signingKey(t, 3)
	df := validFile(t)
	df.PublicKey = append(append([]byte{}, pubA...), pubB...)
	flash := newDevice(t, df)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		seq     uint64
		key     ed25519.PrivateKey
		refused bool
	}{
		{"first key", 1, keyA, false},
		{"second key", 2, keyB, false},
		{"untrusted key", 3, rogue, true},
		{"first key again", 4, keyA, false},
	} {
		d, fl, err := Open(flash)
		if err != nil {
			t.Fatal(err)
		}
		img := bytes.Repeat([]byte{byte(tc.seq), 'f', 'w'}, 1000)
		info := bootctl.CandidateInfo{Version: tc.seq, SecurityCounter: tc.seq, Digest: sha256.Sum256(img),
			Envelope: envelope(t, img, tc.seq, tc.key)}
		slot, err := d.FreeSlot()
		if err != nil {
			t.Fatal(err)
		}
		err = d.Stage(ctx, slot, img, info)
		if tc.refused {
			if !errors.Is(err, bootctl.ErrEnvelope) || !errors.Is(err, suit.ErrUntrusted) {
				t.Fatalf("%s: stage: %v, want ErrEnvelope wrapping suit.ErrUntrusted", tc.name, err)
			}
			fl.Close()
			continue
		}
		if err != nil {
			t.Fatalf("%s: stage: %v", tc.name, err)
		}
		dec, err := d.Boot(ctx)
		if err != nil || !dec.Booted || dec.Version != tc.seq {
			t.Fatalf("%s: boot: %+v %v, want version %d", tc.name, dec, err, tc.seq)
		}
		if err := d.Confirm(); err != nil {
			t.Fatal(err)
		}
		fl.Close()
	}
}

// TestOpenErrors: Open reports a bad device file or a flash that does not
// match it.
func TestOpenErrors(t *testing.T) {
	df := validFile(t)
	flash := newDevice(t, df)
	raw, err := os.ReadFile(Path(flash))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Path(flash), bytes.Replace(raw, []byte(testKey), []byte(hex.EncodeToString([]byte("short"))), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(flash); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "device_key") {
		t.Fatalf("short key: %v, want ErrInvalid naming device_key", err)
	}
	if err := os.Remove(flash); err != nil {
		t.Fatal(err)
	}
	if err := Write(flash, df); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(flash); err == nil {
		t.Fatal("Open without the flash file succeeded")
	}
}
