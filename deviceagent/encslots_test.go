package deviceagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// encSlotBoot opens the device's flash as a bootloader whose root of
// trust holds the device's KEK (the same key the agent unwraps content
// keys with), so that it keeps encrypted slots.
func encSlotBoot(t *testing.T, d *device) *bootctl.Device {
	t.Helper()
	bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey, KEK: devKEK(d.id).Key})
	if err != nil {
		t.Fatal(err)
	}
	return bd
}

// flashHasPlaintext reports whether the flash outside the active region
// holds a 64-byte window of plain or, with digest, its SHA-256 (which the
// status area and the active header name once the image is installed).
func flashHasPlaintext(t *testing.T, f *bootctl.Flash, plain []byte, digest bool) bool {
	t.Helper()
	dump, err := f.Dump()
	if err != nil {
		t.Fatal(err)
	}
	ss := testGeom.SectorSize
	clear(dump[testLayout.Active.Start*ss : (testLayout.Active.Start+testLayout.Active.Sectors)*ss])
	sum := sha256.Sum256(plain)
	if digest && bytes.Contains(dump, sum[:]) {
		return true
	}
	for i := 0; i+64 <= len(plain); i += 32 {
		if bytes.Contains(dump, plain[i:i+64]) {
			return true
		}
	}
	return false
}

// With encrypted slots the candidate slot keeps the ciphertext: when the
// candidate is verified and when it is staged, no 64-byte window of the
// plaintext, nor its digest, is anywhere on the flash outside the active
// region; the bootloader decrypts during the install, and the device
// confirms the plaintext image. An agent killed mid-download or after
// the candidate is verified resumes its slot as it began (ciphertext).
func TestEncryptedSlotsUpdate(t *testing.T) {
	for _, kill := range []string{"none", "download", "candidate-verified"} {
		t.Run(kill, func(t *testing.T) {
			w := memWorld(t)
			v2 := seal(t, testImage(61, 30*testChunk+77))
			var d *device
			var mu sync.Mutex
			var checked []string
			killed, stop := killSwitch(func() { d.cancel() })
			tune := func(c *Config) {
				c.Keys = devKEK("dev-es")
				c.EncryptedSlots = true
				c.Boot = encSlotBoot(t, d)
				c.OnState = func(r Record) {
					if r.State != schemas.StateCandidateVerified && r.State != schemas.StateStaged {
						return
					}
					if flashHasPlaintext(t, d.flash, v2.plain, true) {
						t.Errorf("%s: the flash outside the active region holds the plaintext or its digest", r.State)
					}
					if !r.CipherSlot {
						t.Errorf("%s: the record does not say the slot keeps the ciphertext", r.State)
					}
					mu.Lock()
					checked = append(checked, string(r.State))
					mu.Unlock()
				}
			}
			d = w.newDevice("dev-es", killAt(kill, stop, tune))
			updateThroughKill(t, w, d, "camp-es", v2, kill, killed, tune)
			mu.Lock()
			if len(checked) < 2 {
				t.Errorf("the flash was checked at %v, want candidate-verified and staged", checked)
			}
			mu.Unlock()
			st, err := encSlotBoot(t, d).Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Active.Digest != sha256.Sum256(v2.plain) || st.Active.Version != 2 || st.Active.Encrypted {
				t.Errorf("active header: %+v, want version 2, plaintext, the plaintext's digest", st.Active.Header)
			}
			if !bytes.Equal(d.activeBytes(len(v2.plain)), v2.plain) {
				t.Error("the active region does not hold the plaintext")
			}
			kept := false
			for _, s := range st.Slots {
				kept = kept || (s.Valid && s.Encrypted && s.Version == 2)
			}
			if !kept {
				t.Errorf("no slot keeps v2 encrypted: %+v", st.Slots)
			}
			if flashHasPlaintext(t, d.flash, v2.plain, false) {
				t.Error("after the install a slot holds the plaintext")
			}
			assertNoPlaintext(t, d.dir, v2.plain)
		})
	}
}

// EncryptedSlots needs a bootloader that can keep them.
func TestEncryptedSlotsNeedKEK(t *testing.T) {
	w := memWorld(t)
	d := w.newDevice("dev-nokek", nil)
	bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		t.Fatal(err)
	}
	tr := w.dial(t, "dev-nokek")
	defer tr.Close(context.Background())
	_, err = New(Config{DeviceID: "dev-nokek", Transport: tr, Topics: w.topics, Boot: bd, StateDir: t.TempDir(), Trust: w.trust,
		Identity: suit.Identity{VendorID: vendorID, ClassIDs: [][]byte{classID}, DeviceID: []byte("dev-nokek")}, EncryptedSlots: true})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("New with EncryptedSlots and no KEK: %v, want ErrConfig", err)
	}
}
