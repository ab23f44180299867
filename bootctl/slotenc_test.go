package bootctl

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
)

// encFor returns the ciphertext of testImage(version) under a key and IV
// of that version (AES-128-CTR, or AES-256 for odd versions), and the
// SlotEncryption that names it.
func encFor(t testing.TB, version uint64) ([]byte, *SlotEncryption) {
	t.Helper()
	key := bytes.Repeat([]byte{byte(version)}, 16+16*int(version%2))
	e := &SlotEncryption{Key: key}
	for i := range e.IV {
		e.IV[i] = byte(0xF0 + i) // the low counter bytes wrap within the image
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, rigImageSize)
	cipher.NewCTR(blk, e.IV[:]).XORKeyStream(ct, testImage(version))
	e.CiphertextDigest = sha256.Sum256(ct)
	return ct, e
}

// stageEncrypted writes the ciphertext of testImage(version) into the
// slot FreeSlot picks and commits it as an encrypted slot.
func stageEncrypted(t testing.TB, d *Device, version, counter uint64) int {
	t.Helper()
	slot, err := d.FreeSlot()
	if err != nil {
		t.Fatal(err)
	}
	ct, e := encFor(t, version)
	info := infoFor(version, counter)
	info.Encryption = e
	if err := d.Stage(context.Background(), slot, ct, info); err != nil {
		t.Fatal(err)
	}
	return slot
}

// stageUndecryptable writes the ciphertext of testImage(version) into
// slot under an authentic header (the device key tags it) whose wrapped
// content key is another one: the ciphertext checks, its decryption does
// not.
func stageUndecryptable(t testing.TB, d *Device, slot int, version uint64) {
	t.Helper()
	ct, e := encFor(t, version)
	wrong := *e
	wrong.Key = bytes.Repeat([]byte{9}, 16)
	ext, err := sealEncBlock(d.rot.KEK, &wrong, sha256.Sum256(testImage(version)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.OpenCandidate(context.Background(), slot, uint64(len(ct)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(ct, 0); err != nil {
		t.Fatal(err)
	}
	h := Header{Version: version, SecurityCounter: version, Size: uint64(len(ct)), Digest: e.CiphertextDigest}
	raw, err := marshalHeaderExt(h, ext, d.rot.DeviceKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.f.Program(padTo(raw, d.g.WriteAlign), d.regionOff(d.l.Slots[slot])); err != nil {
		t.Fatal(err)
	}
	d.f.ResetStats()
}

// hasWindow reports whether any 64-byte window of secret appears in b.
func hasWindow(b, secret []byte) bool {
	for i := 0; i+64 <= len(secret); i += 32 {
		if bytes.Contains(b, secret[i:i+64]) {
			return true
		}
	}
	return false
}

// TestEncryptedSlotInstall stages encrypted candidates, checks that the
// flash holds no plaintext window (nor the plaintext digest) of the new
// image until the bootloader installs it, and that the install decrypts
// it into the active region, keeps the slot encrypted, and a revert
// brings the previous image back.
func TestEncryptedSlotInstall(t *testing.T) {
	for _, align := range []int{1, 4, 16} {
		t.Run(fmt.Sprintf("align%d", align), func(t *testing.T) {
			r := newRig(align, 2, WithTrialBoots(1))
			f := r.factory(t, 1, 1)
			d := r.open(t, f)
			slot := stageEncrypted(t, d, 2, 2)
			dump, err := f.Dump()
			if err != nil {
				t.Fatal(err)
			}
			plainDigest := sha256.Sum256(testImage(2))
			if hasWindow(dump, testImage(2)) {
				t.Fatal("a 64-byte window of the staged image's plaintext is on the flash")
			}
			if bytes.Contains(dump, plainDigest[:]) {
				t.Fatal("the staged image's plaintext digest is on the flash in clear")
			}
			st, err := d.Status()
			if err != nil {
				t.Fatal(err)
			}
			if s := st.Slots[slot]; !s.Valid || !s.Encrypted || s.Digest != plainDigest || s.Version != 2 {
				t.Fatalf("slot %d status: %+v", slot, s)
			}
			dec := mustBoot(t, d)
			if dec.Action != ActionInstalled || dec.Version != 2 || dec.Digest != plainDigest {
				t.Fatalf("boot: %+v", dec)
			}
			if err := r.checkActive(f, 2); err != nil {
				t.Fatal(err)
			}
			// The slot still holds ciphertext only.
			sb := make([]byte, rigImageSize)
			if _, err := f.ReadAt(sb, d.imageOff(r.l.Slots[slot])); err != nil {
				t.Fatal(err)
			}
			if ct, _ := encFor(t, 2); !bytes.Equal(sb, ct) {
				t.Fatal("the encrypted slot changed during the install")
			}
			// Not confirmed: the next boot reverts to v1, rejecting v2.
			if dec := mustBoot(t, d); dec.Action != ActionReverted || dec.Version != 1 {
				t.Fatalf("revert: %+v", dec)
			}
			if err := r.checkActive(f, 1); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEncryptedSlotRefused checks that an encrypted slot never becomes
// active when its ciphertext is tampered (before or after Commit), when
// the device's KEK is not the one it was sealed with, or when its header
// names a content key that does not decrypt it to the signed plaintext;
// and that Commit refuses encryption on a device that cannot keep it.
func TestEncryptedSlotRefused(t *testing.T) {
	ctx := context.Background()
	r := newRig(4, 2)
	snap := snapshot(r.factory(t, 1, 1))
	ct, e := encFor(t, 2)
	info := infoFor(2, 2)
	info.Encryption = e
	stillV1 := func(t *testing.T, f *Flash, d *Device) {
		t.Helper()
		dec := mustBoot(t, d)
		if dec.Version != 1 || dec.Action == ActionInstalled {
			t.Fatalf("boot: %+v, want v1", dec)
		}
		if err := r.checkActive(f, 1); err != nil {
			t.Fatal(err)
		}
		if dec := mustBoot(t, d); dec.Version != 1 || dec.Action != ActionNone {
			t.Fatalf("second boot: %+v", dec)
		}
	}

	t.Run("tampered before commit", func(t *testing.T) {
		f := clone(r.g, snap)
		d := r.open(t, f)
		bad := bytes.Clone(ct)
		bad[1000] ^= 0x20
		if err := d.Stage(ctx, 0, bad, info); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("commit: %v, want ErrDigestMismatch", err)
		}
		stillV1(t, f, d)
	})
	t.Run("tampered after commit", func(t *testing.T) {
		f := clone(r.g, snap)
		d := r.open(t, f)
		slot := stageEncrypted(t, d, 2, 2)
		if err := f.FlipBit(d.imageOff(r.l.Slots[slot])+2000, 1); err != nil {
			t.Fatal(err)
		}
		stillV1(t, f, d)
	})
	t.Run("signed plaintext digest differs", func(t *testing.T) {
		f := clone(r.g, snap)
		d := r.open(t, f)
		bad := info
		bad.Digest[0] ^= 1
		if err := d.Stage(ctx, 0, ct, bad); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("commit: %v, want ErrDigestMismatch", err)
		}
		stillV1(t, f, d)
	})
	t.Run("another KEK", func(t *testing.T) {
		f := clone(r.g, snap)
		stageEncrypted(t, r.open(t, f), 2, 2)
		other := r
		other.rot.KEK = []byte("another-kek-16by")
		d := other.open(t, f)
		st, err := d.Status()
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Slots[0]; s.Valid || s.Error == "" {
			t.Fatalf("slot sealed with another KEK: %+v", s)
		}
		if _, err := d.readHeader(r.l.Slots[0]); !errors.Is(err, ErrSlotKey) {
			t.Fatalf("read header: %v, want ErrSlotKey", err)
		}
		stillV1(t, f, d)
		none := r
		none.rot.KEK = nil
		if _, err := none.open(t, f).readHeader(r.l.Slots[0]); !errors.Is(err, ErrSlotKey) {
			t.Fatalf("read header without a KEK: %v, want ErrSlotKey", err)
		}
	})
	t.Run("content key does not decrypt to the image", func(t *testing.T) {
		// A header (authentic: the device key tags it) whose wrapped key is
		// not the ciphertext's: the install decrypts garbage, which never
		// boots; the slot is dropped and v1 comes back.
		for _, align := range []int{1, 4, 16} {
			r := newRig(align, 2)
			f := r.factory(t, 1, 1)
			d := r.open(t, f)
			stageUndecryptable(t, d, 0, 2)
			dec := mustBoot(t, d)
			if dec.Version != 1 || dec.Action != ActionRecovered {
				t.Fatalf("align %d: boot: %+v, want v1 recovered", align, dec)
			}
			if err := r.checkActive(f, 1); err != nil {
				t.Fatal(err)
			}
			if _, err := d.readHeader(r.l.Slots[0]); !errors.Is(err, ErrNoHeader) {
				t.Fatalf("align %d: the bad slot is still there: %v", align, err)
			}
			if dec := mustBoot(t, d); dec.Version != 1 || dec.Action != ActionNone {
				t.Fatalf("align %d: second boot: %+v", align, dec)
			}
		}
	})
	t.Run("device cannot keep encrypted slots", func(t *testing.T) {
		none := r
		none.rot.KEK = nil
		d := none.open(t, clone(r.g, snap))
		if d.SupportsEncryptedSlots() {
			t.Fatal("a device without a KEK supports encrypted slots")
		}
		if err := d.Stage(ctx, 0, ct, info); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("commit without a KEK: %v, want ErrInvalidOption", err)
		}
		sb := r
		sb.rot.Verifier = &fakeVerifier{}
		if err := sb.open(t, clone(r.g, snap)).Stage(ctx, 0, ct, info); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("commit in secure-boot mode: %v, want ErrInvalidOption", err)
		}
		bad := r
		bad.rot.KEK = []byte("short")
		if _, err := Open(clone(r.g, snap), bad.l, bad.rot); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("open with a 5-byte KEK: %v", err)
		}
	})
}

// TestSlotCipherSeek checks the seekable keystream against a sequential
// one at every offset of a few blocks, across a counter carry.
func TestSlotCipherSeek(t *testing.T) {
	_, e := encFor(t, 3)
	blk, err := aes.NewCipher(e.Key)
	if err != nil {
		t.Fatal(err)
	}
	e.IV = [16]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE}
	want := make([]byte, 100)
	cipher.NewCTR(blk, e.IV[:]).XORKeyStream(want, want)
	c := &slotCipher{block: blk, iv: e.IV}
	for off := range 90 {
		got := make([]byte, 10)
		c.ctrAt(uint64(off)).XORKeyStream(got, got)
		if !bytes.Equal(got, want[off:off+10]) {
			t.Fatalf("keystream at %d differs", off)
		}
	}
}
