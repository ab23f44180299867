package delta

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// minAdd is the shortest add Make emits: a shorter match costs about as
// much as its literal bytes, and the bound keeps the operation list of a
// frame under 3/8 of its output (so raw frames stay under MaxRawLen).
const minAdd = 32

// MakeOption configures Make.
type MakeOption func(*makeConfig) error

type makeConfig struct {
	frameSize int
}

// WithFrameSize sets the output bytes per frame: a power of two from
// MinFrameSize to MaxFrameSize (default DefaultFrameSize). Larger frames
// compress better and cost fewer table entries (48 bytes each); the
// device's apply buffers grow with them (Apply allocates about 64 KiB at
// 4 KiB frames, 0.6 MiB at 64 KiB, 0.7 MiB at 128 KiB). Errors wrap
// ErrInvalidOption.
func WithFrameSize(n int) MakeOption {
	return func(c *makeConfig) error {
		if n < MinFrameSize || n > MaxFrameSize || n&(n-1) != 0 {
			return fmt.Errorf("%w: frame size %d, want a power of two in %d..%d", ErrInvalidOption, n, MinFrameSize, MaxFrameSize)
		}
		c.frameSize = n
		return nil
	}
}

// Info describes a delta Make wrote.
type Info struct {
	Header Header `json:"header"`
	// ID is the SHA-256 of the header and frame table, stored after them:
	// it names the delta in checkpoints.
	ID Digest `json:"id"`
	// Size is the delta's size in bytes.
	Size int64 `json:"size"`
}

// Make writes to w a delta that turns source into target. It runs on the
// publisher: bsdiff (github.com/gabstv/go-bsdiff) computes which target
// ranges come from where in the source, and Make ships that plan in this
// package's framed format (format.go), each frame zstd-compressed on its
// own. The output is a function of source, target and the options only
// (for given versions of this package, go-bsdiff and zstd: a publisher
// keeps the delta it signed rather than making it again).
//
// Make holds both images and about 17 bytes per source byte of bsdiff
// state in memory (and go-bsdiff's patch buffer, which it discards, grows
// by copying: gigabytes of short-lived garbage for a 15 MB image).
// bsdiff cannot be interrupted: ctx is checked before and after it and
// between frames. Errors: ErrInvalidOption (an option, or a target of 0
// bytes or over MaxImageSize), ErrDiff, ctx's error, or w's error.
func Make(ctx context.Context, w io.Writer, source, target []byte, opts ...MakeOption) (Info, error) {
	cfg := makeConfig{frameSize: DefaultFrameSize}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return Info{}, err
		}
	}
	if len(target) == 0 || len(target) > MaxImageSize || len(source) > MaxImageSize {
		return Info{}, fmt.Errorf("%w: source of %d bytes, target of %d bytes (target 1..%d)", ErrInvalidOption, len(source), len(target), MaxImageSize)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	ctrls, err := diffControls(source, target)
	if err != nil {
		return Info{}, err
	}
	return encode(ctx, w, source, target, ctrls, cfg.frameSize)
}

// encode writes the delta of target against source following the
// control triplets ctrls (as bsdiff's: add, insert, seek). Adds that fall
// outside either image are sent as literals: the plan only decides what
// is cheap, never what the output is.
func encode(ctx context.Context, w io.Writer, source, target []byte, ctrls []control, frameSize int) (Info, error) {
	h := Header{
		FrameSize:    frameSize,
		SourceSize:   uint64(len(source)),
		SourceDigest: sha256.Sum256(source),
		TargetSize:   uint64(len(target)),
		TargetDigest: sha256.Sum256(target),
		Frames:       (len(target) + frameSize - 1) / frameSize,
	}
	// A frame is compressed alone: the window need not exceed a raw frame
	// (MaxRawLen is a power of two), which also keeps the encoder small.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithSingleSegment(true), zstd.WithWindowSize(max(MaxRawLen(frameSize), zstd.MinWindowSize)))
	if err != nil {
		return Info{}, fmt.Errorf("delta: zstd: %w", err)
	}
	defer enc.Close()
	segs := segments(ctrls, source, target)
	frames := make([][]byte, h.Frames)
	table := appendHeader(make([]byte, 0, h.framesStart()), h)
	off := h.framesStart()
	var ops []op
	var data, raw []byte
	for i := range h.Frames {
		if err := ctx.Err(); err != nil {
			return Info{}, err
		}
		lo, n := h.frameOut(i)
		ops, segs = framePlan(ops[:0], segs, lo, lo+int64(n))
		data = frameData(data[:0], ops, source, target[lo:lo+int64(n)])
		raw = appendRaw(raw[:0], ops, data)
		if len(raw) > MaxRawLen(frameSize) {
			// Cannot happen with minAdd; one literal always fits.
			raw = appendRaw(raw[:0], []op{{n: n}}, target[lo:lo+int64(n)])
		}
		frames[i] = enc.EncodeAll(raw, nil)
		if len(frames[i]) > MaxStoredLen(frameSize) {
			return Info{}, fmt.Errorf("delta: frame %d compresses to %d bytes, over %d", i, len(frames[i]), MaxStoredLen(frameSize))
		}
		table = appendEntry(table, entry{off: off, stored: len(frames[i]), raw: len(raw), digest: sha256.Sum256(frames[i])})
		off += int64(len(frames[i]))
	}
	id := sha256.Sum256(table)
	table = append(table, id[:]...)
	if _, err := w.Write(table); err != nil {
		return Info{}, fmt.Errorf("delta: write: %w", err)
	}
	for _, f := range frames {
		if _, err := w.Write(f); err != nil {
			return Info{}, fmt.Errorf("delta: write: %w", err)
		}
	}
	return Info{Header: h, ID: id, Size: off}, nil
}

// seg is one step of the plan over the target: target bytes [dst,
// dst+n) are an add from source offset src, or an insert.
type seg struct {
	add    bool
	dst, n int64
	src    int64
}

// segments turns bsdiff's control triplets into steps over the target,
// keeping only adds that lie inside both images and covering the rest of
// the target with inserts.
func segments(ctrls []control, source, target []byte) []seg {
	var segs []seg
	var dst, src int64
	tl, sl := int64(len(target)), int64(len(source))
	push := func(s seg) {
		if s.n <= 0 {
			return
		}
		if s.add && (s.src < 0 || s.src > sl-s.n) {
			s.add = false
		}
		segs = append(segs, s)
	}
	for _, c := range ctrls {
		if c.addLen < 0 || c.extraLen < 0 || c.addLen > tl-dst || c.extraLen > tl-dst-c.addLen {
			break // a plan that leaves the target: the rest is literal
		}
		push(seg{add: true, dst: dst, n: c.addLen, src: src})
		dst, src = dst+c.addLen, src+c.addLen
		push(seg{dst: dst, n: c.extraLen})
		dst, src = dst+c.extraLen, src+c.seek
	}
	push(seg{dst: dst, n: tl - dst})
	return segs
}

// framePlan appends to ops the operations for target range [lo, hi) and
// returns the segments not yet finished. Adds shorter than minAdd become
// literals; neighbouring literals, and adds contiguous in the source, are
// merged.
func framePlan(ops []op, segs []seg, lo, hi int64) ([]op, []seg) {
	for len(segs) > 0 && segs[0].dst < hi {
		s := segs[0]
		a, b := max(s.dst, lo), min(s.dst+s.n, hi)
		o := op{add: s.add, n: int(b - a)}
		if s.add {
			o.src = s.src + (a - s.dst)
		}
		if o.add && o.n < minAdd {
			o.add, o.src = false, 0
		}
		if k := len(ops) - 1; k >= 0 && ops[k].add == o.add && (!o.add || ops[k].src+int64(ops[k].n) == o.src) {
			ops[k].n += o.n
		} else {
			ops = append(ops, o)
		}
		if s.dst+s.n > hi {
			break // continues in the next frame
		}
		segs = segs[1:]
	}
	return ops, segs
}

// frameData appends the data of ops, which produce out (the frame's
// target bytes): literals, or differences from the source.
func frameData(data []byte, ops []op, source, out []byte) []byte {
	pos := 0
	for _, o := range ops {
		t := out[pos : pos+o.n]
		if !o.add {
			data = append(data, t...)
		} else {
			s := source[o.src : o.src+int64(o.n)]
			for i := range t {
				data = append(data, t[i]-s[i])
			}
		}
		pos += o.n
	}
	return data
}
