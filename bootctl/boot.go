package bootctl

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
)

// Decision is the outcome of one Boot.
type Decision struct {
	// Action is what this boot did.
	Action Action `json:"action"`
	// Booted reports that control is forwarded to an image; false in the
	// recovery state.
	Booted bool `json:"booted"`
	// Version, SecurityCounter, Digest and Campaign name the booted image.
	Version         uint64 `json:"version"`
	SecurityCounter uint64 `json:"security_counter"`
	Digest          Digest `json:"digest"`
	Campaign        string `json:"campaign,omitempty"`
	// Slot is the slot this boot copied from, -1 if it copied nothing.
	Slot int `json:"slot"`
	// Trial reports that the image runs in trial state and must be
	// confirmed within TrialLimit boots; TrialBoots counts this one.
	Trial      bool `json:"trial"`
	TrialBoots int  `json:"trial_boots,omitempty"`
	TrialLimit int  `json:"trial_limit,omitempty"`
	// Reason says why the boot reverted, recovered or failed.
	Reason string `json:"reason,omitempty"`
	// Ops is the number of flash programs and erases this boot made.
	Ops uint64 `json:"ops"`
}

// Boot runs the boot selection once, as the bootloader does on every
// start, and returns which image it forwards control to:
//
//  1. resume a journalled copy a power cut interrupted;
//  2. a trial image that used up its K boots (or got damaged) is reverted
//     to the previous image, and its slot is invalidated;
//  3. otherwise the newest valid candidate strictly newer than the active
//     image, with a security counter not below the floor, is verified
//     (hash, tag, envelope) and copied into the active region, keeping the
//     previous image in a slot; it boots in trial state;
//  4. otherwise the active image is checked against its header;
//  5. a damaged or below-floor active image is replaced by the newest
//     valid stored image at or above the floor; if none is left the
//     device stays in the recovery state (Action "failed",
//     ErrNoBootableImage) and accepts a new valid candidate.
//
// Every copy into the active region is journalled in the status area
// first, so a power cut at any flash operation (ErrPowerLost, or ctx
// cancelled) leaves a state the next Boot completes. Boot never boots an
// image whose hash, tag, envelope or floor check failed.
func (d *Device) Boot(ctx context.Context) (Decision, error) {
	start := d.f.Stats().Ops()
	dec, err := d.boot(ctx)
	dec.Ops = d.f.Stats().Ops() - start
	if dec.Action == "" {
		dec.Action = ActionFailed
	}
	return dec, err
}

func (d *Device) boot(ctx context.Context) (Decision, error) {
	if err := d.load(); err != nil {
		return Decision{Slot: -1}, err
	}
	st := d.log.cur
	if st.Op == opCopy {
		return d.resume(ctx, st)
	}
	active, aerr := d.readHeader(d.l.Active)
	if isFlashErr(aerr) {
		return Decision{Slot: -1}, aerr
	}
	reason := ReasonActiveDamaged
	if errors.Is(aerr, ErrNoHeader) {
		reason = ReasonNoActiveImage
	}
	if aerr == nil && active.hdr.SecurityCounter < st.Floor {
		aerr = fmt.Errorf("%w: counter %d, floor %d", ErrBelowFloor, active.hdr.SecurityCounter, st.Floor)
		reason = ReasonBelowFloor
	}
	if st.Trial {
		if aerr != nil || active.hdr.Digest != st.TrialImage {
			return d.revert(ctx, st, ReasonActiveDamaged)
		}
		if st.TrialBoots >= d.cfg.trialBoots {
			return d.revert(ctx, st, ReasonTrialExpired)
		}
		if err := d.checkActive(ctx, active); err != nil {
			if isFlashErr(err) {
				return Decision{Slot: -1}, err
			}
			return d.revert(ctx, st, ReasonActiveDamaged)
		}
		st.TrialBoots++
		if err := d.log.append(st); err != nil {
			return Decision{Slot: -1}, err
		}
		return d.booted(ActionNone, active.hdr, -1, st, ReasonNone), nil
	}
	if aerr == nil {
		slot, cand, err := d.newestValid(ctx, st, active.hdr.Version+1, -1)
		if err != nil {
			return Decision{Slot: -1}, err
		}
		if slot >= 0 {
			return d.install(ctx, st, active, slot, cand)
		}
		err = d.checkActive(ctx, active)
		if err == nil {
			return d.booted(ActionNone, active.hdr, -1, st, ReasonNone), nil
		}
		if isFlashErr(err) {
			return Decision{Slot: -1}, err
		}
	}
	return d.recover(ctx, st, reason)
}

func (d *Device) checkActive(ctx context.Context, active image) error {
	dg, err := d.hashImage(ctx, d.l.Active, active.hdr.Size)
	if err != nil {
		return err
	}
	if dg != active.hdr.Digest {
		return ErrDigestMismatch
	}
	return nil
}

func (d *Device) booted(a Action, h Header, slot int, st status, r Reason) Decision {
	dec := Decision{Action: a, Booted: true, Version: h.Version, SecurityCounter: h.SecurityCounter,
		Digest: h.Digest, Campaign: h.Campaign, Slot: slot, Trial: st.Trial, Reason: r.String()}
	if st.Trial {
		dec.TrialBoots, dec.TrialLimit = st.TrialBoots, d.cfg.trialBoots
	}
	return dec
}

// newestValid returns the slot with the highest version >= minVersion
// whose header authenticates, whose counter is at or above the floor,
// which is not the rejected image and whose image hashes right. The first
// choice is prefer, when it qualifies. It returns -1 if none does.
func (d *Device) newestValid(ctx context.Context, st status, minVersion uint64, prefer int) (int, image, error) {
	type cand struct {
		slot int
		im   image
	}
	var cs []cand
	for i := range d.l.Slots {
		im, err := d.readHeader(d.slotRegion(i))
		if isFlashErr(err) {
			return -1, image{}, err
		}
		if err != nil || im.hdr.Version < minVersion || im.hdr.SecurityCounter < st.Floor ||
			(im.hdr.Digest == st.Rejected && st.Rejected != Digest{}) {
			continue
		}
		cs = append(cs, cand{i, im})
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if (a.slot == prefer) != (b.slot == prefer) {
			if a.slot == prefer {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(b.im.hdr.Version, a.im.hdr.Version),
			cmp.Compare(b.im.hdr.SecurityCounter, a.im.hdr.SecurityCounter))
	})
	for _, c := range cs {
		dg, err := d.hashImage(ctx, d.slotRegion(c.slot), c.im.hdr.Size)
		if err != nil {
			return -1, image{}, err
		}
		if dg == c.im.stored() {
			return c.slot, c.im, nil
		}
	}
	return -1, image{}, nil
}

// install copies candidate slot into the active region, first making sure
// the current active image is kept in another slot.
func (d *Device) install(ctx context.Context, st status, active image, slot int, cand image) (Decision, error) {
	prev, err := d.keepActive(ctx, active, slot)
	if err != nil {
		return Decision{Slot: -1}, err
	}
	return d.copyIn(ctx, st, slot, cand, ActionInstalled, prev, ReasonNone)
}

// keepActive returns a slot other than exclude that holds the active
// image, copying it into one if none does. It returns -1 (and no error) if
// the active image turns out damaged while copied.
func (d *Device) keepActive(ctx context.Context, active image, exclude int) (int, error) {
	// The target: an unused slot, else the one with the lowest version.
	dst, dstVer, dstUsed := -1, uint64(0), true
	for i := range d.l.Slots {
		if i == exclude {
			continue
		}
		im, err := d.readHeader(d.slotRegion(i))
		if isFlashErr(err) {
			return -1, err
		}
		if err == nil && im.hdr.Digest == active.hdr.Digest {
			return i, nil
		}
		switch {
		case err != nil && dstUsed:
			dst, dstUsed = i, false
		case err == nil && dstUsed && (dst < 0 || im.hdr.Version < dstVer):
			dst, dstVer = i, im.hdr.Version
		}
	}
	dg, err := d.copyRegion(ctx, d.l.Active, d.slotRegion(dst), active, true)
	if errors.Is(err, ErrDigestMismatch) {
		return -1, nil
	}
	if err != nil {
		return -1, err
	}
	_ = dg
	return dst, nil
}

// copyIn journals and performs a copy of slot into the active region.
func (d *Device) copyIn(ctx context.Context, st status, slot int, im image, a Action, prev int, r Reason) (Decision, error) {
	st.Op, st.Action, st.Src, st.Dst, st.Prev, st.Target, st.Reason = opCopy, a, slot, -1, prev, im.hdr.Digest, r
	// Point of no return: from this record on, the next boot finishes
	// the copy instead of trusting the active region.
	if err := d.log.append(st); err != nil {
		return Decision{Slot: -1}, err
	}
	return d.finishCopy(ctx, st, im)
}

// finishCopy performs the journalled copy st and records its result.
func (d *Device) finishCopy(ctx context.Context, st status, im image) (Decision, error) {
	if st.Action == ActionReverted {
		if err := d.dropRejected(st.Rejected); err != nil {
			return Decision{Slot: -1}, err
		}
	}
	if _, err := d.copyRegion(ctx, d.slotRegion(st.Src), d.l.Active, im, false); err != nil {
		if im.enc != nil && errors.Is(err, ErrDigestMismatch) {
			// The slot's ciphertext is intact but does not decrypt to
			// the plaintext its header names: drop the slot (the journal
			// still names it, so a power cut lands in resume, which finds
			// it gone) and fall back.
			if err := d.eraseHeader(d.slotRegion(st.Src)); err != nil {
				return Decision{Slot: -1}, err
			}
			return d.recover(ctx, st, ReasonSourceDamaged)
		}
		return Decision{Slot: -1}, err
	}
	st.Op, st.Target = opNone, Digest{}
	switch st.Action {
	case ActionInstalled:
		st.Trial, st.TrialBoots, st.TrialImage = true, 1, im.hdr.Digest
	case ActionReverted:
		st.Trial, st.TrialBoots, st.TrialImage = false, 0, Digest{}
		st.Confirmed, st.Prev = im.hdr.Digest, -1
	case ActionRecovered:
		st.Trial, st.TrialBoots, st.TrialImage, st.Prev = false, 0, Digest{}, -1
	}
	if err := d.log.append(st); err != nil {
		return Decision{Slot: -1}, err
	}
	return d.booted(st.Action, im.hdr, st.Src, st, st.Reason), nil
}

// resume completes a journalled copy after a power cut.
func (d *Device) resume(ctx context.Context, st status) (Decision, error) {
	im, err := d.verify(ctx, d.slotRegion(st.Src))
	if isFlashErr(err) {
		return Decision{Slot: -1}, err
	}
	if err == nil && im.hdr.Digest == st.Target && im.hdr.SecurityCounter >= st.Floor {
		return d.finishCopy(ctx, st, im)
	}
	// The source got damaged mid-copy: the active region is garbage.
	return d.recover(ctx, st, ReasonSourceDamaged)
}

// revert leaves a trial: restore the previous image (or the newest valid
// one), rejecting the trial image.
func (d *Device) revert(ctx context.Context, st status, r Reason) (Decision, error) {
	st.Rejected = st.TrialImage
	slot, im, err := d.newestValid(ctx, st, 0, st.Prev)
	if err != nil {
		return Decision{Slot: -1}, err
	}
	if slot >= 0 {
		return d.copyIn(ctx, st, slot, im, ActionReverted, -1, r)
	}
	// Nothing to go back to: keep the trial image if it is intact.
	active, aerr := d.readHeader(d.l.Active)
	if aerr == nil && active.hdr.Digest == st.TrialImage && active.hdr.SecurityCounter >= st.Floor {
		if err := d.checkActive(ctx, active); err == nil {
			st.Rejected = Digest{}
			st.Trial, st.TrialBoots, st.TrialImage, st.Reason = false, 0, Digest{}, ReasonNoFallback
			if err := d.log.append(st); err != nil {
				return Decision{Slot: -1}, err
			}
			return d.booted(ActionNone, active.hdr, -1, st, ReasonNoFallback), nil
		} else if isFlashErr(err) {
			return Decision{Slot: -1}, err
		}
	} else if isFlashErr(aerr) {
		return Decision{Slot: -1}, aerr
	}
	return d.recover(ctx, st, r)
}

// recover replaces the active image with the newest valid stored image
// at or above the floor, or reports the recovery state.
func (d *Device) recover(ctx context.Context, st status, r Reason) (Decision, error) {
	slot, im, err := d.newestValid(ctx, st, 0, -1)
	if err != nil {
		return Decision{Slot: -1}, err
	}
	if slot < 0 {
		return Decision{Action: ActionFailed, Slot: -1, Reason: ReasonNoValidImage.String()},
			fmt.Errorf("%w: %s", ErrNoBootableImage, r)
	}
	st.Trial = false
	return d.copyIn(ctx, st, slot, im, ActionRecovered, -1, r)
}

// dropRejected erases the header of every slot holding the rejected image.
func (d *Device) dropRejected(rejected Digest) error {
	if rejected == (Digest{}) {
		return nil
	}
	for i := range d.l.Slots {
		im, err := d.readHeader(d.slotRegion(i))
		if isFlashErr(err) {
			return err
		}
		if err == nil && im.hdr.Digest == rejected {
			if err := d.eraseHeader(d.slotRegion(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// eraseHeader erases a region's header sectors: the image is invalid.
func (d *Device) eraseHeader(r Region) error {
	return d.f.EraseSectors(r.Start, d.l.HeaderSectors)
}

// copyRegion copies an image (header last) from one region to another.
// With check it hashes the bytes as it copies and, on a mismatch with the
// header, leaves the destination without a header and returns
// ErrDigestMismatch. An encrypted slot is decrypted as it is copied, and
// always checked: its plaintext must hash to the header's plaintext
// digest; the destination gets a plaintext (version 1) header.
func (d *Device) copyRegion(ctx context.Context, from, to Region, im image, check bool) (Digest, error) {
	check = check || im.enc != nil
	ss := int64(d.g.SectorSize)
	if err := d.f.EraseSectors(to.Start, d.l.HeaderSectors); err != nil {
		return Digest{}, err
	}
	h := sha256.New()
	bp := getBuf(d.bufN)
	defer func() {
		if im.enc != nil {
			clear(*bp) // plaintext of an encrypted slot
		}
		putBuf(bp)
	}()
	buf := *bp
	src, dst, size := d.imageOff(from), d.imageOff(to), int64(im.hdr.Size)
	firstSector := to.Start + d.l.HeaderSectors
	for done := int64(0); done < size; {
		if err := ctx.Err(); err != nil {
			return Digest{}, err
		}
		// A run of whole sectors (the I/O buffer, 64 KiB) per program: a
		// resumed copy starts over, so a torn run is no different from a
		// torn sector.
		n := min(int64(len(buf)), size-done)
		pn := alignUp(n, int64(d.g.WriteAlign))
		lo, hi := done/ss, (done+pn+ss-1)/ss
		if err := d.f.EraseSectors(firstSector+int(lo), int(hi-lo)); err != nil {
			return Digest{}, err
		}
		b := buf[:pn]
		if _, err := d.f.ReadAt(b, src+done); err != nil {
			return Digest{}, err
		}
		if im.enc != nil {
			// The padding after the image's last byte stays erased.
			im.enc.ctrAt(uint64(done)).XORKeyStream(b[:n], b[:n])
		}
		if check {
			h.Write(b[:n])
		}
		if err := d.f.Program(b, dst+done); err != nil {
			return Digest{}, err
		}
		done += n
	}
	var dg Digest
	if check {
		h.Sum(dg[:0])
		if dg != im.hdr.Digest {
			return dg, ErrDigestMismatch
		}
	}
	raw := im.raw
	if im.enc != nil {
		h := im.hdr
		h.Encrypted = false
		var err error
		if raw, err = marshalHeader(h, d.rot.DeviceKey, im.envelope()); err != nil {
			return Digest{}, err
		}
	}
	raw = padTo(raw, d.g.WriteAlign)
	if err := d.f.Program(raw, d.regionOff(to)); err != nil {
		return Digest{}, err
	}
	return im.hdr.Digest, nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

func padTo(b []byte, align int) []byte {
	n := int(alignUp(int64(len(b)), int64(align)))
	if n == len(b) {
		return b
	}
	out := make([]byte, n)
	copy(out, b)
	for i := len(b); i < n; i++ {
		out[i] = Erased
	}
	return out
}
