package devicefile

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Suffix names the device file of a flash: FLASH + Suffix.
const Suffix = ".device.json"

// maxSize bounds the device file Read accepts (16 PEM keys take under 8 KiB).
const maxSize = 64 << 10

// Path returns the device file of the flash file flash.
func Path(flash string) string { return flash + Suffix }

// File is the content of a device file. The zero value is not valid:
// Geometry, Layout and DeviceKey are required.
type File struct {
	// Geometry is the flash geometry the bootloader is built for.
	Geometry bootctl.Geometry `json:"geometry"`
	// Layout places the bootloader, the active image, the slots and the
	// status area on the flash.
	Layout bootctl.Layout `json:"layout"`
	// TrialBoots is the number of boots a new image may make unconfirmed:
	// 1 to bootctl.MaxTrialBoots; 0 means bootctl.DefaultTrialBoots.
	TrialBoots int `json:"trial_boots"`
	// DeviceKey is the per-device HMAC key in hex, at least
	// bootctl.MinDeviceKeySize bytes.
	DeviceKey string `json:"device_key"`
	// PublicKey, when set, turns on secure-boot mode: one or more PEM
	// "PUBLIC KEY" blocks trusted to sign envelopes (suit.ParseTrustPEM).
	PublicKey []byte `json:"public_key,omitempty"`
	// KEK, when set, is the device's key-encryption key for encrypted
	// images in hex (16 bytes, A128KW, or 32, A256KW), and KEKID the key
	// id the publisher names it by ("<device>#<generation>"; empty matches
	// any). It stands for a key in the secure element: the agent takes it
	// from here (Keys), never from its state directory.
	KEK   string `json:"kek,omitempty"`
	KEKID string `json:"kek_id,omitempty"`
	// EncryptedSlots, set by `firmcast boot init --encrypted-slots`, makes
	// the agent keep encrypted images' ciphertext in the candidate slot
	// for the bootloader to decrypt (deviceagent.Config.EncryptedSlots).
	// It needs KEK (the bootloader's slot key is derived from it) and no
	// PublicKey (secure-boot mode takes no encrypted slot).
	EncryptedSlots bool `json:"encrypted_slots,omitempty"`
}

// Keys returns the device's content-key unwrapper (a suit.KEK), or nil
// when the file holds no KEK. Errors wrap ErrInvalid and name the field.
func (f File) Keys() (suit.KeyUnwrapper, error) {
	if f.KEK == "" {
		if f.KEKID != "" {
			return nil, fmt.Errorf("%w: kek_id without kek", ErrInvalid)
		}
		return nil, nil
	}
	k, err := hex.DecodeString(f.KEK)
	if err != nil {
		return nil, fmt.Errorf("%w: kek: not hex: %w", ErrInvalid, err)
	}
	if len(k) != 16 && len(k) != 32 {
		return nil, fmt.Errorf("%w: kek: %d bytes, want 16 or 32", ErrInvalid, len(k))
	}
	return suit.KEK{KeyID: []byte(f.KEKID), Key: k}, nil
}

// Validate reports the first invalid field, wrapping ErrInvalid.
func (f File) Validate() error {
	if err := f.Geometry.Validate(); err != nil {
		return fmt.Errorf("%w: geometry: %w", ErrInvalid, err)
	}
	if err := f.Layout.Validate(f.Geometry); err != nil {
		return fmt.Errorf("%w: geometry and layout: %w", ErrInvalid, err)
	}
	if f.TrialBoots < 0 || f.TrialBoots > bootctl.MaxTrialBoots {
		return fmt.Errorf("%w: trial_boots %d: want 1..%d, or 0 for the default (%d)",
			ErrInvalid, f.TrialBoots, bootctl.MaxTrialBoots, bootctl.DefaultTrialBoots)
	}
	if _, err := f.RootOfTrust(); err != nil {
		return err
	}
	if _, err := f.Keys(); err != nil {
		return err
	}
	switch {
	case f.EncryptedSlots && f.KEK == "":
		return fmt.Errorf("%w: encrypted_slots without kek (the bootloader's slot key is derived from it)", ErrInvalid)
	case f.EncryptedSlots && len(f.PublicKey) > 0:
		return fmt.Errorf("%w: encrypted_slots with public_key (secure-boot mode takes no encrypted slot)", ErrInvalid)
	}
	return nil
}

// RootOfTrust returns the device's root-of-trust store: the device key,
// the KEK when set (the bootloader derives the key of encrypted slots
// from it), and, when PublicKey is set, a suit.BootVerifier trusting every
// key it holds. Errors wrap ErrInvalid and name the field.
func (f File) RootOfTrust() (bootctl.RootOfTrust, error) {
	key, err := hex.DecodeString(f.DeviceKey)
	if err != nil {
		return bootctl.RootOfTrust{}, fmt.Errorf("%w: device_key: not hex: %w", ErrInvalid, err)
	}
	if len(key) < bootctl.MinDeviceKeySize {
		return bootctl.RootOfTrust{}, fmt.Errorf("%w: device_key: %d bytes, need at least %d",
			ErrInvalid, len(key), bootctl.MinDeviceKeySize)
	}
	rot := bootctl.RootOfTrust{DeviceKey: key}
	if f.KEK != "" {
		k, err := hex.DecodeString(f.KEK)
		if err != nil || (len(k) != 16 && len(k) != 32) {
			return bootctl.RootOfTrust{}, fmt.Errorf("%w: kek: want 16 or 32 bytes in hex", ErrInvalid)
		}
		rot.KEK = k
	}
	if len(f.PublicKey) > 0 {
		trust, err := suit.ParseTrustPEM(f.PublicKey)
		if err != nil {
			return bootctl.RootOfTrust{}, fmt.Errorf("%w: public_key: %w", ErrInvalid, err)
		}
		rot.Verifier = suit.BootVerifier{Trust: trust}
	}
	return rot, nil
}

// Options returns the bootctl options the device file sets.
func (f File) Options() []bootctl.Option {
	if f.TrialBoots == 0 {
		return nil // bootctl.DefaultTrialBoots
	}
	return []bootctl.Option{bootctl.WithTrialBoots(f.TrialBoots)}
}

// Decode parses and validates a device file. Errors wrap ErrInvalid.
func Decode(b []byte) (File, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return File{}, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	if err := f.Validate(); err != nil {
		return File{}, err
	}
	if len(f.PublicKey) == 0 {
		f.PublicKey = nil // "public_key": "" is no key, as when absent
	}
	return f, nil
}

// Encode validates f and returns its device file: indented JSON ending in
// a newline.
func Encode(f File) ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return append(b, '\n'), nil
}

// Read reads and validates the device file of flash. A missing file wraps
// fs.ErrNotExist; an invalid one wraps ErrInvalid. Errors name the file.
func Read(flash string) (File, error) {
	path := Path(flash)
	r, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return File{}, fmt.Errorf("device file %s (create the flash with `firmcast boot init`): %w", path, err)
	}
	if err != nil {
		return File{}, fmt.Errorf("device file: %w", err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxSize+1))
	if err != nil {
		return File{}, fmt.Errorf("device file: %w", err)
	}
	if len(b) > maxSize {
		return File{}, fmt.Errorf("%s: %w: over %d bytes", path, ErrInvalid, maxSize)
	}
	f, err := Decode(b)
	if err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Write validates f and writes it as the device file of flash, durably
// (atomicfile.WriteFile) and at mode 0600. Errors wrap ErrInvalid or the
// file system's error.
func Write(flash string, f File) error {
	b, err := Encode(f)
	if err != nil {
		return fmt.Errorf("%s: %w", Path(flash), err)
	}
	return atomicfile.WriteFile(Path(flash), b, 0o600)
}

// Open opens the simulated device: the device file of flash, then the
// file-backed flash itself (bootctl.OpenFileFlash) as a bootctl.Device with
// the device file's layout, root of trust and trial boots. It reads the
// flash's status area and writes nothing. The caller closes the returned
// flash, which the device uses. Errors are those of Read, OpenFileFlash
// and bootctl.Open.
func Open(flash string) (*bootctl.Device, *bootctl.Flash, error) {
	f, err := Read(flash)
	if err != nil {
		return nil, nil, err
	}
	rot, err := f.RootOfTrust()
	if err != nil {
		return nil, nil, err
	}
	fl, err := bootctl.OpenFileFlash(flash, f.Geometry)
	if err != nil {
		return nil, nil, err
	}
	d, err := bootctl.Open(fl, f.Layout, rot, f.Options()...)
	if err != nil {
		fl.Close()
		return nil, nil, err
	}
	return d, fl, nil
}
