package bootctl

import (
	"fmt"
)

// Region is a run of whole sectors.
type Region struct {
	Start   int `json:"start"`   // first sector
	Sectors int `json:"sectors"` // number of sectors
}

func (r Region) end() int { return r.Start + r.Sectors }

// Layout places the regions on the flash. Every image region (the active
// application and each candidate slot) has the same size: HeaderSectors
// for the metadata header (and, in secure-boot mode, the signed envelope)
// followed by the image.
//
//	Boot      boot selector and bootloader code, never written by Boot
//	Active    the application that runs
//	Slots     N >= 2 candidate slots (the storage area), also used to keep
//	          the previous image for revert
//	Status    >= 2 sectors: the journal, trial state and anti-rollback floor
type Layout struct {
	Boot          Region   `json:"boot"`
	Active        Region   `json:"active"`
	Slots         []Region `json:"slots"`
	Status        Region   `json:"status"`
	HeaderSectors int      `json:"header_sectors"`
}

// DefaultLayout lays out, in order, bootSectors of boot code, the active
// region, slots candidate slots and two status sectors; every image region
// is regionSectors long with a one-sector header.
func DefaultLayout(bootSectors, slots, regionSectors int) Layout {
	l := Layout{HeaderSectors: 1}
	l.Boot = Region{0, bootSectors}
	l.Active = Region{l.Boot.end(), regionSectors}
	next := l.Active.end()
	for range slots {
		l.Slots = append(l.Slots, Region{next, regionSectors})
		next += regionSectors
	}
	l.Status = Region{next, 2}
	return l
}

// Sectors is the number of sectors the layout spans (its last sector + 1).
func (l Layout) Sectors() int {
	n := max(l.Boot.end(), l.Active.end(), l.Status.end())
	for _, s := range l.Slots {
		n = max(n, s.end())
	}
	return n
}

// ImageCapacity is the largest image, in bytes, a region holds.
func (l Layout) ImageCapacity(g Geometry) int64 {
	return int64(l.Active.Sectors-l.HeaderSectors) * int64(g.SectorSize)
}

// Validate checks the layout against a geometry, wrapping ErrBadLayout.
func (l Layout) Validate(g Geometry) error {
	if len(l.Slots) < 2 {
		return fmt.Errorf("%w: %d slots, need at least 2", ErrBadLayout, len(l.Slots))
	}
	if l.Status.Sectors < 2 {
		return fmt.Errorf("%w: %d status sectors, need at least 2", ErrBadLayout, l.Status.Sectors)
	}
	if g.SectorSize < statusRecordSize {
		return fmt.Errorf("%w: sector size %d below a status record (%d bytes)", ErrBadLayout, g.SectorSize, statusRecordSize)
	}
	if l.HeaderSectors < 1 || int64(l.HeaderSectors)*int64(g.SectorSize) < envelopeOffset {
		return fmt.Errorf("%w: header area of %d sectors is below %d bytes", ErrBadLayout, l.HeaderSectors, envelopeOffset)
	}
	if l.Active.Sectors <= l.HeaderSectors {
		return fmt.Errorf("%w: active region of %d sectors leaves no room after a %d-sector header",
			ErrBadLayout, l.Active.Sectors, l.HeaderSectors)
	}
	type named struct {
		name string
		r    Region
	}
	all := []named{{"boot", l.Boot}, {"active", l.Active}, {"status", l.Status}}
	for i, s := range l.Slots {
		if s.Sectors != l.Active.Sectors {
			return fmt.Errorf("%w: slot %d has %d sectors, the active region %d", ErrBadLayout, i, s.Sectors, l.Active.Sectors)
		}
		all = append(all, named{fmt.Sprintf("slot %d", i), s})
	}
	for i, a := range all {
		if a.r.Start < 0 || a.r.Sectors < 0 || (a.r.Sectors == 0 && a.name != "boot") || a.r.end() > g.Sectors {
			return fmt.Errorf("%w: %s region [%d,%d) outside the flash's %d sectors", ErrBadLayout, a.name, a.r.Start, a.r.end(), g.Sectors)
		}
		for _, b := range all[i+1:] {
			if a.r.Start < b.r.end() && b.r.Start < a.r.end() {
				return fmt.Errorf("%w: %s and %s overlap", ErrBadLayout, a.name, b.name)
			}
		}
	}
	return nil
}
