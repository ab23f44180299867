package bootctl

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"fmt"
	"sync"
)

// CandidateInfo is what Commit writes into a candidate's header. The
// device agent fills it from the verified manifest.
type CandidateInfo struct {
	// Version is the manifest's SUIT sequence number.
	Version uint64
	// SecurityCounter is the anti-rollback counter; 0 if the manifest sets none.
	SecurityCounter uint64
	// Digest is the SHA-256 the manifest signs for the image.
	Digest [32]byte
	// Campaign is the campaign id, at most MaxCampaignLen bytes.
	Campaign string
	// Envelope is the signed SUIT envelope, stored for secure-boot mode
	// (required when the device has a Verifier; optional otherwise).
	Envelope []byte
	// Encryption, when set, says the slot holds AES-CTR ciphertext (an
	// encrypted slot): Digest is then the plaintext's, and the bootloader
	// decrypts the slot as it installs it. The device needs a KEK in its
	// root of trust and no secure-boot mode (SupportsEncryptedSlots).
	Encryption *SlotEncryption
	// Verified says the caller checked every byte it wrote into this
	// candidate against Digest as it wrote it: each chunk against a chunk
	// table whose authenticated encoding names Digest and the image size
	// (the fetcher's check, which deviceagent makes of every chunk of a
	// full image before it writes it). Commit then writes the header
	// without hashing the slot a second time. Boot still hashes the
	// candidate before it installs it (newestValid), so bytes damaged
	// after they were written are refused there and the device keeps its
	// image. Ignored with Encryption: the slot's ciphertext must still be
	// shown to decrypt to Digest.
	Verified bool
}

// Candidate streams an image into a slot. Chunks may arrive in any order
// and more than once: WriteAt places them, Commit verifies and seals.
// Nothing of the image is held in memory except partially received write
// units (at most WriteAlign-1 bytes each).
//
// Candidate is safe for concurrent use.
type Candidate struct {
	d      *Device
	slot   int
	size   uint64
	region Region

	mu      sync.Mutex
	closed  bool
	pending map[int64]*partialWord // by word offset in the image
	buf     []byte                 // read-back buffer of program
}

type partialWord struct {
	data []byte
	have []bool
}

// OpenCandidate prepares slot for an image of size bytes: it erases the
// slot's header first (so the slot is invalid until Commit) and then the
// sectors the image will use. A slot is best chosen with FreeSlot;
// OpenCandidate does not protect the slot keeping the active image.
// Errors: ErrBadSlot, ErrTooLarge, or a flash error.
func (d *Device) OpenCandidate(ctx context.Context, slot int, size uint64) (*Candidate, error) {
	if slot < 0 || slot >= len(d.l.Slots) {
		return nil, fmt.Errorf("%w: slot %d of %d", ErrBadSlot, slot, len(d.l.Slots))
	}
	if size == 0 || size > uint64(d.l.ImageCapacity(d.g)) {
		return nil, fmt.Errorf("%w: %d bytes, a slot holds 1..%d", ErrTooLarge, size, d.l.ImageCapacity(d.g))
	}
	r := d.slotRegion(slot)
	ss := uint64(d.g.SectorSize)
	n := d.l.HeaderSectors + int((size+ss-1)/ss)
	// In runs of up to 256 sectors, the context checked between them.
	for s := 0; s < n; s += 256 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := d.f.EraseSectors(r.Start+s, min(256, n-s)); err != nil {
			return nil, fmt.Errorf("bootctl: open candidate: %w", err)
		}
	}
	return &Candidate{d: d, slot: slot, size: size, region: r, pending: map[int64]*partialWord{}}, nil
}

// ImageCapacity is the largest image a slot holds, in bytes.
func (d *Device) ImageCapacity() uint64 { return uint64(d.l.ImageCapacity(d.g)) }

// Slot returns the slot the candidate is written into.
func (c *Candidate) Slot() int { return c.slot }

// WriteAt writes p at offset off of the image, like io.WriterAt: it
// returns len(p), nil or an error. Writing bytes equal to bytes already
// written is allowed (a repeated chunk); different bytes return
// ErrConflict. Writes beyond the image size return ErrOutOfRange.
func (c *Candidate) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, ErrClosed
	}
	if off < 0 || uint64(off)+uint64(len(p)) > c.size {
		return 0, fmt.Errorf("%w: %d bytes at %d, image is %d bytes", ErrOutOfRange, len(p), off, c.size)
	}
	a := int64(c.d.g.WriteAlign)
	end := off + int64(len(p))
	// Whole words go straight to flash.
	wStart, wEnd := alignUp(off, a), end/a*a
	if wStart < wEnd {
		if err := c.program(p[wStart-off:wEnd-off], wStart); err != nil {
			return 0, err
		}
	}
	// Bytes of words only partly covered are gathered until complete.
	for _, seg := range [][2]int64{{off, min(wStart, end)}, {max(wEnd, wStart), end}} {
		for i := seg[0]; i < seg[1]; i++ {
			if err := c.partial(i, p[i-off]); err != nil {
				return 0, err
			}
		}
	}
	return len(p), nil
}

// partial records one byte of a word not yet complete.
func (c *Candidate) partial(i int64, b byte) error {
	a := int64(c.d.g.WriteAlign)
	w := i / a * a
	pw := c.pending[w]
	if pw == nil {
		// Already programmed? Then the byte must match.
		cur := []byte{0}
		if _, err := c.d.f.ReadAt(cur, c.d.imageOff(c.region)+i); err != nil {
			return err
		}
		word := make([]byte, a)
		if _, err := c.d.f.ReadAt(word, c.d.imageOff(c.region)+w); err != nil {
			return err
		}
		if !isErased(word) {
			if cur[0] != b {
				return fmt.Errorf("%w: byte %d", ErrConflict, i)
			}
			return nil
		}
		pw = &partialWord{data: bytes.Repeat([]byte{Erased}, int(a)), have: make([]bool, a)}
		c.pending[w] = pw
	}
	if pw.have[i-w] && pw.data[i-w] != b {
		return fmt.Errorf("%w: byte %d", ErrConflict, i)
	}
	pw.data[i-w], pw.have[i-w] = b, true
	// A word is complete when every byte inside the image is present.
	for k := range pw.have {
		if !pw.have[k] && uint64(w)+uint64(k) < c.size {
			return nil
		}
	}
	delete(c.pending, w)
	return c.program(pw.data, w)
}

// program writes aligned bytes at image offset off, skipping bytes that
// are already there.
func (c *Candidate) program(p []byte, off int64) error {
	abs := c.d.imageOff(c.region) + off
	if c.d.f.isKnownErased(abs, int64(len(p))) {
		// Erased since the slot was opened (the flash remembers, for
		// this Flash's life): what the read-back below would find, with
		// no read. Erased bytes need no program (as below: they equal
		// what the flash holds); anything else is programmed, and
		// Program still refuses any bit it cannot set.
		if isErased(p) {
			return nil
		}
		return c.d.f.Program(p, abs)
	}
	// A resumed or rewritten range: read it back, once, into a buffer
	// the candidate keeps (c.mu is held).
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	cur := c.buf[:len(p)]
	if _, err := c.d.f.ReadAt(cur, abs); err != nil {
		return err
	}
	if bytes.Equal(cur, p) {
		return nil
	}
	if isErased(cur) {
		return c.d.f.Program(p, abs)
	}
	a := c.d.g.WriteAlign
	for w := 0; w < len(p); w += a {
		cw, pw := cur[w:w+a], p[w:w+a]
		switch {
		case bytes.Equal(cw, pw):
		case isErased(cw):
			if err := c.d.f.Program(pw, abs+int64(w)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: at %d", ErrConflict, off+int64(w))
		}
	}
	return nil
}

// Commit verifies that the slot holds the image with info.Digest (and in
// secure-boot mode that info.Envelope verifies and agrees) and writes the
// header, tagged with the device key. With info.Verified (the caller
// checked every byte as it wrote it) the slot is not hashed again here;
// Boot hashes it before installing it either way. The candidate is then
// closed. The next Boot installs it if it is newer than the active image.
//
// With info.Encryption the slot must hold the ciphertext: Commit hashes
// it against Encryption.CiphertextDigest and, in the same pass, decrypts
// it into a buffer and hashes the plaintext against info.Digest (the
// signed plaintext digest), so nothing that does not decrypt to the
// signed image is sealed; then it writes a version 2 header carrying the
// content key wrapped with the slot key (slotenc.go).
//
// Errors: ErrIncomplete (bytes missing), ErrDigestMismatch, ErrEnvelope,
// ErrTooLarge, ErrInvalidOption (also for Encryption on a device without
// a KEK or in secure-boot mode), ErrClosed, or a flash error.
func (c *Candidate) Commit(ctx context.Context, info CandidateInfo) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if len(c.pending) > 0 {
		return fmt.Errorf("%w: %d partial write units", ErrIncomplete, len(c.pending))
	}
	d := c.d
	envAt := int64(envelopeOffset)
	if info.Encryption != nil {
		if !d.SupportsEncryptedSlots() {
			return fmt.Errorf("%w: an encrypted slot needs a KEK in the root of trust and no secure-boot mode", ErrInvalidOption)
		}
		envAt = encEnvelopeAt
	}
	area := int64(d.l.HeaderSectors) * int64(d.g.SectorSize)
	if int64(len(info.Envelope)) > area-envAt {
		return fmt.Errorf("%w: envelope of %d bytes, header area holds %d", ErrTooLarge, len(info.Envelope), max(area-envAt, 0))
	}
	h := Header{Version: info.Version, SecurityCounter: info.SecurityCounter, Size: c.size,
		Digest: info.Digest, Campaign: info.Campaign, EnvelopeLen: uint32(len(info.Envelope))}
	if info.Encryption == nil {
		if err := d.checkEnvelope(h, info.Envelope); err != nil {
			return err
		}
	}
	var raw []byte
	var err error
	if e := info.Encryption; e != nil {
		ext, err := sealEncBlock(d.rot.KEK, e, h.Digest)
		if err != nil {
			return err
		}
		ct, pt, err := d.hashEncrypted(ctx, c.region, c.size, e)
		if err != nil {
			return err
		}
		if ct != e.CiphertextDigest {
			return fmt.Errorf("%w: slot %d holds a ciphertext hashing to %x, expected %x", ErrDigestMismatch, c.slot, ct[:8], e.CiphertextDigest[:8])
		}
		if pt != h.Digest {
			return fmt.Errorf("%w: slot %d decrypts to an image hashing to %x, expected %x", ErrDigestMismatch, c.slot, pt[:8], h.Digest[:8])
		}
		h.Digest = ct // on flash, the version 2 header names the ciphertext
		if raw, err = marshalHeaderExt(h, ext, d.rot.DeviceKey, info.Envelope); err != nil {
			return err
		}
	} else {
		if raw, err = marshalHeader(h, d.rot.DeviceKey, info.Envelope); err != nil {
			return err
		}
		if !info.Verified {
			dg, err := d.hashImage(ctx, c.region, c.size)
			if err != nil {
				return err
			}
			if dg != h.Digest {
				return fmt.Errorf("%w: slot %d hashes to %x, expected %x", ErrDigestMismatch, c.slot, dg[:8], h.Digest[:8])
			}
		}
	}
	if err := d.f.Program(padTo(raw, d.g.WriteAlign), d.regionOff(c.region)); err != nil {
		return err
	}
	c.closed = true
	return nil
}

// hashEncrypted hashes the first size bytes of a region's image area as
// stored (the ciphertext) and decrypted with e, in one pass.
func (d *Device) hashEncrypted(ctx context.Context, r Region, size uint64, e *SlotEncryption) (ct, pt Digest, err error) {
	if err := ctx.Err(); err != nil {
		return ct, pt, err
	}
	blk, err := aes.NewCipher(e.Key)
	if err != nil {
		return ct, pt, fmt.Errorf("%w: content key: %w", ErrInvalidOption, err)
	}
	s := cipher.NewCTR(blk, e.IV[:])
	hc, hp := sha256.New(), sha256.New()
	bp, tp := getBuf(d.bufN), getBuf(d.bufN)
	defer putBuf(bp)
	defer func() { clear(*tp); putBuf(tp) }() // plaintext
	tmp := *tp
	if err := d.f.scan(d.imageOff(r), int64(size), *bp, func(p []byte) {
		hc.Write(p)
		s.XORKeyStream(tmp[:len(p)], p)
		hp.Write(tmp[:len(p)])
	}); err != nil {
		return ct, pt, err
	}
	hc.Sum(ct[:0])
	hp.Sum(pt[:0])
	return ct, pt, nil
}

// Abort closes the candidate without a header; the slot stays invalid.
func (c *Candidate) Abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// Stage writes a whole image into slot and commits it: a convenience for
// tools and tests over OpenCandidate, WriteAt and Commit.
func (d *Device) Stage(ctx context.Context, slot int, img []byte, info CandidateInfo) error {
	c, err := d.OpenCandidate(ctx, slot, uint64(len(img)))
	if err != nil {
		return err
	}
	if _, err := c.WriteAt(img, 0); err != nil {
		return err
	}
	return c.Commit(ctx, info)
}
