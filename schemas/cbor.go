package schemas

import (
	"fmt"
	"reflect"

	"github.com/fxamacker/cbor/v2"
)

// Limits applied by every decoder in this module. Messages are small by
// design: the largest is a chunk, bounded by MaxChunkSize plus framing.
const (
	// MaxNesting bounds the depth of nested arrays and maps.
	MaxNesting = 16
	// MaxArrayElements bounds the element count of any array.
	MaxArrayElements = 1 << 17
	// MaxMapPairs bounds the pair count of any map.
	MaxMapPairs = 256
	// MaxByteString bounds any single byte or text string.
	MaxByteString = 4 << 20
)

var (
	encMode    cbor.EncMode
	decMode    cbor.DecMode
	tagDecMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
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

// Marshal encodes v in Core Deterministic CBOR (RFC 8949 section 4.2.1).
// It is the only encoder firmcast uses for anything it hashes, signs or sends.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// EncMode returns the package's Core Deterministic encoding mode, for
// packages (such as schemas/suit) that build their own structures.
func EncMode() cbor.EncMode { return encMode }

// Unmarshal decodes data into v with the strict decoder: duplicate map keys,
// indefinite lengths, tags, unknown struct fields and trailing bytes are
// rejected, and nesting, array, map and string sizes are bounded.
// It does not apply per-message size caps; use Decode for wire messages.
func Unmarshal(data []byte, v any) error { return decMode.Unmarshal(data, v) }

// TagDecMode returns a decoder with the same limits as Unmarshal that accepts
// CBOR tags. Only codecs of tagged standard formats (SUIT, COSE) use it, and
// they must check every tag number they accept.
func TagDecMode() cbor.DecMode { return tagDecMode }
