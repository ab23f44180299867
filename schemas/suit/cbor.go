package suit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"

	"github.com/firmcast/firmcast/schemas"
)

// CBOR major types.
const (
	majUint  = 0
	majNint  = 1
	majBstr  = 2
	majTstr  = 3
	majArray = 4
	majMap   = 5
	majTag   = 6
	majOther = 7
)

// Limits beyond those of schemas' decoder.
const (
	// MaxEnvelopeSize bounds an encoded envelope (integrated payloads
	// included). Larger images are fetched, never integrated.
	MaxEnvelopeSize = 1 << 20
	// MaxAuthBlocks bounds the authentication blocks of an envelope (each
	// costs a signature verification per trust anchor).
	MaxAuthBlocks = 8
	// maxSequenceDepth bounds nested try-each / run-sequence levels.
	maxSequenceDepth = 8
	// maxComponents bounds the component list.
	maxComponents = 64
)

// wellformed checks that b is exactly one well-formed CBOR item within the
// schemas limits (nesting, sizes, no indefinite lengths).
func wellformed(b []byte, what string) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: %s: empty", ErrTruncated, what)
	}
	if err := schemas.TagDecMode().Wellformed(b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: %s", ErrTruncated, what)
		}
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return nil
}

// head decodes the initial byte and argument of the item at b.
func head(b []byte) (major byte, arg uint64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, 0, ErrTruncated
	}
	major = b[0] >> 5
	ai := b[0] & 0x1f
	switch {
	case ai < 24:
		return major, uint64(ai), 1, nil
	case ai <= 27:
		w := 1 << (ai - 24)
		if len(b) < 1+w {
			return 0, 0, 0, ErrTruncated
		}
		for _, c := range b[1 : 1+w] {
			arg = arg<<8 | uint64(c)
		}
		return major, arg, 1 + w, nil
	}
	return 0, 0, 0, ErrMalformed
}

// skip returns the length of the item at b, checking its structure
// (lengths, nesting depth, no indefinite lengths).
func skip(b []byte) (int, error) { return skipDepth(b, 0) }

func skipDepth(b []byte, depth int) (int, error) {
	if depth > schemas.MaxNesting {
		return 0, ErrMalformed
	}
	major, arg, n, err := head(b)
	if err != nil {
		return 0, err
	}
	switch major {
	case majUint, majNint:
		return n, nil
	case majOther:
		if b[0]&0x1f == 24 && arg < 32 {
			return 0, ErrMalformed // two-byte simple value below 32
		}
		return n, nil
	case majBstr, majTstr:
		if arg > uint64(len(b)-n) {
			return 0, ErrTruncated
		}
		return n + int(arg), nil
	case majTag:
		m, err := skipDepth(b[n:], depth+1)
		return n + m, err
	}
	count := arg
	if major == majMap {
		if arg > math.MaxUint64/2 {
			return 0, ErrMalformed
		}
		count = arg * 2
	}
	if count > uint64(len(b)) {
		return 0, ErrTruncated
	}
	off := n
	for i := uint64(0); i < count; i++ {
		m, err := skipDepth(b[off:], depth+1)
		if err != nil {
			return 0, err
		}
		off += m
	}
	return off, nil
}

// items splits the array at b (exactly one item) into its raw elements.
func items(b []byte, what string) ([][]byte, error) {
	major, arg, n, err := head(b)
	if err != nil || major != majArray {
		return nil, fmt.Errorf("%w: %s: want array", ErrMalformed, what)
	}
	if arg > uint64(len(b)) {
		return nil, fmt.Errorf("%w: %s", ErrTruncated, what)
	}
	out := make([][]byte, 0, arg)
	off := n
	for i := uint64(0); i < arg; i++ {
		m, err := skip(b[off:])
		if err != nil {
			return nil, fmt.Errorf("%w: %s element %d", errOr(err), what, i)
		}
		out = append(out, b[off:off+m])
		off += m
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %s: trailing bytes", ErrMalformed, what)
	}
	return out, nil
}

// pair is one raw map entry.
type pair struct{ k, v []byte }

// entries splits the map at b (exactly one item) into raw pairs, refusing
// duplicate keys (integer keys compared by value, others by encoding).
func entries(b []byte, what string) ([]pair, error) {
	major, arg, n, err := head(b)
	if err != nil || major != majMap {
		return nil, fmt.Errorf("%w: %s: want map", ErrMalformed, what)
	}
	if arg > uint64(len(b)) || arg > schemas.MaxMapPairs {
		return nil, fmt.Errorf("%w: %s: map too long", ErrMalformed, what)
	}
	out := make([]pair, 0, arg)
	off := n
	for i := uint64(0); i < arg; i++ {
		km, err := skip(b[off:])
		if err != nil {
			return nil, fmt.Errorf("%w: %s key %d", errOr(err), what, i)
		}
		k := b[off : off+km]
		off += km
		vm, err := skip(b[off:])
		if err != nil {
			return nil, fmt.Errorf("%w: %s value %d", errOr(err), what, i)
		}
		v := b[off : off+vm]
		off += vm
		for _, p := range out {
			if sameKey(p.k, k) {
				return nil, fmt.Errorf("%w: %s: key %s", ErrDuplicateKey, what, keyString(k))
			}
		}
		out = append(out, pair{k, v})
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %s: trailing bytes", ErrMalformed, what)
	}
	return out, nil
}

func errOr(err error) error {
	if errors.Is(err, ErrTruncated) {
		return ErrTruncated
	}
	return ErrMalformed
}

func sameKey(a, b []byte) bool {
	ai, aok := asInt(a)
	bi, bok := asInt(b)
	if aok && bok {
		return ai == bi
	}
	return bytes.Equal(a, b)
}

func keyString(k []byte) string {
	if i, ok := asInt(k); ok {
		return fmt.Sprint(i)
	}
	if s, ok := asText(k); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("h'%x'", k)
}

// asInt decodes an int item that fits int64.
func asInt(b []byte) (int64, bool) {
	major, arg, n, err := head(b)
	if err != nil || n != len(b) || arg > math.MaxInt64 {
		return 0, false
	}
	switch major {
	case majUint:
		return int64(arg), true
	case majNint:
		return -1 - int64(arg), true
	}
	return 0, false
}

func asUint(b []byte) (uint64, bool) {
	major, arg, n, err := head(b)
	if err != nil || n != len(b) || major != majUint {
		return 0, false
	}
	return arg, true
}

// asBytes returns the content of a bstr item.
func asBytes(b []byte) ([]byte, bool) {
	major, arg, n, err := head(b)
	if err != nil || major != majBstr || uint64(len(b)-n) != arg {
		return nil, false
	}
	return b[n:], true
}

func asText(b []byte) (string, bool) {
	major, arg, n, err := head(b)
	if err != nil || major != majTstr || uint64(len(b)-n) != arg || !utf8.Valid(b[n:]) {
		return "", false
	}
	return string(b[n:]), true
}

func asBool(b []byte) (v, ok bool) {
	if len(b) != 1 {
		return false, false
	}
	switch b[0] {
	case 0xf4:
		return false, true
	case 0xf5:
		return true, true
	}
	return false, false
}

func isNull(b []byte) bool { return len(b) == 1 && b[0] == 0xf6 }

// asTag splits a tagged item into number and content.
func asTag(b []byte) (uint64, []byte, bool) {
	major, arg, n, err := head(b)
	if err != nil || major != majTag {
		return 0, nil, false
	}
	return arg, b[n:], true
}

// unwrap returns the content of a bstr item after checking that the content
// is exactly one structurally valid CBOR item ("bstr .cbor X"). Text
// strings are checked for UTF-8 where they are decoded.
func unwrap(b []byte, what string) ([]byte, error) {
	c, ok := asBytes(b)
	if !ok {
		return nil, fmt.Errorf("%w: %s: want bstr-wrapped CBOR", ErrMalformed, what)
	}
	if len(c) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", ErrTruncated, what)
	}
	n, err := skip(c)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", errOr(err), what)
	}
	if n != len(c) {
		return nil, fmt.Errorf("%w: %s: trailing bytes", ErrMalformed, what)
	}
	return c, nil
}

// marshal encodes v with firmcast's one deterministic encoder.
func marshal(v any) []byte {
	b, err := schemas.EncMode().Marshal(v)
	if err != nil {
		// Only values built by this package reach here; they always encode.
		panic(fmt.Sprintf("suit: encode: %v", err))
	}
	return b
}

// appendHead appends the shortest CBOR head of major type major and
// argument n (deterministic encoding).
func appendHead(b []byte, major byte, n uint64) []byte {
	switch {
	case n < 24:
		return append(b, major<<5|byte(n))
	case n <= 0xff:
		return append(b, major<<5|24, byte(n))
	case n <= 0xffff:
		return append(b, major<<5|25, byte(n>>8), byte(n))
	case n <= 0xffffffff:
		return append(b, major<<5|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	b = append(b, major<<5|27)
	for i := 7; i >= 0; i-- {
		b = append(b, byte(n>>(8*i)))
	}
	return b
}
