package bootctl

import "io"

// ActiveImage returns the active image's header and a reader over its
// bytes (its Size, from the start of the image area), the source a delta
// update reads while it writes the candidate. The header is read and
// authenticated as Status does it; the bytes are not hashed (a delta's
// applier hashes what it reads). The reader reads the flash directly: it
// must not be used across a Boot that may replace the active image.
// Errors: an ErrInvalidImage-wrapped reason when the active header is
// refused, or a flash error.
func (d *Device) ActiveImage() (Header, *io.SectionReader, error) {
	if err := d.load(); err != nil {
		return Header{}, nil, err
	}
	im, err := d.readHeader(d.l.Active)
	if err != nil {
		return Header{}, nil, err
	}
	return im.hdr, io.NewSectionReader(d.f, d.imageOff(d.l.Active), int64(im.hdr.Size)), nil
}

// ActiveEnvelope returns the signed envelope stored with the active
// image (nil when it was staged without one), authenticated with its
// header as Status does it. Errors: an ErrInvalidImage-wrapped reason, or
// a flash error.
func (d *Device) ActiveEnvelope() ([]byte, error) {
	if err := d.load(); err != nil {
		return nil, err
	}
	im, err := d.readHeader(d.l.Active)
	if err != nil {
		return nil, err
	}
	if im.hdr.EnvelopeLen == 0 {
		return nil, nil
	}
	return append([]byte(nil), im.raw[envelopeOffset:]...), nil
}
