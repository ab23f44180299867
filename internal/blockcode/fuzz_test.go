package blockcode

import (
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// FuzzCollectorAdd feeds arbitrary bytes from the broadcast topic to a
// device's Collector of a small coded image, seeded with its real parity
// chunks and mutations of them: nothing panics, and whatever Add keeps is
// a parity chunk whose hash the table commits (the only way into a
// decode).
func FuzzCollectorAdd(f *testing.F) {
	im := newImage(f, 6*256+10, 256, 3, 2, 9)
	for _, p := range parityMsgs(f, im) {
		b, err := schemas.Encode(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		bad := append([]byte(nil), b...)
		bad[len(bad)-1] ^= 1
		f.Add(bad)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p schemas.ParityChunk
		if schemas.Decode(data, &p) != nil {
			return
		}
		col, err := NewCollector(im.coded, 0)
		if err != nil {
			t.Fatal(err)
		}
		kept, err := col.Add(&p, int(im.coded.Block))
		if kept && (err != nil || im.coded.VerifyParity(p.Block, p.Index, p.Data) != nil) {
			t.Fatalf("kept parity chunk %d of block %d that the table does not commit (%v)", p.Index, p.Block, err)
		}
		if !kept && err == nil {
			t.Fatalf("parity chunk %d of block %d neither kept nor refused", p.Index, p.Block)
		}
	})
}
