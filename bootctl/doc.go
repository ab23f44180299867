// Package bootctl is the bootloader module over a simulated NOR flash: it
// stores candidate images, selects and installs the newest valid one at
// each start, survives a power cut at any flash operation, boots new
// images on trial and rolls back what is not confirmed, and never boots
// an image below the anti-rollback floor. It follows the Mbed OS
// bootloader (a metadata header per image, a per-device MAC instead of a
// signature, "newest valid candidate wins") and goes beyond it (journalled
// install, trial boots, security-counter floor, optional secure boot,
// multi-stage chains).
//
// # Who does what
//
//   - The bootloader calls Device.Boot (or Chain.Boot for several stages)
//     on every start and forwards control to the image its Decision names.
//   - The device agent (deviceagent) verifies the signed manifest, then
//     streams the image into a slot: FreeSlot, OpenCandidate, WriteAt (any
//     order, repeats allowed), Commit with the manifest's version, security
//     counter, digest (and envelope). Commit checks the SHA-256 and writes
//     the header with the device's HMAC tag: the MAC replaces the
//     signature, as in the Mbed design. The agent then reboots, and after
//     its health check calls Confirm; when the check fails it boots again
//     until the bootloader reverts (Abandon makes the next start revert at
//     once instead of after K boots; a Chain uses it). Status tells it the
//     active version, trial state, floor and the last revert reason.
//   - Tools (firmcast boot ...) use Combine to merge a bootloader and an
//     application into one flash image.
//
// # What lives where
//
// The flash (Flash: in memory, or file-backed and sparse so hundreds of
// 8 MiB devices are cheap) holds, per Layout: the boot region (boot
// selector and bootloader code, never written by Boot); the active
// application region; N >= 2 candidate slots; and the status area. Each
// image region starts with a header (format in header.go: magic, header
// version, firmware version = SUIT sequence number, security counter,
// size, SHA-256, campaign id, CRC, HMAC-SHA256 tag) and, in secure-boot
// mode, the signed SUIT envelope. The status area (status.go) is an
// append-only log of CRC-protected records: the copy journal, trial
// state and boot count, the floor, the last confirmed and last rejected
// images and the last revert reason.
//
// With encrypted slots (slotenc.go) a candidate slot keeps an encrypted
// image's AES-CTR ciphertext under a version 2 header whose encryption
// block carries the content key and the plaintext's SHA-256, wrapped with
// a slot key derived from the device's KEK; the install decrypts as it
// copies, and the active region always holds plaintext.
//
// The root-of-trust store (RootOfTrust: the per-device MAC key, the KEK, in
// secure-boot mode the envelope verifier holding the public key, and
// optionally a hardware monotonic counter that keeps the floor) is not on
// the flash, like OTP or a secure element: flash dumps and fault
// injection never touch it. Without the counter the floor lives only in
// the status area, where someone able to erase the flash can lower it.
//
// # What survives a reboot
//
// Everything on the flash; nothing else. Every copy into the active
// region is journalled first, the previous image is always kept in a slot,
// headers are written last and erased first, so the next Boot after a
// power cut (even a torn program or interrupted erase) resumes or falls
// back and always ends in a valid image: the power-cut tests check this at
// every operation index.
//
// # Imports
//
// bootctl knows no network and imports no transport, and no other package
// of ours: it does not import schemas/suit either; secure-boot mode goes
// through the small EnvelopeVerifier interface defined here.
package bootctl
