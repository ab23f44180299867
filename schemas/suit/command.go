package suit

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"

	"github.com/fxamacker/cbor/v2"
)

// Digest is a SUIT_Digest: [algorithm-id, digest-bytes].
type Digest struct {
	Alg   int64
	Bytes []byte
}

// IndexArg is the argument of directive-set-component-index: one index, all
// components (true), or a list.
type IndexArg struct {
	All  bool
	List []uint64
}

// Command is one condition or directive of a command sequence.
type Command struct {
	// Label is the command's label (CondXxx, DirXxx, or a negative custom label).
	Label int64
	// Policy is the reporting policy (RecordSuccess...) of commands whose
	// argument is a SUIT_Rep_Policy.
	Policy uint64
	// Index is the argument of directive-set-component-index.
	Index *IndexArg
	// Params is the argument of override-parameters and set-parameters.
	Params *Params
	// Try holds the sub-sequences of directive-try-each; TryEmpty reports a
	// final nil (when every sub-sequence fails, try-each succeeds doing nothing).
	Try      []Sequence
	TryEmpty bool
	// Run is the argument of directive-run-sequence.
	Run Sequence
	// Raw is the encoded argument as received (for unknown and custom
	// commands; a processor reports unknown ones only if they run).
	Raw []byte
	// Known is false for a label this package does not decode.
	Known bool
}

// Name returns the draft's name of the command.
func (c Command) Name() string { return CommandName(c.Label) }

// Sequence is a decoded SUIT_Command_Sequence.
type Sequence []Command

// Params is a set of SUIT parameters. A nil pointer or nil slice is unset.
type Params struct {
	VendorID        []byte
	ClassID         []byte
	DeviceID        []byte
	ImageDigest     *Digest
	ImageSize       *uint64
	UseBefore       *uint64 // seconds since the Unix epoch
	ComponentSlot   *uint64
	StrictOrder     *bool
	SoftFailure     *bool
	Content         []byte
	URI             *string
	SourceComponent *uint64
	InvokeArgs      []byte
	// Firmcast is firmcast's custom parameter (ParamFirmcast).
	Firmcast *ChunkInfo

	// EncryptionInfo is parameter-encryption-info: fetch, copy and write
	// decrypt what they write with it (see Processor).
	EncryptionInfo *EncryptionInfo

	// Other holds every other parameter, raw, by label: custom (negative)
	// ones and standard ones this package does not interpret. A processor
	// refuses to set a non-negative one it does not know.
	Other map[int64][]byte
}

// ChunkInfo is the value of ParamFirmcast: how the image is cut into chunks
// and the digest of its schemas.ChunkTable.
type ChunkInfo struct {
	ChunkSize   uint32
	TableDigest Digest
}

// merge copies every parameter set in src into p (override semantics), or
// only those unset in p when keep is true (set-parameters semantics).
func (p *Params) merge(src *Params, keep bool) {
	setB := func(dst *[]byte, v []byte) {
		if v != nil && (!keep || *dst == nil) {
			*dst = v
		}
	}
	setB(&p.VendorID, src.VendorID)
	setB(&p.ClassID, src.ClassID)
	setB(&p.DeviceID, src.DeviceID)
	setB(&p.Content, src.Content)
	setB(&p.InvokeArgs, src.InvokeArgs)
	if src.ImageDigest != nil && (!keep || p.ImageDigest == nil) {
		p.ImageDigest = src.ImageDigest
	}
	setU := func(dst **uint64, v *uint64) {
		if v != nil && (!keep || *dst == nil) {
			*dst = v
		}
	}
	setU(&p.ImageSize, src.ImageSize)
	setU(&p.UseBefore, src.UseBefore)
	setU(&p.ComponentSlot, src.ComponentSlot)
	setU(&p.SourceComponent, src.SourceComponent)
	if src.StrictOrder != nil && (!keep || p.StrictOrder == nil) {
		p.StrictOrder = src.StrictOrder
	}
	if src.SoftFailure != nil && (!keep || p.SoftFailure == nil) {
		p.SoftFailure = src.SoftFailure
	}
	if src.URI != nil && (!keep || p.URI == nil) {
		p.URI = src.URI
	}
	if src.EncryptionInfo != nil && (!keep || p.EncryptionInfo == nil) {
		p.EncryptionInfo = src.EncryptionInfo
	}
	if src.Firmcast != nil && (!keep || p.Firmcast == nil) {
		p.Firmcast = src.Firmcast
	}
	for k, v := range src.Other {
		if _, ok := p.Other[k]; keep && ok {
			continue
		}
		if p.Other == nil {
			p.Other = map[int64][]byte{}
		}
		p.Other[k] = v
	}
}

// clone returns a shallow copy safe to merge into.
func (p *Params) clone() *Params {
	q := *p
	if p.Other != nil {
		q.Other = make(map[int64][]byte, len(p.Other))
		for k, v := range p.Other {
			q.Other[k] = v
		}
	}
	return &q
}

func decodeDigest(b []byte, what string) (Digest, error) {
	it, err := items(b, what)
	if err != nil {
		return Digest{}, err
	}
	if len(it) < 2 {
		return Digest{}, fmt.Errorf("%w: %s: want [algorithm-id, digest-bytes]", ErrMalformed, what)
	}
	alg, ok := asInt(it[0])
	if !ok {
		return Digest{}, fmt.Errorf("%w: %s: algorithm-id not an int", ErrMalformed, what)
	}
	d, ok := asBytes(it[1])
	if !ok {
		return Digest{}, fmt.Errorf("%w: %s: digest-bytes not a bstr", ErrMalformed, what)
	}
	if len(it) > 2 {
		return Digest{}, fmt.Errorf("%w: %s: digest extensions", ErrUnsupported, what)
	}
	return Digest{Alg: alg, Bytes: d}, nil
}

func (d Digest) encode() []byte { return marshal([]any{d.Alg, d.Bytes}) }

// decodeSequence decodes the bstr-wrapped command sequence at b.
func decodeSequenceWrapped(b []byte, what string, depth int) (Sequence, error) {
	c, err := unwrap(b, what)
	if err != nil {
		return nil, err
	}
	return decodeSequence(c, what, depth)
}

func decodeSequence(b []byte, what string, depth int) (Sequence, error) {
	if depth > maxSequenceDepth {
		return nil, fmt.Errorf("%w: %s: sequences nested deeper than %d", ErrMalformed, what, maxSequenceDepth)
	}
	it, err := items(b, what)
	if err != nil {
		return nil, err
	}
	if len(it) == 0 || len(it)%2 != 0 {
		return nil, fmt.Errorf("%w: %s: want label/argument pairs", ErrMalformed, what)
	}
	seq := make(Sequence, 0, len(it)/2)
	for i := 0; i < len(it); i += 2 {
		label, ok := asInt(it[i])
		if !ok {
			return nil, fmt.Errorf("%w: %s: command %d: label not an int", ErrMalformed, what, i/2)
		}
		if policyCommand(label) {
			if u, ok := asUint(it[i+1]); ok { // fast path: no name built
				seq = append(seq, Command{Label: label, Policy: u, Raw: it[i+1], Known: true})
				continue
			}
		}
		c, err := decodeCommand(label, it[i+1], what+": "+CommandName(label), depth)
		if err != nil {
			return nil, err
		}
		seq = append(seq, c)
	}
	return seq, nil
}

func decodeCommand(label int64, arg []byte, what string, depth int) (Command, error) {
	c := Command{Label: label, Raw: arg, Known: true}
	switch label {
	case DirSetComponentIdx:
		ia := &IndexArg{}
		if u, ok := asUint(arg); ok {
			ia.List = []uint64{u}
		} else if b, ok := asBool(arg); ok && b {
			ia.All = true
		} else if l, err := items(arg, what); err == nil && len(l) > 0 {
			for _, e := range l {
				u, ok := asUint(e)
				if !ok {
					return c, fmt.Errorf("%w: %s: index not a uint", ErrMalformed, what)
				}
				ia.List = append(ia.List, u)
			}
		} else {
			return c, fmt.Errorf("%w: %s: want uint, true or [+uint]", ErrMalformed, what)
		}
		c.Index = ia
	case DirOverrideParams, DirSetParameters:
		p, err := decodeParams(arg, what)
		if err != nil {
			return c, err
		}
		c.Params = p
	case DirTryEach:
		l, err := items(arg, what)
		if err != nil {
			return c, err
		}
		if len(l) == 0 {
			return c, fmt.Errorf("%w: %s: empty", ErrMalformed, what)
		}
		for i, e := range l {
			if i == len(l)-1 && isNull(e) {
				c.TryEmpty = true
				break
			}
			s, err := decodeSequenceWrapped(e, what+"["+strconv.Itoa(i)+"]", depth+1)
			if err != nil {
				return c, err
			}
			c.Try = append(c.Try, s)
		}
	case DirRunSequence:
		s, err := decodeSequenceWrapped(arg, what, depth+1)
		if err != nil {
			return c, err
		}
		c.Run = s
	default:
		if !policyCommand(label) {
			c.Known = false
			break
		}
		u, ok := asUint(arg)
		if !ok {
			return c, fmt.Errorf("%w: %s: reporting policy not a uint", ErrMalformed, what)
		}
		c.Policy = u
	}
	return c, nil
}

// policyCommand reports whether label is a known command whose argument
// is a SUIT_Rep_Policy.
func policyCommand(label int64) bool {
	switch label {
	case CondVendorID, CondClassID, CondImageMatch, CondUseBefore, CondComponentSlot,
		CondCheckContent, CondAbort, DirWrite, DirFetch, DirCopy, DirInvoke, CondDeviceID,
		CondImageNotMatch, CondMinBattery, CondUpdateAuth, CondVersion, DirWait, DirSwap,
		CondDependencyInteg, CondIsDependency, DirProcessDep, DirUnlink, CondPrecursor:
		return true
	}
	return false
}

func decodeParams(b []byte, what string) (*Params, error) {
	ps, err := entries(b, what)
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%w: %s: empty parameter map", ErrMalformed, what)
	}
	p := &Params{}
	for _, e := range ps {
		label, ok := asInt(e.k)
		if !ok {
			return nil, fmt.Errorf("%w: %s: parameter key %s not an int", ErrMalformed, what, keyString(e.k))
		}
		bad := func(want string) error {
			return fmt.Errorf("%w: %s: %s: want %s", ErrMalformed, what, ParamName(label), want)
		}
		switch label {
		case ParamVendorID:
			v, ok := asBytes(e.v)
			if !ok {
				// cbor-pen = #6.112(bstr)
				if n, c, tok := asTag(e.v); tok && n == 112 {
					v, ok = asBytes(c)
				}
			}
			if !ok {
				return nil, bad("bstr (UUID) or cbor-pen")
			}
			p.VendorID = v
		case ParamClassID, ParamDeviceID:
			v, ok := asBytes(e.v)
			if !ok || len(v) != 16 {
				return nil, bad("16-byte UUID")
			}
			if label == ParamClassID {
				p.ClassID = v
			} else {
				p.DeviceID = v
			}
		case ParamImageDigest:
			c, err := unwrap(e.v, what+": image-digest")
			if err != nil {
				return nil, err
			}
			d, err := decodeDigest(c, what+": image-digest")
			if err != nil {
				return nil, err
			}
			p.ImageDigest = &d
		case ParamImageSize, ParamUseBefore, ParamComponentSlot, ParamSourceComponent:
			u, ok := asUint(e.v)
			if !ok {
				return nil, bad("uint")
			}
			switch label {
			case ParamImageSize:
				p.ImageSize = &u
			case ParamUseBefore:
				p.UseBefore = &u
			case ParamComponentSlot:
				p.ComponentSlot = &u
			default:
				p.SourceComponent = &u
			}
		case ParamStrictOrder, ParamSoftFailure:
			v, ok := asBool(e.v)
			if !ok {
				return nil, bad("bool")
			}
			if label == ParamStrictOrder {
				p.StrictOrder = &v
			} else {
				p.SoftFailure = &v
			}
		case ParamContent, ParamInvokeArgs:
			v, ok := asBytes(e.v)
			if !ok {
				return nil, bad("bstr")
			}
			if v == nil {
				v = []byte{}
			}
			if label == ParamContent {
				p.Content = v
			} else {
				p.InvokeArgs = v
			}
		case ParamEncryptionInfo:
			c, err := unwrap(e.v, what+": encryption-info")
			if err != nil {
				return nil, err
			}
			info, err := DecodeEncryptionInfo(c)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			p.EncryptionInfo = info
		case ParamURI:
			s, ok := asText(e.v)
			if !ok {
				return nil, bad("tstr")
			}
			p.URI = &s
		case ParamFirmcast:
			ci, err := decodeChunkInfo(e.v, what+": "+ParamName(label))
			if err != nil {
				return nil, err
			}
			p.Firmcast = ci
		default:
			if p.Other == nil {
				p.Other = map[int64][]byte{}
			}
			p.Other[label] = e.v
		}
	}
	return p, nil
}

func decodeChunkInfo(b []byte, what string) (*ChunkInfo, error) {
	c, err := unwrap(b, what)
	if err != nil {
		return nil, err
	}
	es, err := entries(c, what)
	if err != nil {
		return nil, err
	}
	ci := &ChunkInfo{}
	var have int
	for _, e := range es {
		k, _ := asInt(e.k)
		switch k {
		case 1:
			u, ok := asUint(e.v)
			if !ok || u == 0 || u > 1<<31 {
				return nil, fmt.Errorf("%w: %s: chunk-size", ErrMalformed, what)
			}
			ci.ChunkSize = uint32(u)
			have |= 1
		case 2:
			d, err := decodeDigest(e.v, what+": chunk-table digest")
			if err != nil {
				return nil, err
			}
			ci.TableDigest = d
			have |= 2
		default:
			return nil, fmt.Errorf("%w: %s: key %s", ErrUnsupported, what, keyString(e.k))
		}
	}
	if have != 3 {
		return nil, fmt.Errorf("%w: %s: want chunk-size and chunk-table digest", ErrMalformed, what)
	}
	return ci, nil
}

// encode returns the parameter map in deterministic CBOR. Parameters kept
// raw (Other) are copied as received.
func (p *Params) encode() []byte {
	m := map[int64][]byte{}
	put := func(l int64, v any) { m[l] = marshal(v) }
	if p.VendorID != nil {
		put(ParamVendorID, p.VendorID)
	}
	if p.ClassID != nil {
		put(ParamClassID, p.ClassID)
	}
	if p.DeviceID != nil {
		put(ParamDeviceID, p.DeviceID)
	}
	if p.ImageDigest != nil {
		put(ParamImageDigest, p.ImageDigest.encode())
	}
	for l, v := range map[int64]*uint64{ParamImageSize: p.ImageSize, ParamUseBefore: p.UseBefore,
		ParamComponentSlot: p.ComponentSlot, ParamSourceComponent: p.SourceComponent} {
		if v != nil {
			put(l, *v)
		}
	}
	if p.StrictOrder != nil {
		put(ParamStrictOrder, *p.StrictOrder)
	}
	if p.SoftFailure != nil {
		put(ParamSoftFailure, *p.SoftFailure)
	}
	if p.Content != nil {
		put(ParamContent, p.Content)
	}
	if p.InvokeArgs != nil {
		put(ParamInvokeArgs, p.InvokeArgs)
	}
	if p.URI != nil {
		put(ParamURI, *p.URI)
	}
	if p.EncryptionInfo != nil {
		put(ParamEncryptionInfo, p.EncryptionInfo.Encode())
	}
	if p.Firmcast != nil {
		put(ParamFirmcast, marshal(map[int64]any{
			1: p.Firmcast.ChunkSize,
			2: cbor.RawMessage(p.Firmcast.TableDigest.encode()),
		}))
	}
	for k, v := range p.Other {
		m[k] = v
	}
	return encodeIntMap(m)
}

// encodeIntMap encodes a map of integer keys to pre-encoded values with
// keys in deterministic order (bytewise order of their encodings).
func encodeIntMap(m map[int64][]byte) []byte {
	type kv struct{ k, v []byte }
	pairs := make([]kv, 0, len(m))
	for k, v := range m {
		pairs = append(pairs, kv{marshal(k), v})
	}
	sort.Slice(pairs, func(i, j int) bool { return bytes.Compare(pairs[i].k, pairs[j].k) < 0 })
	out := appendHead(nil, majMap, uint64(len(pairs)))
	for _, p := range pairs {
		out = append(append(out, p.k...), p.v...)
	}
	return out
}

// encode returns the sequence as a CBOR array (not bstr-wrapped). The
// arguments of unknown commands are copied as received.
func (s Sequence) encode() []byte {
	out := appendHead(nil, majArray, uint64(2*len(s)))
	for _, c := range s {
		out = append(out, marshal(c.Label)...)
		out = append(out, c.encodeArg()...)
	}
	return out
}

func (c Command) encodeArg() []byte {
	if !c.Known {
		return c.Raw
	}
	switch c.Label {
	case DirSetComponentIdx:
		switch {
		case c.Index == nil:
			return marshal(uint64(0))
		case c.Index.All:
			return marshal(true)
		case len(c.Index.List) == 1:
			return marshal(c.Index.List[0])
		}
		return marshal(c.Index.List)
	case DirOverrideParams, DirSetParameters:
		return c.Params.encode()
	case DirTryEach:
		l := make([]any, 0, len(c.Try)+1)
		for _, s := range c.Try {
			l = append(l, s.encode())
		}
		if c.TryEmpty {
			l = append(l, nil)
		}
		return marshal(l)
	case DirRunSequence:
		return marshal(c.Run.encode())
	}
	return marshal(c.Policy)
}
