package delta

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// SaveFunc persists a checkpoint durably before it returns (write, fsync,
// rename are the caller's). Apply calls it after a frame's output was
// handed to the target's WriteAt: if the target buffers, SaveFunc must
// make the target's bytes durable first, since the checkpoint promises
// that the frames it counts are in the target. An error stops Apply.
type SaveFunc func(ctx context.Context, cp Checkpoint) error

// ApplyOption configures Apply.
type ApplyOption func(*applyConfig) error

type applyConfig struct {
	resume *Checkpoint
	save   SaveFunc
	every  int
}

// WithResume continues an apply from cp, the last checkpoint saved before
// a reset: frames before cp.Frames are not read nor written again. Apply
// returns ErrCheckpoint if cp belongs to another delta or is malformed;
// the caller then starts again without it.
func WithResume(cp Checkpoint) ApplyOption {
	return func(c *applyConfig) error {
		c.resume = &cp
		return nil
	}
}

// WithCheckpoints has Apply call save after every every frames (every >=
// 1) and after the last frame. Errors wrap ErrInvalidOption.
func WithCheckpoints(save SaveFunc, every int) ApplyOption {
	return func(c *applyConfig) error {
		if save == nil {
			return fmt.Errorf("%w: nil SaveFunc", ErrInvalidOption)
		}
		if every < 1 {
			return fmt.Errorf("%w: checkpoints every %d frames, want >= 1", ErrInvalidOption, every)
		}
		c.save, c.every = save, every
		return nil
	}
}

// Result is what Apply made.
type Result struct {
	// Digest is the SHA-256 of the whole target, hashed as it was written
	// (resumed applies continue the checkpoint's hash state). Apply
	// returns without error only when it equals Header.TargetDigest; the
	// caller still compares it with the digest the manifest signs before
	// it commits.
	Digest Digest `json:"digest"`
	// Size is the target size.
	Size uint64 `json:"size"`
	// From is the first frame this call applied (a resumed apply's
	// checkpoint), Applied the number of frames it applied.
	From    int `json:"from"`
	Applied int `json:"applied"`
}

// maxIO is the largest I/O buffer of Apply: the unit of source reads and
// target writes. The buffer is min(frame size, maxIO), which divides the
// frame size, so target writes start at multiples of it.
const maxIO = 32 << 10

// Apply writes the delta's target into dst, reading the source image
// through src (on a device: the active slot, read only) and the staged
// delta through the Patch's reader. dst is typically the candidate slot;
// it must not overlap src.
//
// Steps, in order:
//  1. With WithResume, check the checkpoint (ErrCheckpoint).
//  2. Hash the source's first SourceSize bytes and compare them with the
//     header (ErrWrongSource): nothing is written to a target whose
//     source is wrong.
//  3. For each frame from the checkpoint on: read its table entry, read
//     the stored frame and check its SHA-256 (ErrFrameDigest),
//     decompress it (ErrFrameDecode), check every operation against the
//     frame and the source (ErrOpEncoding, ErrSourceRange,
//     ErrFrameOutput), then run them: a frame that is refused writes
//     nothing. The output is hashed as it is written. Then save a
//     checkpoint (WithCheckpoints).
//  4. Compare the output's digest with the header's (ErrTargetDigest).
//
// Memory: MaxStoredLen and MaxRawLen of the frame size, a 32 KiB I/O
// buffer and the zstd decoder's state, allocated at the start and
// independent of the image and delta sizes (about 0.6 MiB in all at the
// default frame size, 0.7 MiB at MaxFrameSize). Per frame, Apply
// allocates only the checkpoints it hands to SaveFunc (zstd may refill
// its pooled tables after a garbage collection).
//
// Target writes are at most 32 KiB and start at multiples of 32 KiB (or
// of the frame size, if smaller), so a flash write unit never spans two
// frames; a reset in the middle of a frame leaves part of it written, and
// a resume writes the same bytes there again.
//
// Apply blocks until done or ctx ends (checked between frames and while
// hashing the source). It is NOT safe to run two Applies into one dst.
// Errors: those named above (ErrCorrupt's family for the delta),
// ErrInvalidOption, ctx's error, or src's, dst's or SaveFunc's error,
// wrapped. After any error nothing may be committed; the last saved
// checkpoint resumes.
func (p *Patch) Apply(ctx context.Context, src io.ReaderAt, dst io.WriterAt, opts ...ApplyOption) (Result, error) {
	var cfg applyConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return Result{}, err
		}
	}
	h := p.h
	sum := sha256.New()
	start := 0
	if cp := cfg.resume; cp != nil {
		if cp.Delta != p.id || cp.Frames < 0 || cp.Frames > h.Frames {
			return Result{}, fmt.Errorf("%w: checkpoint of delta %s at frame %d; this delta is %s with %d frames",
				ErrCheckpoint, cp.Delta, cp.Frames, p.id, h.Frames)
		}
		if err := sum.(encoding.BinaryUnmarshaler).UnmarshalBinary(cp.Hash); err != nil {
			return Result{}, fmt.Errorf("%w: hash state: %w", ErrCheckpoint, err)
		}
		start = cp.Frames
	}
	a := applier{p: p, src: src, dst: dst, sum: sum,
		buf:    make([]byte, min(h.FrameSize, maxIO)),
		stored: make([]byte, MaxStoredLen(h.FrameSize)),
		raw:    make([]byte, MaxRawLen(h.FrameSize)),
	}
	if err := a.checkSource(ctx); err != nil {
		return Result{}, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(uint64(max(MaxRawLen(h.FrameSize), zstd.MinWindowSize))),
		zstd.WithDecoderMaxMemory(uint64(MaxRawLen(h.FrameSize))), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return Result{}, fmt.Errorf("delta: zstd: %w", err)
	}
	defer dec.Close()
	a.dec = dec
	res := Result{Size: h.TargetSize, From: start}
	for i := start; i < h.Frames; i++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := a.frame(i); err != nil {
			return res, err
		}
		res.Applied++
		if cfg.save != nil && ((i+1)%cfg.every == 0 || i+1 == h.Frames) {
			st, err := sum.(encoding.BinaryMarshaler).MarshalBinary()
			if err != nil {
				return res, fmt.Errorf("delta: hash state: %w", err)
			}
			if err := cfg.save(ctx, Checkpoint{Delta: p.id, Frames: i + 1, Hash: st}); err != nil {
				return res, fmt.Errorf("delta: checkpoint after frame %d: %w", i, err)
			}
		}
	}
	sum.Sum(res.Digest[:0])
	if res.Digest != h.TargetDigest {
		return res, fmt.Errorf("%w: the output hashes to %s, the delta promises %s", ErrTargetDigest, res.Digest, h.TargetDigest)
	}
	return res, nil
}

// applier is one Apply's state: its buffers, allocated once.
type applier struct {
	p      *Patch
	src    io.ReaderAt
	dst    io.WriterAt
	sum    hash.Hash
	dec    *zstd.Decoder
	buf    []byte // source reads and output, written at off when full
	n      int    // bytes of buf holding output
	off    int64  // target offset of buf[0]
	stored []byte
	raw    []byte
	entry  [entrySize]byte
}

// checkSource hashes the source and compares it with the header.
func (a *applier) checkSource(ctx context.Context) error {
	h := a.p.h
	s := sha256.New()
	for off := int64(0); off < int64(h.SourceSize); {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := a.buf[:min(int64(len(a.buf)), int64(h.SourceSize)-off)]
		if n, err := a.src.ReadAt(b, off); n < len(b) {
			if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
				return fmt.Errorf("%w: the source ends at %d, the delta is from %d bytes", ErrWrongSource, off+int64(n), h.SourceSize)
			}
			return fmt.Errorf("delta: read source at %d: %w", off, err)
		}
		s.Write(b)
		off += int64(len(b))
	}
	var got Digest
	s.Sum(got[:0])
	if got != h.SourceDigest {
		return fmt.Errorf("%w: the source hashes to %s, the delta is from %s", ErrWrongSource, got, h.SourceDigest)
	}
	return nil
}

// frame checks and applies frame i.
func (a *applier) frame(i int) error {
	e, err := a.p.entry(i, a.entry[:])
	if err != nil {
		return err
	}
	stored := a.stored[:e.stored]
	if err := readFull(a.p.r, stored, e.off); err != nil {
		return err
	}
	if sha256.Sum256(stored) != e.digest {
		return fmt.Errorf("%w: frame %d of %d bytes at %d does not hash to %s", ErrFrameDigest, i, e.stored, e.off, Digest(e.digest))
	}
	raw, err := a.dec.DecodeAll(stored, a.raw[:0:e.raw])
	if err != nil {
		return fmt.Errorf("%w: frame %d: %w", ErrFrameDecode, i, err)
	}
	if len(raw) != e.raw {
		return fmt.Errorf("%w: frame %d decompresses to %d bytes, the table says %d", ErrFrameDecode, i, len(raw), e.raw)
	}
	lo, out := a.p.h.frameOut(i)
	srcSize := int64(a.p.h.SourceSize)
	// Pass 1: check every operation, so a refused frame writes nothing.
	it, err := newOpIter(raw, out, srcSize)
	if err != nil {
		return fmt.Errorf("frame %d: %w", i, err)
	}
	for {
		_, _, ok, err := it.next()
		if err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
		if !ok {
			break
		}
	}
	// Pass 2: run them.
	it, _ = newOpIter(raw, out, srcSize)
	a.off, a.n = lo, 0
	for {
		o, d, ok, _ := it.next()
		if !ok {
			break
		}
		if err := a.run(o, d); err != nil {
			return err
		}
	}
	return a.flush()
}

// run produces one operation's output into buf, flushing it when full.
func (a *applier) run(o op, d []byte) error {
	for len(d) > 0 {
		w := a.buf[a.n:min(len(a.buf), a.n+len(d))]
		if o.add {
			if err := readFull(a.src, w, o.src); err != nil {
				return fmt.Errorf("delta: read source: %w", err)
			}
			addBytes(w, d[:len(w)])
			o.src += int64(len(w))
		} else {
			copy(w, d)
		}
		d = d[len(w):]
		a.n += len(w)
		if a.n == len(a.buf) {
			if err := a.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush hashes and writes the output gathered in buf.
func (a *applier) flush() error {
	if a.n == 0 {
		return nil
	}
	b := a.buf[:a.n]
	a.sum.Write(b)
	if _, err := a.dst.WriteAt(b, a.off); err != nil {
		return fmt.Errorf("delta: write target at %d: %w", a.off, err)
	}
	a.off += int64(a.n)
	a.n = 0
	return nil
}

// addBytes sets w[i] += d[i] (mod 256), eight bytes at a time: the sums
// of the low seven bits of each byte cannot carry into the next byte,
// and the top bits are added without carry by XOR.
func addBytes(w, d []byte) {
	const hi = 0x8080808080808080
	for len(w) >= 8 && len(d) >= 8 {
		b := binary.LittleEndian.Uint64(d)
		if b != 0 { // most differences are zero: the source byte is kept
			a := binary.LittleEndian.Uint64(w)
			binary.LittleEndian.PutUint64(w, ((a&^hi)+(b&^hi))^((a^b)&hi))
		}
		w, d = w[8:], d[8:]
	}
	for i := range w {
		w[i] += d[i]
	}
}
