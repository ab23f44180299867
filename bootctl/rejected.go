package bootctl

// Rejected returns the digest of the image the bootloader last reverted
// (a trial image that was not confirmed), and false when there is none.
// Boot never installs that image again from any slot until Forgive. It
// reads the status area and does not write.
func (d *Device) Rejected() (Digest, bool, error) {
	if err := d.load(); err != nil {
		return Digest{}, false, err
	}
	r := d.log.cur.Rejected
	return r, r != Digest{}, nil
}

// Forgive lifts the rejection of image digest (see Rejected), so that the
// next Boot may install it again: a campaign retries it on purpose. It is
// a no-op when digest is not the rejected image; otherwise it appends a
// status record (one program), or returns a flash error.
func (d *Device) Forgive(digest Digest) error {
	if err := d.load(); err != nil {
		return err
	}
	st := d.log.cur
	if digest == (Digest{}) || st.Rejected != digest {
		return nil
	}
	st.Rejected = Digest{}
	return d.log.append(st)
}
