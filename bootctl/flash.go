package bootctl

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
)

// Erased is the value of every byte of an erased sector.
const Erased = 0xFF

// Geometry describes a NOR flash device.
type Geometry struct {
	// SectorSize is the erase unit in bytes; a multiple of WriteAlign.
	SectorSize int
	// Sectors is the number of sectors.
	Sectors int
	// WriteAlign is the program unit in bytes (1, 4, 16...): every program
	// offset and length must be a multiple of it.
	WriteAlign int
}

// Size is the flash size in bytes.
func (g Geometry) Size() int64 { return int64(g.SectorSize) * int64(g.Sectors) }

// Validate reports an impossible geometry, wrapping ErrBadGeometry.
func (g Geometry) Validate() error {
	switch {
	case g.SectorSize <= 0 || g.Sectors <= 0 || g.WriteAlign <= 0:
		return fmt.Errorf("%w: sector size %d, sectors %d and write alignment %d must be positive",
			ErrBadGeometry, g.SectorSize, g.Sectors, g.WriteAlign)
	case g.SectorSize%g.WriteAlign != 0:
		return fmt.Errorf("%w: sector size %d is not a multiple of the write alignment %d",
			ErrBadGeometry, g.SectorSize, g.WriteAlign)
	case g.WriteAlign > 256:
		return fmt.Errorf("%w: write alignment %d over 256", ErrBadGeometry, g.WriteAlign)
	}
	return nil
}

// FaultKind says what happens to the operation a Fault lands on.
type FaultKind int

const (
	// FaultCut cuts power before the operation has any effect.
	FaultCut FaultKind = iota
	// FaultTorn programs only a prefix of the bytes (and leaves one byte
	// half programmed) if the operation is a program; a plain cut otherwise.
	FaultTorn
	// FaultInterruptErase leaves the sector with arbitrary bytes if the
	// operation is an erase; a plain cut otherwise.
	FaultInterruptErase
)

func (k FaultKind) String() string {
	switch k {
	case FaultCut:
		return "cut"
	case FaultTorn:
		return "torn"
	case FaultInterruptErase:
		return "interrupt-erase"
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault is a power failure armed on a Flash.
type Fault struct {
	// After is the number of mutating operations (programs and erases,
	// counted from when the fault is armed) that still complete; the next
	// one is hit by Kind and power is lost.
	After uint64
	// Kind is what the hit operation does.
	Kind FaultKind
}

// Stats counts flash operations since the Flash was created or ResetStats.
type Stats struct {
	Reads, Programs, Erases    uint64
	BytesRead, BytesProgrammed uint64
	Faults                     uint64
}

// Ops is the number of mutating operations (programs plus erases).
func (s Stats) Ops() uint64 { return s.Programs + s.Erases }

// store is the raw byte storage under a Flash: true (non-inverted) bytes.
type store interface {
	readAt(p []byte, off int64) error
	writeAt(p []byte, off int64) error
	erase(off, n int64) error
	sync() error
	close() error
}

// Flash is a simulated NOR flash with real semantics: Erase sets a whole
// sector to 0xFF; Program writes only into erased bytes at the write
// alignment; ReadAt reads anywhere. Faults can be armed to cut power at a
// chosen operation, tear a program or interrupt an erase, and FlipBit
// damages stored data. After a power cut every operation returns
// ErrPowerLost until PowerOn.
//
// A Flash is safe for concurrent use; operations are serialised.
type Flash struct {
	geom Geometry

	scratch []byte // Program's read-back buffer (at most maxScratch), guarded by mu
	// erasedFrom[s] x eu is the offset in sector s from which the sector
	// is known to be erased: 0 after an Erase, moved past each Program
	// into it, the whole sector when unknown. Program skips the read-back
	// of bytes known erased. It is this Flash's own knowledge (the file of
	// a file-backed flash is not changed by anyone else while it is open).
	// One byte a sector (a simulated fleet holds one per sector of every
	// device): eu is SectorSize/255 rounded up, and a program's end is
	// rounded up to it, so the few bytes after a program that ends inside
	// a unit only count as not known erased (a read-back, no error).
	erasedFrom []uint8
	eu         int64
	mu         sync.Mutex
	st         store
	stats      Stats
	fault      *Fault
	armedAt    uint64 // stats.Ops() when the fault was armed
	dead       bool
	lastHit    string // "program" or "erase": the operation the last fault hit
}

// NewMemFlash returns an erased in-memory flash.
func NewMemFlash(g Geometry) (*Flash, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	m := make(memStore, g.Size())
	m.erase(0, g.Size())
	return newFlash(g, m, true), nil
}

// newFlash returns a Flash over st; erased says st is known to be erased.
func newFlash(g Geometry, st store, erased bool) *Flash {
	f := &Flash{geom: g, st: st, erasedFrom: make([]uint8, g.Sectors),
		eu: int64((g.SectorSize + math.MaxUint8 - 1) / math.MaxUint8)}
	if !erased {
		f.forget(0, g.Size())
	}
	return f
}

// forget marks the sectors overlapping [off, off+n) as of unknown content.
// Callers hold mu (or own f).
func (f *Flash) forget(off, n int64) {
	ss := int64(f.geom.SectorSize)
	for s := off / ss; s < (off+n+ss-1)/ss && s < int64(len(f.erasedFrom)); s++ {
		f.erasedFrom[s] = f.units(ss)
	}
}

// knownErased reports whether [off, off+n) is known erased, without
// reading it. Callers hold mu.
func (f *Flash) knownErased(off, n int64) bool {
	ss := int64(f.geom.SectorSize)
	for s := off / ss; s < (off+n+ss-1)/ss; s++ {
		if lo := max(off, s*ss) - s*ss; lo < int64(f.erasedFrom[s])*f.eu {
			return false // part of [off, off+n) in s may hold data
		}
	}
	return true
}

// isKnownErased is knownErased for callers that do not hold mu: whether
// [off, off+n) is erased since the last Erase of its sectors, without
// reading it (false for a range out of bounds, or on a dead flash).
func (f *Flash) isKnownErased(off, n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.dead && f.check(off, n) == nil && f.knownErased(off, n)
}

// programmed records that [off, off+n) (known erased before) now holds
// data: each sector it touches stays known erased only after it.
func (f *Flash) programmed(off, n int64) {
	ss := int64(f.geom.SectorSize)
	for s := off / ss; s < (off+n+ss-1)/ss; s++ {
		f.erasedFrom[s] = max(f.erasedFrom[s], f.units(min(off+n-s*ss, ss)))
	}
}

// units is n bytes of a sector in erasedFrom's units, rounded up.
func (f *Flash) units(n int64) uint8 {
	return uint8((n + f.eu - 1) / f.eu)
}

// Geometry returns the flash geometry.
func (f *Flash) Geometry() Geometry { return f.geom }

// Stats returns the operation counters.
func (f *Flash) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// ResetStats zeroes the operation counters.
func (f *Flash) ResetStats() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = Stats{}
	f.armedAt = 0
}

// Arm arms a fault, replacing any armed one. Operations are counted from now.
func (f *Flash) Arm(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = &ft
	f.armedAt = f.stats.Ops()
}

// PowerOn restores power after a cut (a reboot) and disarms any fault.
func (f *Flash) PowerOn() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = nil
	f.dead = false
}

// PoweredOff reports whether a fault has cut power.
func (f *Flash) PoweredOff() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dead
}

// ReadAt reads len(p) bytes at off, like io.ReaderAt: it returns
// len(p), nil or an error (ErrOutOfRange, ErrPowerLost, or a storage
// error of a file-backed flash).
func (f *Flash) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return 0, ErrPowerLost
	}
	if err := f.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := f.st.readAt(p, off); err != nil {
		return 0, err
	}
	f.stats.Reads++
	f.stats.BytesRead += uint64(len(p))
	return len(p), nil
}

// scan passes [off, off+n) to fn in pieces of at most len(buf) bytes,
// like a bootloader reading memory-mapped NOR in place: an in-memory
// flash hands out its own bytes (fn must not keep or modify them), a
// file-backed one reads into buf. It counts as reads.
func (f *Flash) scan(off, n int64, buf []byte, fn func([]byte)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return ErrPowerLost
	}
	if err := f.check(off, n); err != nil {
		return err
	}
	m, inMem := f.st.(memStore)
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		if inMem {
			fn(m[off+done : off+done+k])
		} else {
			if err := f.st.readAt(buf[:k], off+done); err != nil {
				return err
			}
			fn(buf[:k])
		}
		f.stats.Reads++
		f.stats.BytesRead += uint64(k)
		done += k
	}
	return nil
}

// Program writes p at off. off and len(p) must be multiples of the write
// alignment (ErrAlignment), and every target byte must be erased or p's
// byte must be 0xFF (ErrNotErased, nothing written). Program is one
// operation for fault injection whatever its length.
func (f *Flash) Program(p []byte, off int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return ErrPowerLost
	}
	if err := f.check(off, int64(len(p))); err != nil {
		return err
	}
	a := int64(f.geom.WriteAlign)
	if off%a != 0 || int64(len(p))%a != 0 {
		return fmt.Errorf("%w: %d bytes at %#x, alignment %d", ErrAlignment, len(p), off, a)
	}
	var cur []byte // what the flash holds at off, read only when needed
	clean := false
	if f.knownErased(off, int64(len(p))) {
		clean = true // erased since the last Erase: nothing to merge
	} else if m, ok := f.st.(memStore); ok {
		// Check in place; copy out only when bits must be merged.
		clean = f.erased(m[off : off+int64(len(p))])
		if !clean {
			cur = f.scratchBuf(len(p))
			copy(cur, m[off:])
		}
	} else {
		cur = f.scratchBuf(len(p))
		if err := f.st.readAt(cur, off); err != nil {
			return err
		}
		clean = f.erased(cur)
	}
	if !clean {
		for i := range cur {
			if cur[i] != Erased && p[i] != Erased {
				return fmt.Errorf("%w: byte %#x holds %#02x", ErrNotErased, off+int64(i), cur[i])
			}
		}
	}
	hit, kind := f.hit("program")
	if hit && kind == FaultTorn {
		n := len(p) / 2
		torn := make([]byte, n+1)
		copy(torn, p[:n])
		if n < len(p) {
			torn[n] = p[n] | 0xF0 // half the bits programmed
		} else {
			torn = torn[:n]
		}
		if !clean {
			for i := range torn {
				torn[i] &= cur[i]
			}
		}
		_ = f.st.writeAt(torn, off)
	}
	if hit {
		f.forget(off, int64(len(p)))
		return ErrPowerLost
	}
	data := p
	if !clean {
		for i := range p {
			cur[i] &= p[i]
		}
		data = cur
	}
	if err := f.st.writeAt(data, off); err != nil {
		f.forget(off, int64(len(p)))
		return err
	}
	if clean {
		f.programmed(off, int64(len(p)))
	} else {
		f.forget(off, int64(len(p)))
	}
	f.stats.Programs++
	f.stats.BytesProgrammed += uint64(len(p))
	return nil
}

// maxScratch bounds the read-back buffer a Flash keeps between calls:
// larger programs get a buffer of their own that is not retained, so a
// device that once programmed a whole image (a factory install) does not
// hold an image-sized buffer for the rest of its life.
const maxScratch = 64 << 10

// scratchBuf returns n bytes of read-back buffer. Call with mu held.
func (f *Flash) scratchBuf(n int) []byte {
	if n > maxScratch {
		return make([]byte, n)
	}
	if cap(f.scratch) < n {
		f.scratch = make([]byte, n)
	}
	return f.scratch[:n]
}

// Erase sets sector s to 0xFF. It is one operation for fault injection.
func (f *Flash) Erase(s int) error { return f.EraseSectors(s, 1) }

// EraseSectors erases sectors first to first+n-1, in order: the same as
// n Erase calls (one operation each for fault injection and Stats; a
// power cut at sector k leaves the sectors before it erased and those
// after it untouched), but the store erases each contiguous run in one
// call (one hole punched in a file-backed flash, not one per sector).
func (f *Flash) EraseSectors(first, n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ss := int64(f.geom.SectorSize)
	// run is the sectors [runFrom, runFrom+runN) decided erased and not
	// yet erased in the store.
	runFrom, runN := first, 0
	flush := func() error {
		if runN == 0 {
			return nil
		}
		off, size := int64(runFrom)*ss, int64(runN)*ss
		if err := f.st.erase(off, size); err != nil {
			f.forget(off, size)
			return err
		}
		for k := runFrom; k < runFrom+runN; k++ {
			f.erasedFrom[k] = 0
		}
		runN = 0
		return nil
	}
	for s := first; s < first+n; s++ {
		if f.dead {
			if err := flush(); err != nil {
				return err
			}
			return ErrPowerLost
		}
		if s < 0 || s >= f.geom.Sectors {
			if err := flush(); err != nil {
				return err
			}
			return fmt.Errorf("%w: sector %d of %d", ErrOutOfRange, s, f.geom.Sectors)
		}
		off := int64(s) * ss
		hit, kind := f.hit("erase")
		if hit {
			if err := flush(); err != nil {
				return err
			}
			if kind == FaultInterruptErase {
				// Half the sector erased, the rest with some bits set:
				// bytes that are neither the old content nor erased.
				buf := make([]byte, ss)
				_ = f.st.readAt(buf, off)
				rng := rand.New(rand.NewPCG(uint64(s), f.stats.Ops()))
				for i := range buf {
					if int64(i) < ss/2 {
						buf[i] = Erased
					} else {
						buf[i] |= byte(rng.Uint32())
					}
				}
				_ = f.st.erase(off, ss)
				_ = f.st.writeAt(buf, off)
			}
			f.forget(off, ss)
			return ErrPowerLost
		}
		f.stats.Erases++
		if f.erasedFrom[s] == 0 {
			// Known erased (nothing programmed since its last erase,
			// no fault, no bit flipped): the store already holds what
			// an erase leaves; the erase counts, the simulator skips
			// the store's work.
			if err := flush(); err != nil {
				return err
			}
			runFrom = s + 1
			continue
		}
		if runN == 0 {
			runFrom = s
		}
		runN++
	}
	return flush()
}

// FlipBit inverts one bit of stored data, as a retention fault would. It
// works with power off and counts as no operation.
func (f *Flash) FlipBit(off int64, bit uint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(off, 1); err != nil {
		return err
	}
	b := []byte{0}
	if err := f.st.readAt(b, off); err != nil {
		return err
	}
	b[0] ^= 1 << (bit % 8)
	f.forget(off, 1)
	return f.st.writeAt(b, off)
}

// Sync flushes a file-backed flash to stable storage; a no-op in memory.
// Program and Erase never sync on their own.
func (f *Flash) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.sync()
}

// Close syncs and releases a file-backed flash.
func (f *Flash) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.close()
}

// hit counts a mutating operation against the armed fault. Callers hold mu.
func (f *Flash) hit(op string) (bool, FaultKind) {
	if f.fault == nil || f.stats.Ops()-f.armedAt < f.fault.After {
		return false, 0
	}
	f.lastHit = op
	kind := f.fault.Kind
	f.fault = nil
	f.dead = true
	f.stats.Faults++
	return true, kind
}

func (f *Flash) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > f.geom.Size() {
		return fmt.Errorf("%w: %d bytes at %#x, flash is %d bytes", ErrOutOfRange, n, off, f.geom.Size())
	}
	return nil
}

// erased reports whether p is all Erased bytes (compared 4 KiB at a time
// with allOnes, shared by every Flash).
func (f *Flash) erased(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(allOnes))
		if !bytes.Equal(p[:n], allOnes[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// memStore is an in-memory store.
type memStore []byte

func (m memStore) readAt(p []byte, off int64) error  { copy(p, m[off:]); return nil }
func (m memStore) writeAt(p []byte, off int64) error { copy(m[off:], p); return nil }
func (m memStore) erase(off, n int64) error {
	s := m[off : off+n]
	if len(s) == 0 {
		return nil
	}
	s[0] = Erased
	for i := 1; i < len(s); i *= 2 {
		copy(s[i:], s[:i])
	}
	return nil
}
func (m memStore) sync() error  { return nil }
func (m memStore) close() error { return nil }
