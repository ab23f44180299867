package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"

	"github.com/fxamacker/cbor/v2"
)

// Message is implemented by every wire message type of this package.
type Message interface {
	// MessageName names the message type in errors ("chunk", "device report", ...).
	MessageName() string
	// MaxSize is the cap on the encoded size of this message type.
	MaxSize() int
	// Validate checks the contract beyond CBOR types: required fields,
	// ranges, per-field size limits and consistency. It does not check V.
	// Errors wrap ErrInvalid, or ErrTooLarge for a field over its limit.
	Validate() error
}

var (
	_ Message = (*UpdateNotice)(nil)
	_ Message = (*ChunkRequest)(nil)
	_ Message = (*Chunk)(nil)
	_ Message = (*ChunkTable)(nil)
	_ Message = (*ParityChunk)(nil)
	_ Message = (*WaveEnd)(nil)
	_ Message = (*RepairAnnounce)(nil)
	_ Message = (*DeviceReport)(nil)
	_ Message = (*CampaignCommand)(nil)
	_ Message = (*CampaignReply)(nil)
)

// Encode checks that m carries V == Version (else ErrVersion), validates it
// (ErrInvalid, ErrTooLarge), and encodes it in Core Deterministic CBOR. It
// fails with ErrTooLarge when the encoding exceeds the type's cap. Encode
// never modifies m and is safe for concurrent use, including on the same m.
func Encode(m Message) ([]byte, error) {
	if v := version(m); v != Version {
		return nil, fmt.Errorf("%w: %s: version %d, want %d (set V to schemas.Version)", ErrVersion, m.MessageName(), v, Version)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, m.MessageName(), err)
	}
	if len(b) > m.MaxSize() {
		return nil, fmt.Errorf("%w: %s is %d bytes, cap %d", ErrTooLarge, m.MessageName(), len(b), m.MaxSize())
	}
	return b, nil
}

// Decode decodes one wire message from data into m, which it first resets
// to its zero value. The steps, in order, and the sentinel each returns:
//
//  1. len(data) over m.MaxSize(): ErrTooLarge, before any decoding;
//  2. a version other than Version in field 0: ErrVersion (checked on the
//     raw bytes first, so a newer message with new fields is still
//     reported as a version mismatch, not as malformed);
//  3. the strict decoder (see Unmarshal): ErrMalformed;
//  4. a missing version field: ErrVersion;
//  5. bytes that are not the deterministic encoding of the decoded value
//     (non-shortest heads, unsorted keys, zero-valued optional fields
//     present): ErrMalformed, so that every accepted message re-encodes
//     to exactly the bytes received;
//  6. m.Validate(): ErrInvalid, or ErrTooLarge for a field over its limit.
//
// Every error names the message type. On error m holds unspecified
// content and must not be used. m never aliases data: byte strings are
// copied, so the caller may reuse data at once. Decode is safe for
// concurrent use on distinct m.
func Decode(data []byte, m Message) error {
	name := m.MessageName()
	if len(data) > m.MaxSize() {
		return fmt.Errorf("%w: %s is %d bytes, cap %d", ErrTooLarge, name, len(data), m.MaxSize())
	}
	if v, ok := peekVersion(data); ok && v != Version {
		return fmt.Errorf("%w: %s: version %d, want %d", ErrVersion, name, v, Version)
	}
	reflect.ValueOf(m).Elem().SetZero()
	if err := decMode.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %s: %s%v", ErrMalformed, name, whichField(err), err)
	}
	if v := version(m); v != Version {
		return fmt.Errorf("%w: %s: version %d, want %d", ErrVersion, name, v, Version)
	}
	if err := checkDeterministic(data, m); err != nil {
		return err
	}
	return m.Validate()
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// checkDeterministic re-encodes m and compares it with data.
func checkDeterministic(data []byte, m Message) error {
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	buf.Grow(len(data))
	if err := encMode.MarshalToBuffer(m, buf); err != nil {
		return fmt.Errorf("%w: %s: re-encoding: %v", ErrMalformed, m.MessageName(), err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		return fmt.Errorf("%w: %s: not in deterministic encoding (RFC 8949 section 4.2.1: shortest heads, sorted keys, no zero-valued optional fields)%s",
			ErrMalformed, m.MessageName(), firstDiff(buf.Bytes(), data))
	}
	return nil
}

func firstDiff(want, got []byte) string {
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			return fmt.Sprintf(", first difference at byte %d", i)
		}
	}
	return fmt.Sprintf(", %d bytes where %d expected", len(got), len(want))
}

// peekVersion reads field 0 of a definite-length map without decoding the
// rest. ok is false when data does not start that way; the strict decoder
// then reports what is wrong.
func peekVersion(data []byte) (v uint64, ok bool) {
	major, _, n, ok := readHead(data)
	if !ok || major != 5 {
		return 0, false
	}
	data = data[n:]
	major, key, n, ok := readHead(data)
	if !ok || major != 0 || key != 0 {
		return 0, false
	}
	data = data[n:]
	major, v, _, ok = readHead(data)
	if !ok || major != 0 {
		return 0, false
	}
	return v, true
}

// readHead decodes a CBOR initial byte and argument. Indefinite lengths
// and reserved values give ok == false.
func readHead(b []byte) (major byte, arg uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, 0, false
	}
	major, info := b[0]>>5, b[0]&0x1f
	switch {
	case info < 24:
		return major, uint64(info), 1, true
	case info <= 27:
		size := 1 << (info - 24)
		if len(b) < 1+size {
			return 0, 0, 0, false
		}
		for _, c := range b[1 : 1+size] {
			arg = arg<<8 | uint64(c)
		}
		return major, arg, 1 + size, true
	}
	return 0, 0, 0, false
}

func version(m Message) uint {
	switch x := m.(type) {
	case *UpdateNotice:
		return x.V
	case *ChunkRequest:
		return x.V
	case *Chunk:
		return x.V
	case *ChunkTable:
		return x.V
	case *WaveEnd:
		return x.V
	case *RepairAnnounce:
		return x.V
	case *ParityChunk:
		return x.V
	case *DeviceReport:
		return x.V
	case *CampaignCommand:
		return x.V
	case *CampaignReply:
		return x.V
	}
	return 0
}

// fieldNames maps fxamacker's struct field names ("schemas.Chunk.1") to
// readable ones ("key 1 (Chunk.Image)").
var fieldNames = func() map[string]string {
	out := map[string]string{}
	for _, v := range []any{UpdateNotice{}, SourceHint{}, ChunkRequest{}, Chunk{}, ChunkTable{}, WaveEnd{}, RepairAnnounce{}, ParityChunk{},
		DeviceReport{}, CampaignCommand{}, CampaignSpec{}, CampaignStatus{}, CampaignReply{}} {
		t := reflect.TypeOf(v)
		for i := range t.NumField() {
			f := t.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("cbor"), ",")
			out[t.String()+"."+key] = fmt.Sprintf("key %s (%s.%s): ", key, t.Name(), f.Name)
		}
	}
	return out
}()

func whichField(err error) string {
	var te *cbor.UnmarshalTypeError
	if errors.As(err, &te) {
		return fieldNames[te.StructFieldName]
	}
	return ""
}

// IsChunk reports whether data has the shape of a Chunk message: a CBOR
// map of exactly four entries whose keys are 0 to 3 in order, key 1 a
// byte string and key 2 an unsigned integer. It reads the heads only
// (no copy, no allocation), so a receive path can tell chunks (which it
// may shed under pressure: they are repaired later) from the other
// messages on chunk topics (chunk tables, markers), which it must keep.
// A message it accepts still goes through Decode.
func IsChunk(data []byte) bool { return hasShape(data, chunkShape) }

// IsParityChunk reports whether data has the shape of a ParityChunk
// message, as IsChunk does for chunks: a CBOR map of exactly five
// entries, keys 0 to 4 in order, key 1 and key 4 byte strings, the others
// unsigned integers. Parity chunks, like chunks, may be shed under
// pressure (a later repair round sends fresh ones).
func IsParityChunk(data []byte) bool { return hasShape(data, parityShape) }

// IsChunkTable reports whether data starts as a ChunkTable message does:
// a CBOR map of five entries (a plain table) or eight (a coded one) whose
// first five keys are 0 to 4 in order, key 1 a byte string, key 4 an
// array. It reads heads only (a table is up to MaxChunks digests: a
// receive path that meets a copy of one in the carousel tells it from
// garbage without decoding it); it checks nothing after key 4's head, so
// a table it accepts still goes through Decode.
func IsChunkTable(data []byte) bool {
	for _, pairs := range []uint64{5, 8} {
		if _, ok := mapEntries(data, pairs, tableShape); ok {
			return true
		}
	}
	return false
}

// ChunkIndexOf returns the chunk index (key 2) of a message of Chunk
// shape (IsChunk), reading heads only; ok is false for anything else or
// an index beyond uint32. It checks neither the version nor the image:
// a receive path uses it only to drop, before copying, a chunk it would
// drop after Decode anyway (one it holds already), never to accept one.
func ChunkIndexOf(data []byte) (index uint32, ok bool) {
	return peekKey2(data, chunkShape)
}

// ParityBlockOf returns the source block (key 2) of a message of
// ParityChunk shape (IsParityChunk), as ChunkIndexOf does for chunks: so
// that a receive path drops, before copying, parity for a block it has
// no use for.
func ParityBlockOf(data []byte) (block uint32, ok bool) {
	return peekKey2(data, parityShape)
}

// peekKey2 returns key 2's unsigned value of a message of the given shape.
func peekKey2(data []byte, shape []byte) (uint32, bool) {
	if !hasShape(data, shape) {
		return 0, false
	}
	rest, _ := mapEntries(data, uint64(len(shape)), shape[:2])
	_, _, n, _ := readHead(rest) // key 2, checked by hasShape
	_, v, _, _ := readHead(rest[n:])
	if v > math.MaxUint32 {
		return 0, false
	}
	return uint32(v), true
}

// IsRepairAnnounce reports whether data may be a RepairAnnounce: a CBOR
// map of four entries whose keys are 0, 1, 2 and 4 in order (a wave end
// has keys 0 to 3). It reads only the map's head and keys up to key 2's
// value, so that a receiver sorts the messages of a broadcast topic
// cheaply; Decode still checks the whole message.
func IsRepairAnnounce(data []byte) bool {
	data, ok := mapEntries(data, 4, []byte{0, 2, 0}) // version, digest, wave
	if !ok {
		return false
	}
	major, k, _, ok := readHead(data)
	return ok && major == 0 && k == 4
}

// Major types of the values of a chunk and of a parity chunk, by key.
var (
	chunkShape  = []byte{0, 2, 0, 2}
	parityShape = []byte{0, 2, 0, 0, 2}
	// tableShape is a chunk table's first five keys (4: an array).
	tableShape = []byte{0, 2, 0, 0, 4}
)

// hasShape reports whether data is a CBOR map whose keys are 0 to
// len(shape)-1 in order, each value of the major type shape[key] (0
// unsigned integer, 2 byte string), and nothing after it.
func hasShape(data []byte, shape []byte) bool {
	rest, ok := mapEntries(data, uint64(len(shape)), shape)
	return ok && len(rest) == 0
}

// mapEntries reads the head of a CBOR map of exactly pairs entries and
// its first len(shape) entries, whose keys must be 0 to len(shape)-1 in
// order and each value of the major type shape[key] (0 unsigned integer,
// 2 byte string, whose bytes it skips; 4 array, whose head only it
// reads: the last of a shape). It returns what follows those
// entries; ok is false when data does not start that way. It reads heads
// only: no copy, no allocation.
func mapEntries(data []byte, pairs uint64, shape []byte) (rest []byte, ok bool) {
	major, count, n, ok := readHead(data)
	if !ok || major != 5 || count != pairs {
		return nil, false
	}
	data = data[n:]
	for key, want := range shape {
		major, k, n, ok := readHead(data)
		if !ok || major != 0 || k != uint64(key) {
			return nil, false
		}
		data = data[n:]
		major, arg, n, ok := readHead(data)
		if !ok || major != want {
			return nil, false
		}
		if major == 2 {
			if arg > uint64(len(data)-n) {
				return nil, false
			}
			n += int(arg)
		}
		data = data[n:]
	}
	return data, true
}
