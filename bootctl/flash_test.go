package bootctl

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestFlashSemantics(t *testing.T) {
	g := Geometry{SectorSize: 64, Sectors: 4, WriteAlign: 4}
	f, err := NewMemFlash(g)
	if err != nil {
		t.Fatal(err)
	}
	read := func(off, n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	if !isErased(read(0, 256)) {
		t.Fatal("new flash not erased")
	}
	if err := f.Program([]byte{1, 2, 3, 4}, 8); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		p    []byte
		off  int64
		want error
	}{
		{"unaligned offset", []byte{1, 2, 3, 4}, 2, ErrAlignment},
		{"unaligned length", []byte{1, 2}, 16, ErrAlignment},
		{"over programmed bytes", []byte{0, 0, 0, 0}, 8, ErrNotErased},
		{"past the end", []byte{1, 2, 3, 4}, 256, ErrOutOfRange},
		{"negative", []byte{1, 2, 3, 4}, -4, ErrOutOfRange},
	} {
		if err := f.Program(tc.p, tc.off); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// 0xFF bytes may go over programmed ones: they change nothing.
	if err := f.Program([]byte{0xFF, 0xFF, 0xFF, 0xFF}, 8); err != nil {
		t.Fatal(err)
	}
	if got := read(8, 4); !bytes.Equal(got, []byte{1, 2, 3, 4}) {
		t.Fatalf("read %v", got)
	}
	if err := f.Erase(0); err != nil {
		t.Fatal(err)
	}
	if !isErased(read(0, 64)) {
		t.Fatal("erase left data")
	}
	if err := f.Erase(4); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("erase sector 4: %v", err)
	}
	if s := f.Stats(); s.Programs != 2 || s.Erases != 1 || s.Ops() != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFlashFaults(t *testing.T) {
	g := Geometry{SectorSize: 64, Sectors: 2, WriteAlign: 1}
	data := bytes.Repeat([]byte{0x00}, 32)

	t.Run("cut", func(t *testing.T) {
		f, _ := NewMemFlash(g)
		f.Arm(Fault{After: 1, Kind: FaultCut})
		if err := f.Program(data[:4], 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Program(data[:4], 4); !errors.Is(err, ErrPowerLost) {
			t.Fatalf("second op: %v", err)
		}
		if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrPowerLost) {
			t.Fatalf("read after cut: %v", err)
		}
		f.PowerOn()
		b := make([]byte, 8)
		f.ReadAt(b, 0)
		if !bytes.Equal(b, []byte{0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF}) {
			t.Fatalf("after cut: %x", b)
		}
	})
	t.Run("torn", func(t *testing.T) {
		f, _ := NewMemFlash(g)
		f.Arm(Fault{Kind: FaultTorn})
		if err := f.Program(data, 0); !errors.Is(err, ErrPowerLost) {
			t.Fatal(err)
		}
		f.PowerOn()
		b := make([]byte, 32)
		f.ReadAt(b, 0)
		if !bytes.Equal(b[:16], data[:16]) || b[16] != 0xF0 || !isErased(b[17:]) {
			t.Fatalf("torn program left %x", b)
		}
	})
	t.Run("interrupted erase", func(t *testing.T) {
		f, _ := NewMemFlash(g)
		f.Program(make([]byte, 64), 0)
		f.Arm(Fault{Kind: FaultInterruptErase})
		if err := f.Erase(0); !errors.Is(err, ErrPowerLost) {
			t.Fatal(err)
		}
		f.PowerOn()
		b := make([]byte, 64)
		f.ReadAt(b, 0)
		if !isErased(b[:32]) || isErased(b[32:]) || bytes.Equal(b[32:], make([]byte, 32)) {
			t.Fatalf("interrupted erase left %x", b)
		}
		if err := f.Program([]byte{0}, 63); !errors.Is(err, ErrNotErased) && b[63] != 0xFF {
			t.Fatalf("program over garbage: %v", err)
		}
	})
	t.Run("bit flip", func(t *testing.T) {
		f, _ := NewMemFlash(g)
		f.Program([]byte{0x0F}, 3)
		f.FlipBit(3, 7)
		b := make([]byte, 1)
		f.ReadAt(b, 3)
		if b[0] != 0x8F {
			t.Fatalf("flip: %x", b[0])
		}
		if f.Stats().Ops() != 1 {
			t.Fatal("FlipBit counted as an operation")
		}
	})
}

func TestFileFlash(t *testing.T) {
	g := Geometry{SectorSize: 4096, Sectors: 256, WriteAlign: 16}
	path := filepath.Join(t.TempDir(), "flash.bin")
	f, err := CreateFileFlash(path, g)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x5A}, 4096)
	if err := f.Program(data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Program(data[:16], 8192); !errors.Is(err, ErrNotErased) {
		t.Fatalf("program over data: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Inverted storage: an erased flash is a hole in a sparse file.
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > 64<<10 {
		t.Errorf("1 MiB flash with one programmed sector uses %d bytes on disk", st.Blocks*512)
	}
	if _, err := OpenFileFlash(path, Geometry{SectorSize: 4096, Sectors: 255, WriteAlign: 16}); !errors.Is(err, ErrBadGeometry) {
		t.Fatalf("wrong geometry: %v", err)
	}
	f, err = OpenFileFlash(path, g)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096*3)
	if _, err := f.ReadAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	if !isErased(b[:4096]) || !bytes.Equal(b[4096:8192], data) || !isErased(b[8192:]) {
		t.Fatal("reopened flash lost data")
	}
	if err := f.Erase(2); err != nil {
		t.Fatal(err)
	}
	f.ReadAt(b[:4096], 8192)
	if !isErased(b[:4096]) {
		t.Fatal("erase on file flash left data")
	}
}

func TestGeometryValidate(t *testing.T) {
	for _, g := range []Geometry{{0, 1, 1}, {64, 0, 1}, {64, 1, 0}, {60, 1, 16}, {1024, 1, 512}} {
		if err := g.Validate(); !errors.Is(err, ErrBadGeometry) {
			t.Errorf("%+v: %v", g, err)
		}
	}
}
