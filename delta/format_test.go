package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// unhex decodes an annotated hex literal: hex digits, with spaces,
// newlines and "# comments" ignored.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vectorHeader and its bytes pin the header layout.
var vectorHeader = Header{
	FrameSize:    4096,
	SourceSize:   258,
	SourceDigest: Digest(bytes.Repeat([]byte{0xaa}, 32)),
	TargetSize:   4097,
	TargetDigest: Digest(bytes.Repeat([]byte{0xbb}, 32)),
	Frames:       2,
}

const vectorHeaderHex = `
46 43 44 4c               # magic "FCDL"
01 00                     # format version 1
01                        # codec 1: zstd
0c                        # frame size 2^12 = 4096
02 01 00 00 00 00 00 00   # source size 258
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa # source SHA-256
01 10 00 00 00 00 00 00   # target size 4097
bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb # target SHA-256
02 00 00 00               # 2 frames
00 00 00 00               # reserved
`

// vectorOps and vectorRawHex pin a raw frame's layout: an insert of 3
// bytes, an add of 40 bytes at source offset 10, an add of 5 bytes at
// source offset 2 (seek -48 from the previous add's end, 50).
var vectorOps = []op{{n: 3}, {add: true, n: 40, src: 10}, {add: true, n: 5, src: 2}}

const vectorRawHex = `
05                        # operation list: 5 bytes
06                        # 3<<1|0: insert 3
51 14                     # 40<<1|1: add 40; seek zigzag(+10) = 20
0b 5f                     # 5<<1|1: add 5; seek zigzag(-48) = 95
`

// TestHeaderVector: the header encodes to the annotated bytes and parses
// back.
func TestHeaderVector(t *testing.T) {
	want := unhex(t, vectorHeaderHex)
	if got := appendHeader(nil, vectorHeader); !bytes.Equal(got, want) {
		t.Fatalf("header bytes:\n got %x\nwant %x", got, want)
	}
	h, err := ParseHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	if h != vectorHeader {
		t.Fatalf("parsed %+v, want %+v", h, vectorHeader)
	}
}

// TestRawVector: the operation list encodes to the annotated bytes and
// decodes back.
func TestRawVector(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 48)
	want := append(unhex(t, vectorRawHex), data...)
	if got := appendRaw(nil, vectorOps, data); !bytes.Equal(got, want) {
		t.Fatalf("raw bytes:\n got %x\nwant %x", got, want)
	}
	it, err := newOpIter(want, 48, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range vectorOps {
		o, d, ok, err := it.next()
		if err != nil || !ok || o != w || len(d) != w.n {
			t.Fatalf("op %d: %+v (%d data bytes), ok %t, err %v; want %+v", i, o, len(d), ok, err, w)
		}
	}
	if _, _, ok, err := it.next(); ok || err != nil {
		t.Fatalf("after the last op: ok %t, err %v", ok, err)
	}
}

// reseal recomputes the header digest of a delta after a test changed
// its header or table, so that the change reaches the check it targets.
func reseal(d []byte) []byte {
	d = bytes.Clone(d)
	n := int64(binary.LittleEndian.Uint32(d[88:]))
	end := HeaderSize + n*entrySize
	if end+32 > int64(len(d)) {
		return d
	}
	sum := sha256.Sum256(d[:end])
	copy(d[end:], sum[:])
	return d
}

// tableEntry returns the offset of frame table entry i's field at off.
func tableEntry(i, off int) int { return HeaderSize + i*entrySize + off }

// openCase is a malformed delta and the sentinel Open refuses it with.
type openCase struct {
	name string
	mut  func(d []byte) []byte
	want error
}

func openCases() []openCase {
	put32 := func(at int, v uint32) func([]byte) []byte {
		return func(d []byte) []byte { binary.LittleEndian.PutUint32(d[at:], v); return reseal(d) }
	}
	put64 := func(at int, v uint64) func([]byte) []byte {
		return func(d []byte) []byte { binary.LittleEndian.PutUint64(d[at:], v); return reseal(d) }
	}
	set := func(at int, v byte) func([]byte) []byte {
		return func(d []byte) []byte { d[at] = v; return reseal(d) }
	}
	return []openCase{
		{"empty", func(d []byte) []byte { return nil }, ErrTruncated},
		{"header cut", func(d []byte) []byte { return d[:HeaderSize-1] }, ErrTruncated},
		{"table cut", func(d []byte) []byte { return d[:HeaderSize+entrySize+3] }, ErrTruncated},
		{"last frame cut", func(d []byte) []byte { return d[:len(d)-1] }, ErrTruncated},
		{"magic", set(0, 'X'), ErrMagic},
		{"version 2", set(4, 2), ErrVersion},
		{"version 0", set(4, 0), ErrVersion},
		{"codec 0", set(6, 0), ErrCodec},
		{"codec 2", set(6, 2), ErrCodec},
		{"frame size 2^11", set(7, 11), ErrFrameSize},
		{"frame size 2^18", set(7, 18), ErrFrameSize},
		{"frame size 2^255", set(7, 255), ErrFrameSize},
		{"source over max", put64(8, MaxImageSize+1), ErrSize},
		{"target 0", put64(48, 0), ErrSize},
		{"target over max", put64(48, MaxImageSize+1), ErrSize},
		{"target huge", put64(48, 1<<63), ErrSize},
		{"frame count +1", func(d []byte) []byte {
			binary.LittleEndian.PutUint32(d[88:], binary.LittleEndian.Uint32(d[88:])+1)
			return d
		}, ErrFrameCount},
		{"frame count 0", put32(88, 0), ErrFrameCount},
		{"target grown a frame", func(d []byte) []byte {
			binary.LittleEndian.PutUint64(d[48:], binary.LittleEndian.Uint64(d[48:])+MinFrameSize)
			return reseal(d)
		}, ErrFrameCount},
		{"reserved", put32(92, 1), ErrReserved},
		{"source digest changed, not resealed", func(d []byte) []byte { d[20] ^= 1; return d }, ErrHeaderDigest},
		{"target digest changed, not resealed", func(d []byte) []byte { d[60] ^= 1; return d }, ErrHeaderDigest},
		{"table entry changed, not resealed", func(d []byte) []byte { d[tableEntry(0, 20)] ^= 1; return d }, ErrHeaderDigest},
		{"header digest changed", func(d []byte) []byte { d[HeaderSize+2*entrySize] ^= 1; return d }, ErrHeaderDigest},
		{"first frame not at the table's end", func(d []byte) []byte {
			binary.LittleEndian.PutUint64(d[tableEntry(0, 0):], binary.LittleEndian.Uint64(d[tableEntry(0, 0):])+1)
			return reseal(d)
		}, ErrFrameTable},
		{"first frame inside the table", put64(tableEntry(0, 0), HeaderSize), ErrFrameTable},
		{"frame offset beyond the delta", put64(tableEntry(1, 0), 1<<62), ErrFrameTable},
		{"frame offset 2^64-1", put64(tableEntry(1, 0), 1<<64-1), ErrFrameTable},
		{"frames overlap", func(d []byte) []byte {
			binary.LittleEndian.PutUint32(d[tableEntry(0, 8):], binary.LittleEndian.Uint32(d[tableEntry(0, 8):])+1)
			return reseal(d)
		}, ErrFrameTable},
		{"stored length 0", put32(tableEntry(0, 8), 0), ErrFrameTable},
		{"stored length over bound", put32(tableEntry(0, 8), uint32(MaxStoredLen(MinFrameSize)+1)), ErrFrameTable},
		{"raw length over bound", put32(tableEntry(0, 12), uint32(MaxRawLen(MinFrameSize)+1)), ErrFrameTable},
		{"raw length below output", put32(tableEntry(0, 12), MinFrameSize+1), ErrFrameTable},
		{"trailing byte", func(d []byte) []byte { return append(d, 0) }, ErrTrailingData},
	}
}

// openFixture is a valid two-frame delta of 4 KiB frames.
func openFixture(t testing.TB) []byte {
	t.Helper()
	src := firmwareLike(9, 6000)
	tgt := splice(src, 100, 0, []byte("a new version"))
	return mustMake(t, src, tgt, WithFrameSize(MinFrameSize))
}

// TestOpenRejects: each malformed header or table is refused with its
// own sentinel, which wraps ErrCorrupt.
func TestOpenRejects(t *testing.T) {
	good := openFixture(t)
	if _, err := Open(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for _, c := range openCases() {
		t.Run(c.name, func(t *testing.T) {
			d := c.mut(bytes.Clone(good))
			_, err := Open(bytes.NewReader(d), int64(len(d)))
			if !errors.Is(err, c.want) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want %v", err, c.want)
			}
			if len(d) >= HeaderSize && !errors.Is(c.want, ErrHeaderDigest) && !errors.Is(c.want, ErrFrameTable) &&
				!errors.Is(c.want, ErrTrailingData) && !errors.Is(c.want, ErrTruncated) {
				// Header-level faults are visible from the header alone.
				if _, err := ParseHeader(d[:HeaderSize]); !errors.Is(err, c.want) {
					t.Fatalf("ParseHeader: %v, want %v", err, c.want)
				}
			}
		})
	}
}

// zstdFrame compresses raw as Make does.
func zstdFrame(t testing.TB, raw []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false), zstd.WithSingleSegment(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil)
}

// build assembles a delta from stored frames and their raw lengths (so
// tests can write frames Make never would).
func build(h Header, stored [][]byte, rawLens []int) []byte {
	h.Frames = len(stored)
	d := appendHeader(nil, h)
	off := h.framesStart()
	for i, f := range stored {
		d = appendEntry(d, entry{off: off, stored: len(f), raw: rawLens[i], digest: sha256.Sum256(f)})
		off += int64(len(f))
	}
	sum := sha256.Sum256(d)
	d = append(d, sum[:]...)
	for _, f := range stored {
		d = append(d, f...)
	}
	return d
}

// frameFixture: a source, and a target of two 4 KiB frames (4096 + lit1
// bytes): frame 0 is always valid, frame 1 is what a case makes it. It is
// small so that fuzzing inputs seeded from it stay small.
const lit1 = 100 // frame 1's output length

type frameFixture struct {
	src, tgt []byte
	h        Header
}

func newFrameFixture() frameFixture {
	src := randBytes(21, 5000)
	tgt := append(bytes.Clone(src[900:4996]), randBytes(22, lit1)...)
	return frameFixture{src: src, tgt: tgt, h: Header{FrameSize: MinFrameSize, SourceSize: uint64(len(src)),
		SourceDigest: sha256.Sum256(src), TargetSize: uint64(len(tgt)), TargetDigest: sha256.Sum256(tgt)}}
}

// good returns valid raw frames 0 and 1.
func (f frameFixture) good() (raw0, raw1 []byte) {
	ops0 := []op{{add: true, n: 4096, src: 900}}
	raw0 = appendRaw(nil, ops0, frameData(nil, ops0, f.src, f.tgt[:4096]))
	ops1 := []op{{n: lit1}}
	raw1 = appendRaw(nil, ops1, f.tgt[4096:])
	return raw0, raw1
}

// frameCase is a bad frame 1 and the sentinel Apply refuses it with.
type frameCase struct {
	name string
	// raw1 returns frame 1's raw bytes, stored bytes (nil: compress raw)
	// and declared raw length (0: len(raw)).
	raw1 func(t testing.TB, f frameFixture) (raw, stored []byte, rawLen int)
	// hdr changes the header (nil: none).
	hdr  func(h *Header)
	want error
}

func rawOnly(fn func(f frameFixture) []byte) func(testing.TB, frameFixture) ([]byte, []byte, int) {
	return func(_ testing.TB, f frameFixture) ([]byte, []byte, int) { return fn(f), nil, 0 }
}

func frameCases() []frameCase {
	lit := func(f frameFixture) []byte { return f.tgt[4096:] }
	withList := func(list []byte, data []byte) []byte {
		return append(append(binary.AppendUvarint(nil, uint64(len(list))), list...), data...)
	}
	return []frameCase{
		{"stored bytes not zstd", func(t testing.TB, f frameFixture) ([]byte, []byte, int) {
			return nil, []byte("this is not a zstd frame at all"), lit1 + 6
		}, nil, ErrFrameDecode},
		{"declared raw length one more than decoded", func(t testing.TB, f frameFixture) ([]byte, []byte, int) {
			_, raw1 := f.good()
			return raw1, nil, len(raw1) + 1
		}, nil, ErrFrameDecode},
		{"two zstd frames that decode too long", func(t testing.TB, f frameFixture) ([]byte, []byte, int) {
			_, raw1 := f.good()
			s := zstdFrame(t, raw1)
			return raw1, append(bytes.Clone(s), s...), len(raw1)
		}, nil, ErrFrameDecode},
		{"empty operation list", rawOnly(func(f frameFixture) []byte {
			return withList(nil, append(bytes.Clone(lit(f)), 0)) // one more byte: long enough for the table
		}), nil, ErrOpEncoding},
		{"list length over the frame", rawOnly(func(f frameFixture) []byte {
			return append(binary.AppendUvarint(nil, 5000), lit(f)...)
		}), nil, ErrOpEncoding},
		{"non-minimal list length", rawOnly(func(f frameFixture) []byte {
			return append([]byte{0x82, 0x00, 0xc8, 0x01}, lit(f)...) // 2 as 2 bytes, insert lit1
		}), nil, ErrOpEncoding},
		{"operation of length 0", rawOnly(func(f frameFixture) []byte {
			return withList([]byte{0x00, 0xc8, 0x01}, lit(f))
		}), nil, ErrOpEncoding},
		{"non-minimal operation varint", rawOnly(func(f frameFixture) []byte {
			return withList([]byte{0xc8, 0x81, 0x00}, lit(f))
		}), nil, ErrOpEncoding},
		{"truncated operation varint", rawOnly(func(f frameFixture) []byte {
			return withList([]byte{0xc8}, lit(f))
		}), nil, ErrOpEncoding},
		{"add without its seek", rawOnly(func(f frameFixture) []byte {
			return withList(binary.AppendUvarint(nil, lit1<<1|1), lit(f))
		}), nil, ErrOpEncoding},
		{"varint over 64 bits", rawOnly(func(f frameFixture) []byte {
			return withList(bytes.Repeat([]byte{0xff}, 11), lit(f))
		}), nil, ErrOpEncoding},
		{"add past the source's end", rawOnly(func(f frameFixture) []byte {
			return appendRaw(nil, []op{{add: true, n: lit1, src: 4950}}, lit(f))
		}), nil, ErrSourceRange},
		{"add before the source's start", rawOnly(func(f frameFixture) []byte {
			list := binary.AppendUvarint(nil, lit1<<1|1)
			list = binary.AppendVarint(list, -1)
			return withList(list, lit(f))
		}), nil, ErrSourceRange},
		{"add seek of -2^63", rawOnly(func(f frameFixture) []byte {
			list := binary.AppendUvarint(nil, lit1<<1|1)
			list = binary.AppendVarint(list, -1<<63)
			return withList(list, lit(f))
		}), nil, ErrSourceRange},
		{"add seek of 2^63-1", rawOnly(func(f frameFixture) []byte {
			list := binary.AppendUvarint(nil, lit1<<1|1)
			list = binary.AppendVarint(list, 1<<63-1)
			return withList(list, lit(f))
		}), nil, ErrSourceRange},
		{"operations short of the frame", rawOnly(func(f frameFixture) []byte {
			return withList(binary.AppendUvarint(nil, (lit1-4)<<1), lit(f))
		}), nil, ErrFrameOutput},
		{"operation past the frame", rawOnly(func(f frameFixture) []byte {
			return withList(binary.AppendUvarint(nil, (lit1+1)<<1), lit(f))
		}), nil, ErrFrameOutput},
		{"operation length 2^63-1", rawOnly(func(f frameFixture) []byte {
			return withList(binary.AppendUvarint(nil, 1<<64-2), lit(f))
		}), nil, ErrFrameOutput},
		{"data longer than the output", rawOnly(func(f frameFixture) []byte {
			return withList(binary.AppendUvarint(nil, lit1<<1), append(bytes.Clone(lit(f)), 0))
		}), nil, ErrFrameOutput},
		{"wrong bytes, well formed", rawOnly(func(f frameFixture) []byte {
			b := bytes.Clone(lit(f))
			b[5] ^= 1
			return appendRaw(nil, []op{{n: lit1}}, b)
		}), nil, ErrTargetDigest},
		{"header promises another target", func(t testing.TB, f frameFixture) ([]byte, []byte, int) {
			_, raw1 := f.good()
			return raw1, nil, 0
		}, func(h *Header) { h.TargetDigest[0] ^= 1 }, ErrTargetDigest},
	}
}

// frameDelta builds the delta of a frame case.
func (c frameCase) delta(t testing.TB, f frameFixture) []byte {
	raw0, _ := f.good()
	raw1, stored1, rawLen1 := c.raw1(t, f)
	if stored1 == nil {
		stored1 = zstdFrame(t, raw1)
	}
	if rawLen1 == 0 {
		rawLen1 = len(raw1)
	}
	h := f.h
	if c.hdr != nil {
		c.hdr(&h)
	}
	return build(h, [][]byte{zstdFrame(t, raw0), stored1}, []int{len(raw0), rawLen1})
}

// TestFrameRejects: each malformed frame is refused by Apply with its own
// sentinel (wrapping ErrCorrupt), and a frame refused before its
// operations run writes nothing.
func TestFrameRejects(t *testing.T) {
	f := newFrameFixture()
	raw0, raw1 := f.good()
	good := build(f.h, [][]byte{zstdFrame(t, raw0), zstdFrame(t, raw1)}, []int{len(raw0), len(raw1)})
	dst := newMemTarget(len(f.tgt))
	if _, err := mustOpen(t, good).Apply(context.Background(), bytes.NewReader(f.src), dst); err != nil || !bytes.Equal(dst.b, f.tgt) {
		t.Fatalf("fixture: %v", err)
	}
	cases := append(frameCases(), frameCase{name: "frame bytes changed", want: ErrFrameDigest})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var d []byte
			if c.raw1 == nil { // frame digest: change the stored bytes of a good delta
				d = bytes.Clone(good)
				d[len(d)-3] ^= 1
			} else {
				d = c.delta(t, f)
			}
			p := mustOpen(t, d)
			dst := newMemTarget(len(f.tgt))
			_, err := p.Apply(context.Background(), bytes.NewReader(f.src), dst)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Apply: %v, want %v", err, c.want)
			}
			if !bytes.Equal(dst.b[:4096], f.tgt[:4096]) {
				t.Fatal("frame 0 was not written")
			}
			if !errors.Is(c.want, ErrTargetDigest) && !bytes.Equal(dst.b[4096:], bytes.Repeat([]byte{0xff}, len(f.tgt)-4096)) {
				t.Fatal("a refused frame wrote bytes")
			}
		})
	}
}
