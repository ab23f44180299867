package bootctl

import "errors"

// Flash errors.
var (
	// ErrPowerLost is returned by every flash operation after an injected
	// power cut, until PowerOn. A boot that returns it left the flash in a
	// state the next boot resumes from.
	ErrPowerLost = errors.New("bootctl: power lost")
	// ErrNotErased is returned when a program would write bytes that are
	// not in the erased state (0xFF); NOR flash cannot set bits back to 1.
	ErrNotErased = errors.New("bootctl: program over bytes that are not erased")
	// ErrAlignment is returned when a program offset or length is not a
	// multiple of the flash write alignment.
	ErrAlignment = errors.New("bootctl: misaligned flash program")
	// ErrOutOfRange is returned for an access outside the flash, a region
	// or a candidate image.
	ErrOutOfRange = errors.New("bootctl: out of range")
	// ErrBadGeometry is returned for an impossible flash geometry.
	ErrBadGeometry = errors.New("bootctl: bad flash geometry")
)

// Layout and configuration errors.
var (
	// ErrBadLayout is returned for a layout that overlaps, leaves the
	// flash, or has too few slots or status sectors.
	ErrBadLayout = errors.New("bootctl: bad layout")
	// ErrInvalidOption is returned for a bad Option or RootOfTrust.
	ErrInvalidOption = errors.New("bootctl: invalid option")
	// ErrNotCombinable is returned by Combine when the application would
	// not start right after the bootloader, or an image does not fit.
	ErrNotCombinable = errors.New("bootctl: images cannot be combined for this layout")
)

// Image verification errors. Each wraps ErrInvalidImage, so callers that
// only need "this image must not boot" can test for that.
var (
	// ErrInvalidImage is the parent of every reason an image is refused.
	ErrInvalidImage = errors.New("bootctl: invalid image")
	// ErrHeaderCorrupt is returned for a header with a bad magic, header
	// version, length field or CRC (for example a torn header write).
	ErrHeaderCorrupt = wrapErr(ErrInvalidImage, "bootctl: header corrupt")
	// ErrNoHeader is returned when the header area is erased.
	ErrNoHeader = wrapErr(ErrInvalidImage, "bootctl: no header")
	// ErrTagMismatch is returned when the header's HMAC does not verify
	// under the device key.
	ErrTagMismatch = wrapErr(ErrInvalidImage, "bootctl: header authentication tag mismatch")
	// ErrDigestMismatch is returned when the image bytes do not hash to
	// the header's SHA-256.
	ErrDigestMismatch = wrapErr(ErrInvalidImage, "bootctl: image digest mismatch")
	// ErrEnvelope is returned in secure-boot mode when the stored envelope
	// is missing, does not verify, or disagrees with the header.
	ErrEnvelope = wrapErr(ErrInvalidImage, "bootctl: signed envelope refused")
	// ErrBelowFloor is returned for an image whose security counter is
	// below the anti-rollback floor.
	ErrBelowFloor = wrapErr(ErrInvalidImage, "bootctl: security counter below the anti-rollback floor")
	// ErrSlotKey is returned for an encrypted slot whose content key does
	// not unwrap: the root of trust holds no KEK, or another one.
	ErrSlotKey = wrapErr(ErrInvalidImage, "bootctl: encrypted slot key does not unwrap")
	// ErrTooLarge is returned for an image or envelope that does not fit
	// its region.
	ErrTooLarge = wrapErr(ErrInvalidImage, "bootctl: image too large for its region")
)

// Device errors.
var (
	// ErrNoBootableImage is returned by Boot when no image at or above the
	// floor is valid: the device stays in the recovery state and accepts a
	// new valid candidate.
	ErrNoBootableImage = errors.New("bootctl: no bootable image (recovery state)")
	// ErrNoFreeSlot is returned by FreeSlot when every slot holds an image
	// that must be kept.
	ErrNoFreeSlot = errors.New("bootctl: no free slot")
	// ErrBadSlot is returned for a slot index outside the layout.
	ErrBadSlot = errors.New("bootctl: no such slot")
	// ErrIncomplete is returned by Commit when some bytes of the image were
	// never written.
	ErrIncomplete = errors.New("bootctl: candidate image incomplete")
	// ErrConflict is returned by Candidate.WriteAt when the bytes differ
	// from bytes already written at that offset.
	ErrConflict = errors.New("bootctl: chunk conflicts with bytes already written")
	// ErrNotInTrial is returned by Abandon when no trial is running.
	ErrNotInTrial = errors.New("bootctl: no image in trial state")
	// ErrClosed is returned when a Candidate is used after Commit or Abort.
	ErrClosed = errors.New("bootctl: candidate closed")
)

type wrappedError struct {
	msg    string
	parent error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.parent }

func wrapErr(parent error, msg string) error { return &wrappedError{msg: msg, parent: parent} }
