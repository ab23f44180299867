package deviceagent

import (
	"github.com/firmcast/firmcast/schemas/suit"
)

// Reports name the running image by its digest (DeviceReport.ActiveDigest:
// the publisher makes deltas from it) unless that would disclose what an
// encrypted update keeps secret: the digest of its plaintext, which is
// what the bootloader's header holds once it is installed. Whether the
// running image came encrypted is read from the signed envelope stored
// with it.

// activeDigestPublic reports whether the active image's digest may be
// reported: false when its stored manifest describes an encrypted
// payload, or cannot be read.
func (a *Agent) activeDigestPublic() bool {
	env, err := a.cfg.Boot.ActiveEnvelope()
	if err != nil {
		return false
	}
	if len(env) == 0 {
		return true // a factory image, or one staged without a manifest
	}
	m, err := suit.Decode(env)
	if err != nil {
		return false
	}
	return !encryptedManifest(m)
}

// encryptedManifest reports whether m's payload is encrypted (a
// component's encryption info).
func encryptedManifest(m *suit.Manifest) bool {
	if _, ok, _ := m.ImageEncryption(); ok {
		return true
	}
	return m.ParamsFor(0).EncryptionInfo != nil
}
