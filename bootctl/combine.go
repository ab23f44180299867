package bootctl

import (
	"crypto/sha256"
	"fmt"
)

// CombineInput is what Combine merges.
type CombineInput struct {
	// Bootloader is the boot selector and bootloader code.
	Bootloader []byte
	// App is the application image.
	App []byte
	// Info fills the application's header; its Digest is computed.
	Info CandidateInfo
	// DeviceKey tags the application's header.
	DeviceKey []byte
}

// Combine merges a bootloader and an application into one full flash
// image for layout l, like the managed-bootloader build flow: the
// bootloader at the start of the boot region, the application region
// (header, then the image) immediately after it, every other byte erased.
// It refuses (ErrNotCombinable) a layout where the application region does
// not start right after the boot region, or images that do not fit.
func Combine(g Geometry, l Layout, in CombineInput) ([]byte, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if err := l.Validate(g); err != nil {
		return nil, err
	}
	ss := int64(g.SectorSize)
	switch {
	case l.Boot.Sectors == 0 || len(in.Bootloader) == 0:
		return nil, fmt.Errorf("%w: no bootloader region or image", ErrNotCombinable)
	case l.Active.Start != l.Boot.end():
		return nil, fmt.Errorf("%w: the application region starts at sector %d, not right after the bootloader (sector %d)",
			ErrNotCombinable, l.Active.Start, l.Boot.end())
	case int64(len(in.Bootloader)) > int64(l.Boot.Sectors)*ss:
		return nil, fmt.Errorf("%w: bootloader of %d bytes, region holds %d", ErrNotCombinable, len(in.Bootloader), int64(l.Boot.Sectors)*ss)
	case len(in.App) == 0 || int64(len(in.App)) > l.ImageCapacity(g):
		return nil, fmt.Errorf("%w: application of %d bytes, region holds 1..%d", ErrNotCombinable, len(in.App), l.ImageCapacity(g))
	case len(in.DeviceKey) < 16:
		return nil, fmt.Errorf("%w: device key of %d bytes, need at least 16", ErrInvalidOption, len(in.DeviceKey))
	}
	h := Header{Version: in.Info.Version, SecurityCounter: in.Info.SecurityCounter, Size: uint64(len(in.App)),
		Digest: sha256.Sum256(in.App), Campaign: in.Info.Campaign, EnvelopeLen: uint32(len(in.Info.Envelope))}
	if int64(len(in.Info.Envelope)) > int64(l.HeaderSectors)*ss-envelopeOffset {
		return nil, fmt.Errorf("%w: envelope of %d bytes does not fit the header area", ErrNotCombinable, len(in.Info.Envelope))
	}
	raw, err := marshalHeader(h, in.DeviceKey, in.Info.Envelope)
	if err != nil {
		return nil, err
	}
	out := make([]byte, int64(l.Sectors())*ss)
	for i := range out {
		out[i] = Erased
	}
	copy(out[int64(l.Boot.Start)*ss:], in.Bootloader)
	act := int64(l.Active.Start) * ss
	copy(out[act:], raw)
	copy(out[act+int64(l.HeaderSectors)*ss:], in.App)
	return out, nil
}

// Restore writes a full flash image (as made by Combine) onto f: every
// sector is erased, then every sector that is not blank is programmed.
// img may be shorter than the flash; the rest is left erased.
func (f *Flash) Restore(img []byte) error {
	g := f.Geometry()
	if int64(len(img)) > g.Size() {
		return fmt.Errorf("%w: image of %d bytes, flash is %d", ErrOutOfRange, len(img), g.Size())
	}
	ss := g.SectorSize
	for s := range g.Sectors {
		if err := f.Erase(s); err != nil {
			return err
		}
		lo := s * ss
		if lo >= len(img) {
			continue
		}
		sec := padTo(img[lo:min(lo+ss, len(img))], g.WriteAlign)
		if isErased(sec) {
			continue
		}
		if err := f.Program(sec, int64(lo)); err != nil {
			return err
		}
	}
	return nil
}

// Dump reads the whole flash.
func (f *Flash) Dump() ([]byte, error) {
	b := make([]byte, f.Geometry().Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}
