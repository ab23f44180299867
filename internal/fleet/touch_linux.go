package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// TouchFreeSlots fills the holes of each device's free slot (the one a
// campaign's candidate goes to) with the bytes a hole reads as, so that
// the host has the slot's pages in its page cache before the campaign:
// what the flash holds does not change (a simulated flash file stores
// each byte inverted, and an erased byte, 0xFF, is stored as the 0 a hole
// reads as), nor what bootctl knows of it (the slot is still known
// erased, and the campaign's erase of it still skips the store). A slot
// that holds data is left alone. Memory flash is left alone. Call it
// before Run: it asks each device's bootloader for its free slot.
//
// What it is for: on a virtual machine whose balloon takes back the
// memory the guest frees (free page reporting), the first write to a page
// costs a host fault, and a campaign that writes 4 GiB of candidates into
// fresh page cache paid it on every chunk; `firmcast bench` touches the
// raw side's files the same way (TouchRawFiles), so both sides write
// into pages the host already holds, as a device writes into flash that
// exists. docs/BENCHMARKS.md has the measurement.
func (f *Fleet) TouchFreeSlots(ctx context.Context) error {
	if f.cfg.MemFlash {
		return nil
	}
	ss := int64(f.geom.SectorSize)
	return f.each(ctx, func(ctx context.Context, d *Device) error {
		slot, err := d.boot.FreeSlot()
		if err != nil {
			return fmt.Errorf("fleet: touch the free slot of %s: %w", d.ID, err)
		}
		r := f.layout.Slots[slot]
		if err := fillIfHole(d.FlashPath(), int64(r.Start)*ss, int64(r.Sectors)*ss); err != nil {
			return fmt.Errorf("fleet: touch the free slot of %s: %w", d.ID, err)
		}
		return nil
	})
}

// fillIfHole writes zeros over [off, off+n) of the file at path when that
// range is one hole (no data in it), and does nothing otherwise.
func fillIfHole(path string, off, n int64) error {
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer fh.Close()
	next, err := unix.Seek(int(fh.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, syscall.ENXIO): // no data at or after off
	case err != nil:
		return err
	case next < off+n:
		return nil // the range holds data
	}
	return touch(fh, off, n)
}
