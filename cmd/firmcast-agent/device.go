package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas/suit"
)

// deviceFile is <flash>.device.json as written by `firmcast boot init`: the
// geometry and layout the bootloader is built with and the root-of-trust
// store (device key, optional secure-boot public key).
type deviceFile struct {
	Geometry   bootctl.Geometry `json:"geometry"`
	Layout     bootctl.Layout   `json:"layout"`
	TrialBoots int              `json:"trial_boots"`
	DeviceKey  string           `json:"device_key"`
	PublicKey  []byte           `json:"public_key,omitempty"`
}

// openDevice opens the flash and its device file. The caller closes the flash.
func openDevice(flash string) (*bootctl.Device, *bootctl.Flash, error) {
	side := flash + ".device.json"
	b, err := os.ReadFile(side)
	if err != nil {
		return nil, nil, fmt.Errorf("--flash: device file (create the flash with `firmcast boot init`): %w", err)
	}
	var dev deviceFile
	if err := json.Unmarshal(b, &dev); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", side, err)
	}
	key, err := hex.DecodeString(dev.DeviceKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: device_key: %w", side, err)
	}
	rot := bootctl.RootOfTrust{DeviceKey: key}
	if len(dev.PublicKey) > 0 {
		pub, err := suit.ParsePublicKeyPEM(dev.PublicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: public_key: %w", side, err)
		}
		rot.Verifier = envelopeVerifier{suit.TrustAnchors{pub}}
	}
	f, err := bootctl.OpenFileFlash(flash, dev.Geometry)
	if err != nil {
		return nil, nil, err
	}
	var opts []bootctl.Option
	if dev.TrialBoots > 0 {
		opts = append(opts, bootctl.WithTrialBoots(dev.TrialBoots))
	}
	d, err := bootctl.Open(f, dev.Layout, rot, opts...)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return d, f, nil
}

// envelopeVerifier is bootctl's secure-boot check through the SUIT package.
type envelopeVerifier struct{ anchors suit.TrustAnchors }

func (v envelopeVerifier) VerifyEnvelope(env []byte) (uint64, [32]byte, uint64, error) {
	var d [32]byte
	m, err := suit.Verify(env, v.anchors)
	if err != nil {
		return 0, d, 0, err
	}
	dg, ok := m.ImageDigest()
	size, ok2 := m.ImageSize()
	if !ok || !ok2 || len(dg.Bytes) != 32 {
		return 0, d, 0, fmt.Errorf("%w: envelope has no image digest and size", suit.ErrParameter)
	}
	copy(d[:], dg.Bytes)
	return m.Seq, d, size, nil
}

// parseUUID accepts 32 hex digits, with or without the RFC 4122 dashes.
func parseUUID(flag, s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return nil, fmt.Errorf("%s %q: want a UUID (32 hex digits)", flag, s)
	}
	return b, nil
}
