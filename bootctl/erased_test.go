package bootctl

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// Program skips the read-back of bytes it knows erased since the last
// Erase; it must still refuse every program over data, whatever the order
// of programs, after a torn program, a flipped bit or a reopen. With
// sectors of 1540 bytes its knowledge is kept in units of 7 bytes
// (erasedFrom, one byte a sector), which 4-byte programs end inside.
func TestFlashKnownErased(t *testing.T) {
	for _, g := range []Geometry{{SectorSize: 64, Sectors: 4, WriteAlign: 4}, {SectorSize: 1540, Sectors: 2, WriteAlign: 4}} {
		t.Run(fmt.Sprintf("sector%d", g.SectorSize), func(t *testing.T) { testFlashKnownErased(t, g) })
	}
}

func testFlashKnownErased(t *testing.T, g Geometry) {
	d4 := []byte{1, 2, 3, 4}
	type step struct {
		op   string // "p" program d4, "e" erase, "torn" torn program, "flip", "reopen"
		off  int64
		want error
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"in order then over", []step{{"p", 0, nil}, {"p", 4, nil}, {"p", 0, ErrNotErased}, {"p", 4, ErrNotErased}, {"p", 8, nil}}},
		{"backwards", []step{{"p", 60, nil}, {"p", 56, nil}, {"p", 60, ErrNotErased}, {"p", 0, nil}, {"p", 56, ErrNotErased}}},
		{"gap kept erased", []step{{"p", 8, nil}, {"p", 0, nil}, {"p", 4, nil}, {"p", 8, ErrNotErased}}},
		{"across sectors", []step{{"p", 62 - 2, nil}, {"p", 64, nil}, {"p", 64, ErrNotErased}}},
		{"erase resets", []step{{"p", 0, nil}, {"e", 0, nil}, {"p", 0, nil}, {"p", 0, ErrNotErased}}},
		{"torn program", []step{{"torn", 16, nil}, {"p", 16, ErrNotErased}, {"p", 24, nil}}},
		{"flipped bit", []step{{"flip", 130, nil}, {"p", 128, ErrNotErased}, {"p", 132, nil}}},
		{"reopened", []step{{"p", 32, nil}, {"reopen", 0, nil}, {"p", 32, ErrNotErased}, {"p", 36, nil}, {"p", 36, ErrNotErased}}},
	} {
		for _, kind := range []string{"mem", "file"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "f")
				var f *Flash
				var err error
				if kind == "mem" {
					f, err = NewMemFlash(g)
				} else {
					f, err = CreateFileFlash(path, g)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer func() { f.Close() }()
				for i, s := range tc.steps {
					var err error
					switch s.op {
					case "p":
						err = f.Program(d4, s.off)
					case "e":
						err = f.Erase(int(s.off / int64(g.SectorSize)))
					case "torn":
						f.Arm(Fault{Kind: FaultTorn})
						if err := f.Program([]byte{9, 9, 9, 9, 9, 9, 9, 9}, s.off); !errors.Is(err, ErrPowerLost) {
							t.Fatalf("step %d: torn program: %v", i, err)
						}
						f.PowerOn()
					case "flip":
						err = f.FlipBit(s.off, 0)
					case "reopen":
						if kind == "mem" {
							f = clone(g, snapshot(f))
						} else {
							f.Close()
							f, err = OpenFileFlash(path, g)
						}
					}
					if !errors.Is(err, s.want) {
						t.Fatalf("step %d %s at %d: %v, want %v", i, s.op, s.off, err, s.want)
					}
					if s.op == "p" && s.want == nil {
						b := make([]byte, 4)
						if _, err := f.ReadAt(b, s.off); err != nil || !bytes.Equal(b, d4) {
							t.Fatalf("step %d: read back %v %v", i, b, err)
						}
					}
				}
			})
		}
	}
}
