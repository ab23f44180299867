// Package devicefile reads and writes the device file of a simulated
// device: FLASH.device.json, next to the file-backed flash FLASH. Both
// binaries that drive a simulated device use it: `firmcast boot` (init
// writes it; stage, run, confirm and inspect open the device through it)
// and firmcast-agent (run opens the device through it), as does the
// simulated fleet (internal/fleet), which writes one per device.
//
// The device file stands for what a real device keeps outside its flash:
//
//   - what the bootloader is built with: the flash geometry, the layout of
//     its regions, and the number of trial boots K a new image may make
//     before it must be confirmed;
//   - the root-of-trust store (OTP, a secure element): the per-device HMAC
//     key that tags every image header, and, in secure-boot mode, the
//     public keys whose SUIT envelopes the bootloader accepts.
//
// # Format
//
// A JSON object, written with atomicfile (write, fsync, rename) at mode
// 0600, because it holds the device key:
//
//	{
//	  "geometry":    {bootctl.Geometry},
//	  "layout":      {bootctl.Layout},
//	  "trial_boots": K,
//	  "device_key":  "HEX",          (at least bootctl.MinDeviceKeySize bytes)
//	  "public_key":  "BASE64 OF PEM" (optional: secure-boot mode)
//	  "kek":         "HEX",          (optional: encrypted images, 16 or 32 bytes)
//	  "kek_id":      "ID",           (optional: the KEK's key id)
//	  "encrypted_slots": true        (optional: slots keep ciphertext; needs kek)
//	}
//
// kek is the device's key-encryption key for encrypted images: the
// publisher wraps each image's content key with it, in the device's own
// notice. Like device_key it stands for the secure element; the agent
// reads it from here and never writes it to its state directory. The
// bootloader gets it from here too (RootOfTrust): with encrypted_slots the
// candidate slots keep encrypted images' ciphertext, their content key
// wrapped in the slot header with a key derived from kek, and the
// bootloader decrypts during the install.
//
// public_key holds one or more concatenated PEM "PUBLIC KEY" blocks,
// parsed with suit.ParseTrustPEM: a file holding the current and the next
// signing key lets a device boot images signed by either, across a key
// rotation. The bootloader checks envelopes with suit.BootVerifier (shape,
// signature by one of those keys, SHA-256 image digest and size).
//
// trial_boots 0, or absent, means the bootloader's default,
// bootctl.DefaultTrialBoots, like an option left out: there is no setting
// without a trial, since every new image boots at least once unconfirmed.
// Other values outside 1..bootctl.MaxTrialBoots are refused.
//
// Reading is strict: an unknown field (a misspelt "trial_boot" would
// otherwise silently mean the default), trailing data, a file over 64 KiB
// or any invalid field is refused with ErrInvalid, naming the file and the
// field.
package devicefile
