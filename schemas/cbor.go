package schemas

import (
	"fmt"
	"reflect"

	"github.com/fxamacker/cbor/v2"
)

// Limits applied by every decoder in this module. Messages are small by
// design: the largest is a chunk table, bounded by MaxChunks digests.
const (
	// MaxNesting bounds the depth of nested arrays and maps.
	MaxNesting = 16
	// MaxArrayElements bounds the element count of any array (a chunk
	// table lists up to MaxChunks digests).
	MaxArrayElements = MaxChunks
	// MaxMapPairs bounds the pair count of any map.
	MaxMapPairs = 256
	// MaxByteString is the largest byte or text string any firmcast
	// message field may hold. fxamacker/cbor has no per-string bound, so it
	// is enforced by the per-type size cap (Message.MaxSize, checked by
	// Decode before decoding) and by each field's own limit in Validate;
	// Unmarshal bounds strings only by the length of its input.
	MaxByteString = 4 << 20
)

var (
	encMode    cbor.UserBufferEncMode
	decMode    cbor.DecMode
	tagDecMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().UserBufferEncMode()
	if err != nil {
		panic(fmt.Sprintf("schemas: cbor encoder: %v", err))
	}
	opts := decOptions()
	opts.TagsMd = cbor.TagsForbidden
	decMode, err = opts.DecMode()
	if err != nil {
		panic(fmt.Sprintf("schemas: cbor decoder: %v", err))
	}
	topts := decOptions()
	topts.TagsMd = cbor.TagsAllowed
	tagDecMode, err = topts.DecMode()
	if err != nil {
		panic(fmt.Sprintf("schemas: cbor tag decoder: %v", err))
	}
}

func decOptions() cbor.DecOptions {
	return cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		MaxNestedLevels:   MaxNesting,
		MaxArrayElements:  MaxArrayElements,
		MaxMapPairs:       MaxMapPairs,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
		IntDec:            cbor.IntDecConvertNone,
		DefaultMapType:    reflect.TypeOf(map[any]any(nil)),
	}
}

// Marshal encodes v in Core Deterministic CBOR (RFC 8949 section 4.2.1:
// shortest heads, definite lengths, map keys sorted bytewise).
// It is the only encoder firmcast uses for anything it hashes, signs or
// sends. It is safe for concurrent use.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// EncMode returns the package's Core Deterministic encoding mode, for
// packages (such as schemas/suit) that build their own structures.
func EncMode() cbor.EncMode { return encMode }

// Unmarshal decodes data into v with the strict decoder: duplicate map keys,
// indefinite lengths, tags, unknown struct fields, invalid UTF-8 and
// trailing bytes are rejected, and nesting depth, array length and map size
// are bounded (MaxNesting, MaxArrayElements, MaxMapPairs). Strings are
// bounded only by len(data).
// It applies no per-message size cap, version check, validation or
// deterministic-encoding check; use Decode for wire messages.
func Unmarshal(data []byte, v any) error { return decMode.Unmarshal(data, v) }

// TagDecMode returns a decoder with the same limits as Unmarshal that accepts
// CBOR tags. Only codecs of tagged standard formats (SUIT, COSE) use it, and
// they must check every tag number they accept.
func TagDecMode() cbor.DecMode { return tagDecMode }
