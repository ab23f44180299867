package bootctl

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

// EnvelopeVerifier verifies a signed SUIT envelope against the public key
// it was built with (in the root-of-trust store) and returns what the
// envelope signs: the sequence number, the image digest and size. It is
// defined here so bootctl does not depend on the manifest package.
type EnvelopeVerifier interface {
	VerifyEnvelope(envelope []byte) (seq uint64, imageDigest [32]byte, imageSize uint64, err error)
}

// RootOfTrust is the device's root-of-trust store: kept outside the flash
// (like OTP or a secure element), so flash dumps and fault injection never
// touch it.
type RootOfTrust struct {
	// DeviceKey is the per-device HMAC-SHA256 key that tags every header;
	// at least MinDeviceKeySize bytes.
	DeviceKey []byte
	// Verifier, when set, turns on secure-boot mode: every image must carry
	// a signed envelope, verified on every boot, that agrees with the header.
	Verifier EnvelopeVerifier
	// KEK, when set, is the device's key-encryption key (16 or 32 bytes,
	// the same key the device agent unwraps content keys with): the slot
	// key that wraps an encrypted slot's content key is derived from it
	// (slotenc.go). Without it encrypted slots are refused (ErrSlotKey).
	KEK []byte
	// Counter, when set, is a hardware monotonic counter (OTP fuses, RPMB)
	// that keeps the anti-rollback floor too, so that erasing or replaying
	// the status area cannot lower it. The floor is the larger of the two.
	Counter MonotonicCounter
}

// MinDeviceKeySize is the shortest RootOfTrust.DeviceKey Open accepts.
const MinDeviceKeySize = 16

// MonotonicCounter is a counter that only goes up, outside the flash.
type MonotonicCounter interface {
	// Value returns the counter.
	Value() (uint64, error)
	// Raise sets the counter to v if v is larger; it never lowers it.
	Raise(v uint64) error
}

// Option configures Open.
type Option func(*config) error

type config struct {
	trialBoots int
}

// The number of trial boots (WithTrialBoots): the default, and the largest
// accepted.
const (
	DefaultTrialBoots = 3
	MaxTrialBoots     = 250
)

// WithTrialBoots sets K, the number of boots a newly installed image may
// make without Confirm before the next start reverts it: 1 to
// MaxTrialBoots, default DefaultTrialBoots.
func WithTrialBoots(k int) Option {
	return func(c *config) error {
		if k < 1 || k > MaxTrialBoots {
			return fmt.Errorf("%w: trial boots %d, want 1..%d", ErrInvalidOption, k, MaxTrialBoots)
		}
		c.trialBoots = k
		return nil
	}
}

// Device is the bootloader's view of one device: a flash, its layout and
// its root-of-trust store. The device agent uses the same type to stage
// candidates (FreeSlot, OpenCandidate), to Confirm a trial image and to
// read Status.
//
// A Device is NOT safe for concurrent use, except that one Candidate may
// be written from several goroutines. Two Devices must not share a Flash
// at the same time.
type Device struct {
	f    *Flash
	g    Geometry
	l    Layout
	rot  RootOfTrust
	cfg  config
	log  *statusLog
	bufN int // size of the image I/O buffers it borrows (getBuf)
	ops0 uint64
}

// Open opens a device. It reads the status area (no write). Errors wrap
// ErrBadLayout, ErrInvalidOption or a flash error.
func Open(f *Flash, l Layout, rot RootOfTrust, opts ...Option) (*Device, error) {
	g := f.Geometry()
	if err := l.Validate(g); err != nil {
		return nil, err
	}
	if len(rot.DeviceKey) < MinDeviceKeySize {
		return nil, fmt.Errorf("%w: device key of %d bytes, need at least %d", ErrInvalidOption, len(rot.DeviceKey), MinDeviceKeySize)
	}
	if err := checkKEK(rot.KEK); err != nil {
		return nil, err
	}
	cfg := config{trialBoots: DefaultTrialBoots}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	rot.DeviceKey = append([]byte(nil), rot.DeviceKey...)
	rot.KEK = append([]byte(nil), rot.KEK...)
	d := &Device{f: f, g: g, l: l, rot: rot, cfg: cfg, log: newStatusLog(f, l.Status)}
	bufSize := max(g.SectorSize, (64<<10)/g.SectorSize*g.SectorSize)
	d.bufN = bufSize
	if err := d.load(); err != nil {
		return nil, err
	}
	return d, nil
}

// Layout returns the device layout.
func (d *Device) Layout() Layout { return d.l }

// Flash returns the device flash.
func (d *Device) Flash() *Flash { return d.f }

// SecureBoot reports whether the bootloader checks a signed envelope
// against every image it installs or boots (RootOfTrust.Verifier).
func (d *Device) SecureBoot() bool { return d.rot.Verifier != nil }

// load reads the status area and applies the hardware floor, if any.
func (d *Device) load() error {
	if err := d.log.load(); err != nil {
		return err
	}
	if d.rot.Counter != nil {
		v, err := d.rot.Counter.Value()
		if err != nil {
			return fmt.Errorf("bootctl: monotonic counter: %w", err)
		}
		d.log.cur.Floor = max(d.log.cur.Floor, v)
	}
	return nil
}

// image is a region's header as read and authenticated.
type image struct {
	hdr Header
	raw []byte      // header, encryption block and envelope bytes as stored
	enc *slotCipher // an encrypted slot's key material, nil for plaintext
}

// stored is the SHA-256 the region's bytes hash to: the plaintext's, or
// an encrypted slot's ciphertext's.
func (im image) stored() Digest {
	if im.enc != nil {
		return im.enc.stored
	}
	return im.hdr.Digest
}

// envelope is the stored signed envelope.
func (im image) envelope() []byte {
	if im.enc != nil {
		return im.raw[encEnvelopeAt:]
	}
	return im.raw[envelopeOffset:]
}

// SupportsEncryptedSlots reports whether the device can keep encrypted
// candidates (CandidateInfo.Encryption): its root of trust holds a KEK
// and it is not in secure-boot mode.
func (d *Device) SupportsEncryptedSlots() bool { return len(d.rot.KEK) > 0 && d.rot.Verifier == nil }

func (d *Device) slotRegion(slot int) Region { return d.l.Slots[slot] }

func (d *Device) regionOff(r Region) int64 { return int64(r.Start) * int64(d.g.SectorSize) }

func (d *Device) imageOff(r Region) int64 {
	return d.regionOff(r) + int64(d.l.HeaderSectors)*int64(d.g.SectorSize)
}

// readHeader reads, parses and authenticates a region's header (and in
// secure-boot mode verifies its envelope). It does not hash the image.
// An encrypted slot's header is unwrapped with the root of trust's KEK:
// its Digest is then the plaintext's.
func (d *Device) readHeader(r Region) (image, error) {
	area := int64(d.l.HeaderSectors) * int64(d.g.SectorSize)
	raw := make([]byte, min(area, encEnvelopeAt))
	if _, err := d.f.ReadAt(raw, d.regionOff(r)); err != nil {
		return image{}, err
	}
	h, err := parseHeader(raw)
	if err != nil {
		return image{}, err
	}
	envAt := int64(envelopeOffset)
	if h.Encrypted {
		envAt = encEnvelopeAt
	}
	raw = raw[:envAt]
	if int64(h.EnvelopeLen) > area-envAt {
		return image{}, fmt.Errorf("%w: envelope of %d bytes in a %d-byte header area", ErrHeaderCorrupt, h.EnvelopeLen, area)
	}
	if h.Size > uint64(d.l.ImageCapacity(d.g)) {
		return image{}, fmt.Errorf("%w: %d bytes in a %d-byte region", ErrTooLarge, h.Size, d.l.ImageCapacity(d.g))
	}
	if h.EnvelopeLen > 0 {
		raw = append(raw, make([]byte, h.EnvelopeLen)...)
		if _, err := d.f.ReadAt(raw[envAt:], d.regionOff(r)+envAt); err != nil {
			return image{}, err
		}
	}
	if err := verifyTag(d.rot.DeviceKey, raw); err != nil {
		return image{}, err
	}
	im := image{hdr: h, raw: raw}
	if h.Encrypted {
		if r == d.l.Active {
			return image{}, fmt.Errorf("%w: encrypted header in the active region", ErrHeaderCorrupt)
		}
		if d.rot.Verifier != nil {
			return image{}, fmt.Errorf("%w: secure-boot mode takes no encrypted slot", ErrEnvelope)
		}
		c, plain, err := openEncBlock(d.rot.KEK, raw[envelopeOffset:encEnvelopeAt], h.Digest)
		if err != nil {
			return image{}, err
		}
		im.enc, im.hdr.Digest = c, plain
		return im, nil
	}
	if err := d.checkEnvelope(h, im.envelope()); err != nil {
		return image{}, err
	}
	return im, nil
}

func (d *Device) checkEnvelope(h Header, env []byte) error {
	if d.rot.Verifier == nil {
		return nil
	}
	if len(env) == 0 {
		return fmt.Errorf("%w: secure-boot mode and the image has no envelope", ErrEnvelope)
	}
	seq, dg, size, err := d.rot.Verifier.VerifyEnvelope(env)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEnvelope, err)
	}
	if seq != h.Version || dg != h.Digest || size != h.Size {
		return fmt.Errorf("%w: envelope signs version %d, %d bytes, digest %x; header says %d, %d bytes, %x",
			ErrEnvelope, seq, size, dg[:4], h.Version, h.Size, h.Digest[:4])
	}
	return nil
}

// hashImage hashes the first size bytes of a region's image area.
func (d *Device) hashImage(ctx context.Context, r Region, size uint64) (Digest, error) {
	if err := ctx.Err(); err != nil {
		return Digest{}, err
	}
	h := sha256.New()
	bp := getBuf(d.bufN)
	defer putBuf(bp)
	if err := d.f.scan(d.imageOff(r), int64(size), *bp, func(p []byte) { h.Write(p) }); err != nil {
		return Digest{}, err
	}
	var dg Digest
	h.Sum(dg[:0])
	return dg, nil
}

// verify reads the header and hashes the image of a region.
func (d *Device) verify(ctx context.Context, r Region) (image, error) {
	im, err := d.readHeader(r)
	if err != nil {
		return image{}, err
	}
	dg, err := d.hashImage(ctx, r, im.hdr.Size)
	if err != nil {
		return image{}, err
	}
	if want := im.stored(); dg != want {
		return image{}, fmt.Errorf("%w: image hashes to %x, header says %x", ErrDigestMismatch, dg[:8], want[:8])
	}
	return im, nil
}

// ImageInfo describes one stored image from its header (the image bytes
// are not hashed).
type ImageInfo struct {
	Header
	// Valid reports that the header parses and authenticates.
	Valid bool `json:"valid"`
	// Error says why the header is refused, when it is.
	Error string `json:"error,omitempty"`
}

// Status is the device state as the agent sees it.
type Status struct {
	// Active is the active image's header.
	Active ImageInfo `json:"active"`
	// Slots are the candidate slots' headers.
	Slots []ImageInfo `json:"slots"`
	// Floor is the anti-rollback floor: no image with a lower security
	// counter boots.
	Floor uint64 `json:"floor"`
	// Trial reports that the active image awaits Confirm.
	Trial bool `json:"trial"`
	// TrialBoots is how many boots the trial image has made, of TrialLimit.
	TrialBoots int `json:"trial_boots"`
	TrialLimit int `json:"trial_limit"`
	// PrevSlot is the slot that keeps the previous image, -1 if none.
	PrevSlot int `json:"prev_slot"`
	// LastAction and LastReason describe the last revert, recovery or
	// install.
	LastAction Action `json:"last_action"`
	LastReason string `json:"last_reason,omitempty"`
	// Pending names a journalled copy a power cut interrupted ("" if none);
	// the next Boot resumes it.
	Pending string `json:"pending,omitempty"`
}

func info(im image, err error) ImageInfo {
	if err != nil {
		return ImageInfo{Error: err.Error()}
	}
	return ImageInfo{Header: im.hdr, Valid: true}
}

// Status reads the status area and every header. It does not write.
func (d *Device) Status() (Status, error) {
	if err := d.load(); err != nil {
		return Status{}, err
	}
	st := d.log.cur
	s := Status{Floor: st.Floor, Trial: st.Trial, TrialBoots: st.TrialBoots, TrialLimit: d.cfg.trialBoots,
		PrevSlot: st.Prev, LastAction: st.Action, LastReason: st.Reason.String()}
	switch st.Op {
	case opCopy:
		s.Pending = fmt.Sprintf("%s from slot %d", st.Action, st.Src)
	}
	im, err := d.readHeader(d.l.Active)
	if isFlashErr(err) {
		return Status{}, err
	}
	s.Active = info(im, err)
	for i := range d.l.Slots {
		im, err := d.readHeader(d.slotRegion(i))
		if isFlashErr(err) {
			return Status{}, err
		}
		s.Slots = append(s.Slots, info(im, err))
	}
	return s, nil
}

// Confirm marks the trial image good (the agent calls it after its health
// check): it leaves trial state and raises the anti-rollback floor to the
// image's security counter. Confirm is a no-op when no trial is running.
// It returns ErrInvalidImage-wrapped errors if the active image is not the
// trial image, or a flash error.
func (d *Device) Confirm() error {
	if err := d.load(); err != nil {
		return err
	}
	st := d.log.cur
	if !st.Trial {
		return nil
	}
	im, err := d.readHeader(d.l.Active)
	if err != nil {
		return fmt.Errorf("bootctl: confirm: %w", err)
	}
	if im.hdr.Digest != st.TrialImage {
		return fmt.Errorf("%w: active image %x is not the trial image %x", ErrInvalidImage, im.hdr.Digest[:8], st.TrialImage[:8])
	}
	st.Trial, st.TrialBoots = false, 0
	st.Confirmed = im.hdr.Digest
	st.Floor = max(st.Floor, im.hdr.SecurityCounter)
	if d.rot.Counter != nil {
		if err := d.rot.Counter.Raise(st.Floor); err != nil {
			return fmt.Errorf("bootctl: monotonic counter: %w", err)
		}
	}
	return d.log.append(st)
}

// Abandon gives up on the trial image now, instead of after K boots: it
// persists the trial as out of boots, so the next Boot reverts it
// (ReasonTrialExpired). A Chain calls it on a stage whose next stage has
// nothing to boot. (The device agent does not: after a failed health
// check it runs Boot until the bootloader reverts.) It returns
// ErrNotInTrial if no trial is running, or a flash error.
func (d *Device) Abandon() error {
	if err := d.load(); err != nil {
		return err
	}
	st := d.log.cur
	if !st.Trial {
		return ErrNotInTrial
	}
	st.TrialBoots = 255
	return d.log.append(st)
}

// FreeSlot returns the slot a new candidate should be staged into: a slot
// without a valid header if any, else the one with the lowest version,
// never the slot keeping a copy of the active image nor, during a trial,
// the slot keeping the previous image. It returns ErrNoFreeSlot if every
// slot must be kept.
func (d *Device) FreeSlot() (int, error) {
	if err := d.load(); err != nil {
		return 0, err
	}
	st := d.log.cur
	active, aerr := d.readHeader(d.l.Active)
	if isFlashErr(aerr) {
		return 0, aerr
	}
	best, bestVer, keptActive := -1, uint64(0), false
	for i := range d.l.Slots {
		im, err := d.readHeader(d.slotRegion(i))
		if isFlashErr(err) {
			return 0, err
		}
		if err != nil {
			return i, nil
		}
		if aerr == nil && im.hdr.Digest == active.hdr.Digest && !keptActive {
			keptActive = true
			continue
		}
		if st.Trial && i == st.Prev {
			continue
		}
		if best < 0 || im.hdr.Version < bestVer {
			best, bestVer = i, im.hdr.Version
		}
	}
	if best < 0 {
		return 0, ErrNoFreeSlot
	}
	return best, nil
}

func isFlashErr(err error) bool {
	return err != nil && !errors.Is(err, ErrInvalidImage)
}
