package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// resealAll recomputes every frame digest the table can locate and the
// header digest, so the fuzzer's changes reach the frame decoder and the
// operations instead of stopping at a digest.
func resealAll(d []byte) []byte {
	if len(d) < HeaderSize {
		return d
	}
	d = bytes.Clone(d)
	n := int64(binary.LittleEndian.Uint32(d[88:]))
	end := HeaderSize + n*entrySize
	if end+32 > int64(len(d)) {
		return d
	}
	for i := int64(0); i < n; i++ {
		e := d[HeaderSize+i*entrySize:]
		off, ln := binary.LittleEndian.Uint64(e), uint64(binary.LittleEndian.Uint32(e[8:]))
		if off <= uint64(len(d)) && ln <= uint64(len(d))-off {
			sum := sha256.Sum256(d[off : off+ln])
			copy(e[16:48], sum[:])
		}
	}
	sum := sha256.Sum256(d[:end])
	copy(d[end:], sum[:])
	return d
}

// FuzzOpenApply feeds arbitrary bytes as a staged delta, as they are and
// with their digests recomputed: Open and Apply must never panic nor
// allocate beyond their bounds, must fail only with ErrCorrupt's family
// or ErrWrongSource, and an accepted delta must make exactly
// Header.TargetSize bytes hashing to Header.TargetDigest. Seeds: the
// rejection tables.
func FuzzOpenApply(f *testing.F) {
	fx := newFrameFixture()
	raw0, raw1 := fx.good()
	good := build(fx.h, [][]byte{zstdFrame(f, raw0), zstdFrame(f, raw1)}, []int{len(raw0), len(raw1)})
	f.Add(good)
	for _, c := range openCases() {
		f.Add(c.mut(bytes.Clone(good)))
	}
	for _, c := range frameCases() {
		f.Add(c.delta(f, fx))
	}
	f.Add(mustMake(f, fx.src, fx.tgt, WithFrameSize(MinFrameSize)))
	f.Fuzz(func(t *testing.T, d []byte) {
		for _, in := range [][]byte{d, resealAll(d)} {
			p, err := Open(bytes.NewReader(in), int64(len(in)))
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open: %v is not ErrCorrupt", err)
				}
				continue
			}
			h := p.Header()
			if h.TargetSize > 1<<20 {
				continue // a large target's frames are refused on the same paths
			}
			dst := newMemTarget(int(h.TargetSize))
			res, err := p.Apply(context.Background(), bytes.NewReader(fx.src), dst)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongSource) {
					t.Fatalf("Apply: %v is neither ErrCorrupt nor ErrWrongSource", err)
				}
				continue
			}
			if res.Digest != h.TargetDigest || sha256.Sum256(dst.b) != [32]byte(h.TargetDigest) {
				t.Fatal("accepted a delta that did not make its target")
			}
		}
	})
}

// FuzzOps feeds arbitrary raw frames to the operation decoder: it must
// never panic, and every accepted frame must re-encode to the same bytes
// (one encoding per frame) and produce exactly the frame's output.
func FuzzOps(f *testing.F) {
	fx := newFrameFixture()
	raw0, raw1 := fx.good()
	f.Add(raw0, uint16(4096))
	f.Add(raw1, uint16(lit1))
	f.Add(append(unhex(f, vectorRawHex), make([]byte, 48)...), uint16(48))
	for _, c := range frameCases() {
		if raw, _, _ := c.raw1(f, fx); raw != nil {
			f.Add(raw, uint16(lit1))
		}
	}
	const srcSize = 5000
	f.Fuzz(func(t *testing.T, raw []byte, out uint16) {
		if out == 0 {
			return
		}
		it, err := newOpIter(raw, int(out), srcSize)
		if err != nil {
			return
		}
		var ops []op
		var data []byte
		for {
			o, d, ok, err := it.next()
			if err != nil {
				return
			}
			if !ok {
				break
			}
			if o.n < 1 || (o.add && (o.src < 0 || o.src+int64(o.n) > srcSize)) {
				t.Fatalf("accepted %+v", o)
			}
			ops = append(ops, o)
			data = append(data, d...)
		}
		if len(data) != int(out) {
			t.Fatalf("accepted ops making %d bytes for a %d-byte frame", len(data), out)
		}
		if again := appendRaw(nil, ops, data); !bytes.Equal(again, raw) {
			t.Fatalf("accepted frame re-encodes differently:\n got %x\nwant %x", again, raw)
		}
	})
}

// FuzzCheckpoint feeds arbitrary bytes as a persisted checkpoint:
// UnmarshalBinary must never panic, and what it accepts must re-encode to
// the same bytes.
func FuzzCheckpoint(f *testing.F) {
	b, err := Checkpoint{Delta: Digest(sha256.Sum256(nil)), Frames: 3, Hash: []byte("state")}.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Add([]byte(checkpointMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		var cp Checkpoint
		if cp.UnmarshalBinary(in) != nil {
			return
		}
		again, err := cp.MarshalBinary()
		if err != nil || !bytes.Equal(again, in) {
			t.Fatalf("accepted checkpoint re-encodes to %x (%v), want %x", again, err, in)
		}
	})
}
