package delta

import (
	"encoding/binary"
	"fmt"
)

// op is one operation of a frame: an insert of n literal bytes, or an add
// of n difference bytes to the source at src.
type op struct {
	add bool
	n   int
	src int64 // absolute source offset (add only)
}

// appendRaw appends the raw frame of ops: the operation list, then data
// (the ops' bytes in order, len(data) = the sum of the lengths).
func appendRaw(b []byte, ops []op, data []byte) []byte {
	var list []byte
	prevEnd := int64(0)
	for _, o := range ops {
		v := uint64(o.n) << 1
		if o.add {
			v |= 1
		}
		list = binary.AppendUvarint(list, v)
		if o.add {
			list = binary.AppendVarint(list, o.src-prevEnd)
			prevEnd = o.src + int64(o.n)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(list)))
	b = append(b, list...)
	return append(b, data...)
}

// opIter walks a raw frame's operations, checking each against the
// frame's output length and the source size. It does not allocate.
type opIter struct {
	list, data []byte
	prevEnd    int64
	srcSize    int64
	left       int // output bytes not yet produced
}

// newOpIter splits raw into the operation list and the data. Errors:
// ErrOpEncoding, ErrFrameOutput.
func newOpIter(raw []byte, out int, srcSize int64) (opIter, error) {
	n, k, err := uvarint(raw)
	if err != nil {
		return opIter{}, fmt.Errorf("%w: operation list length: %w", ErrOpEncoding, err)
	}
	if n == 0 || n > uint64(len(raw)-k) {
		return opIter{}, fmt.Errorf("%w: operation list of %d bytes in a %d-byte frame", ErrOpEncoding, n, len(raw))
	}
	it := opIter{list: raw[k : k+int(n)], data: raw[k+int(n):], srcSize: srcSize, left: out}
	if len(it.data) != out {
		return opIter{}, fmt.Errorf("%w: %d data bytes for %d output bytes", ErrFrameOutput, len(it.data), out)
	}
	return it, nil
}

// next returns the next operation and its data bytes; ok is false at the
// end of a well-formed list. Errors: ErrOpEncoding, ErrSourceRange,
// ErrFrameOutput.
func (it *opIter) next() (o op, d []byte, ok bool, err error) {
	if len(it.list) == 0 {
		if it.left != 0 {
			return op{}, nil, false, fmt.Errorf("%w: operations end %d bytes short of the frame", ErrFrameOutput, it.left)
		}
		return op{}, nil, false, nil
	}
	v, k, err := uvarint(it.list)
	if err != nil {
		return op{}, nil, false, fmt.Errorf("%w: operation: %w", ErrOpEncoding, err)
	}
	it.list = it.list[k:]
	o.add = v&1 == 1
	ln := v >> 1
	if ln == 0 {
		return op{}, nil, false, fmt.Errorf("%w: operation of length 0", ErrOpEncoding)
	}
	if ln > uint64(it.left) {
		return op{}, nil, false, fmt.Errorf("%w: operation of %d bytes with %d left in the frame", ErrFrameOutput, ln, it.left)
	}
	o.n = int(ln)
	if o.add {
		u, k, err := uvarint(it.list)
		if err != nil {
			return op{}, nil, false, fmt.Errorf("%w: seek: %w", ErrOpEncoding, err)
		}
		it.list = it.list[k:]
		seek := int64(u >> 1)
		if u&1 != 0 {
			seek = ^seek
		}
		if seek < -it.prevEnd || seek > it.srcSize-it.prevEnd || int64(o.n) > it.srcSize-it.prevEnd-seek {
			return op{}, nil, false, fmt.Errorf("%w: %d bytes at %d%+d, the source is %d bytes", ErrSourceRange, o.n, it.prevEnd, seek, it.srcSize)
		}
		o.src = it.prevEnd + seek
		it.prevEnd = o.src + int64(o.n)
	}
	d, it.data = it.data[:o.n], it.data[o.n:]
	it.left -= o.n
	return o, d, true, nil
}

// uvarint decodes a minimal unsigned varint.
func uvarint(b []byte) (uint64, int, error) {
	v, n := binary.Uvarint(b)
	switch {
	case n == 0:
		return 0, 0, fmt.Errorf("truncated varint")
	case n < 0:
		return 0, 0, fmt.Errorf("varint overflows 64 bits")
	case n != uvarintLen(v):
		return 0, 0, fmt.Errorf("non-minimal varint")
	}
	return v, n, nil
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
