package main

import (
	"context"
	"fmt"
	"os"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/devicefile"
)

// Factory images: `boot combine` merges a bootloader and an application
// into one raw flash image (as a managed-bootloader build does), and
// `boot init --from` turns such an image into a device (flash file and
// device file), as a programmer writes it at the factory.

// factoryLayout is the layout of a combined image: bootLayout's, with a
// bootloader region of bootSize bytes at the start of the flash and the
// application region at appOffset (-1: right after the bootloader). It
// refuses, naming the flag, a misaligned region (not on a sector
// boundary), an application region that overlaps the bootloader's, and
// one that leaves a gap after it (the boot selector jumps right past its
// own region).
func factoryLayout(slots int, slotSize, bootSize, appOffset int64) (bootctl.Geometry, bootctl.Layout, int64, error) {
	g, l, err := bootLayout(slots, slotSize)
	if err != nil {
		return g, l, 0, err
	}
	switch {
	case bootSize <= 0:
		return g, l, 0, fmt.Errorf("--boot-size %d: want a positive size", bootSize)
	case bootSize%bootSectorSize != 0:
		return g, l, 0, fmt.Errorf("--boot-size %d: misaligned: the bootloader region must end on a flash sector boundary (sectors are %d bytes)", bootSize, bootSectorSize)
	}
	if appOffset < 0 {
		appOffset = bootSize
	}
	switch {
	case appOffset%bootSectorSize != 0:
		return g, l, 0, fmt.Errorf("--app-offset %#x: misaligned: the application region must start on a flash sector boundary (sectors are %d bytes)", appOffset, bootSectorSize)
	case appOffset < bootSize:
		return g, l, 0, fmt.Errorf("--app-offset %#x: the application region overlaps the bootloader region [0, %#x)", appOffset, bootSize)
	case appOffset > bootSize:
		return g, l, 0, fmt.Errorf("%w: the application region at %#x is not right after the bootloader (which ends at %#x): the boot selector starts the image right after its own region",
			bootctl.ErrNotCombinable, appOffset, bootSize)
	}
	// Re-place the regions for the requested boot size.
	shift := int(appOffset/bootSectorSize) - l.Active.Start
	l.Boot.Sectors = int(bootSize / bootSectorSize)
	l.Active.Start += shift
	for i := range l.Slots {
		l.Slots[i].Start += shift
	}
	l.Status.Start += shift
	g.Sectors = l.Sectors()
	return g, l, appOffset, l.Validate(g)
}

// restoreFactory writes the combined image at path onto the new flash f
// (every sector erased, then programmed), after checking that it is one
// for this geometry: not larger than the flash, and its bootloader region
// not blank.
func restoreFactory(f *bootctl.Flash, l bootctl.Layout, path string) error {
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	g := f.Geometry()
	if int64(len(img)) > g.Size() {
		return fmt.Errorf("--from %s: %d bytes, larger than the flash of this layout (%d bytes): give boot init the --slots, --slot-size and --boot-size given to boot combine",
			path, len(img), g.Size())
	}
	blank := true
	for _, b := range img[:min(len(img), l.Boot.Sectors*g.SectorSize)] {
		if b != bootctl.Erased {
			blank = false
			break
		}
	}
	if blank {
		return fmt.Errorf("--from %s: the bootloader region is blank: not a combined image", path)
	}
	return f.Restore(img)
}

// initFrom restores the combined image at path onto f and checks that
// the device boots its application (a first boot, as at the factory). It
// returns the active image's header.
func initFrom(ctx context.Context, f *bootctl.Flash, l bootctl.Layout, dev devicefile.File, path string) (*bootctl.ImageInfo, error) {
	if err := restoreFactory(f, l, path); err != nil {
		return nil, err
	}
	rot, err := dev.RootOfTrust()
	if err != nil {
		return nil, err
	}
	d, err := bootctl.Open(f, l, rot, bootctl.WithTrialBoots(dev.TrialBoots))
	if err != nil {
		return nil, err
	}
	st, err := d.Status()
	if err != nil {
		return nil, err
	}
	if !st.Active.Valid {
		return nil, fmt.Errorf("--from %s: the application header does not verify (%s): give the --device-key (and, for secure boot, the --pubkey of the key that signed its --envelope) and layout flags it was combined with",
			path, st.Active.Error)
	}
	dec, err := d.Boot(ctx)
	if err != nil {
		return nil, fmt.Errorf("--from %s: first boot: %w", path, err)
	}
	if !dec.Booted {
		return nil, fmt.Errorf("--from %s: the device does not boot its application: %s %s", path, dec.Action, dec.Reason)
	}
	return &st.Active, nil
}
