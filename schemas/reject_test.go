package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// pair is one raw key/value pair of an encoded map.
type pair struct{ k, v []byte }

// cborHead encodes a CBOR head in its shortest form.
func cborHead(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return []byte{m | 25, byte(n >> 8), byte(n)}
	case n <= 0xffffffff:
		return []byte{m | 26, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
	return []byte{m | 27, byte(n >> 56), byte(n >> 48), byte(n >> 40), byte(n >> 32), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// splitMap splits an encoded top-level map into its raw pairs.
func splitMap(t testing.TB, b []byte) []pair {
	t.Helper()
	major, n, hl, ok := readHead(b)
	if !ok || major != 5 {
		t.Fatalf("not a definite map: %x", b)
	}
	rest := b[hl:]
	ps := make([]pair, 0, n)
	for range n {
		var k, v cbor.RawMessage
		var err error
		if rest, err = cbor.UnmarshalFirst(rest, &k); err != nil {
			t.Fatal(err)
		}
		if rest, err = cbor.UnmarshalFirst(rest, &v); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, pair{k, v})
	}
	return ps
}

func joinMap(ps []pair) []byte {
	out := cborHead(5, uint64(len(ps)))
	for _, p := range ps {
		out = append(append(out, p.k...), p.v...)
	}
	return out
}

func clonePairs(ps []pair) []pair { return append([]pair(nil), ps...) }

// rejection is one row of the rejection table.
type rejection struct {
	kind string
	data []byte
	want error  // sentinel
	text string // substring of the error message
}

// genericRejections derives the wire-level rejections from the valid
// encoding b of m: one row per rejection kind.
func genericRejections(t testing.TB, m Message, b []byte) []rejection {
	ps := splitMap(t, b)
	last := len(ps) - 1
	with := func(i int, v []byte) []byte {
		q := clonePairs(ps)
		q[i].v = v
		return joinMap(q)
	}
	nested := append(bytes.Repeat([]byte{0x81}, MaxNesting+1), 0x00)
	bigMap := cborHead(5, MaxMapPairs+1)
	for i := range uint64(MaxMapPairs + 1) {
		bigMap = append(append(bigMap, cborHead(0, i)...), 0x00)
	}
	bigArray := append(cborHead(4, MaxArrayElements+1), make([]byte, MaxArrayElements+1)...)
	arrayWant, arrayText := error(ErrMalformed), "exceeded max number of elements"
	if len(with(last, bigArray)) > m.MaxSize() {
		arrayWant, arrayText = ErrTooLarge, "cap"
	}
	oversize := bytes.Repeat([]byte{0xff}, m.MaxSize()+1)
	rows := []rejection{
		{"empty input", nil, ErrMalformed, "EOF"},
		{"not a map", []byte{0x80}, ErrMalformed, "cannot unmarshal array"},
		{"over size cap, garbage", oversize, ErrTooLarge, fmt.Sprintf("%d bytes, cap %d", len(oversize), m.MaxSize())},
		{"duplicate key", joinMap(append(clonePairs(ps), ps[last])), ErrMalformed, "duplicate map key"},
		{"duplicate version key", joinMap(append(clonePairs(ps), ps[0])), ErrMalformed, "duplicate map key"},
		{"indefinite-length map", append(append([]byte{0xbf}, joinMap(ps)[len(cborHead(5, uint64(len(ps)))):]...), 0xff), ErrMalformed, "indefinite-length"},
		{"indefinite-length field", with(last, append(append([]byte{0x9f}, 0x00), 0xff)), ErrMalformed, "indefinite-length"},
		{"tag on message", append([]byte{0xd9, 0xd9, 0xf7}, b...), ErrMalformed, "tag"},
		{"tag on field", with(1, append([]byte{0xd8, 0x18}, ps[1].v...)), ErrMalformed, "tag"},
		{"unknown field", joinMap(append(clonePairs(ps), pair{[]byte{0x18, 0x63}, []byte{0x00}})), ErrMalformed, "unknown field"},
		{"text key", joinMap(append(clonePairs(ps), pair{[]byte{0x61, 'V'}, []byte{0x00}})), ErrMalformed, "unknown field"},
		{"trailing bytes", append(bytes.Clone(b), 0x00), ErrMalformed, "extraneous data"},
		{"nesting over limit", with(last, nested), ErrMalformed, "exceeded max nested level"},
		{"map over limit", with(last, bigMap), ErrMalformed, "exceeded max number of key-value pairs"},
		{"array over limit", with(last, bigArray), arrayWant, arrayText},
		{"wrong field type", with(1, []byte{0xa0}), ErrMalformed, "key 1 ("},
		{"float field", with(1, []byte{0xf9, 0x3c, 0x00}), ErrMalformed, "cannot unmarshal"},
		{"version 2", with(0, []byte{0x02}), ErrVersion, "version 2, want 1"},
		{"version 0", with(0, []byte{0x00}), ErrVersion, "version 0, want 1"},
		{"version missing", joinMap(ps[1:]), ErrVersion, "version 0, want 1"},
		{"version as text", with(0, []byte{0x61, '1'}), ErrMalformed, "key 0 (" + reflect.TypeOf(m).Elem().Name() + ".V)"},
		{"version negative", with(0, []byte{0x20}), ErrMalformed, "cannot unmarshal"},
		{"version 2 with a new field", joinMap(append(clonePairs(with2(ps)), pair{[]byte{0x18, 0x63}, []byte{0x00}})), ErrVersion, "version 2"},
		{"non-shortest head", with(0, []byte{0x18, 0x01}), ErrMalformed, "deterministic"},
		{"non-shortest map head", append([]byte{0xb8, byte(len(ps))}, joinMap(ps)[1:]...), ErrMalformed, "deterministic"},
		{"unsorted keys", joinMap(swap(ps, 1, 2)), ErrMalformed, "deterministic"},
	}
	// A text field, where the type has one.
	text := -1
	for i, p := range ps {
		if p.v[0]>>5 == 3 {
			text = i
			rows = append(rows, rejection{"invalid UTF-8", with(i, []byte{0x62, 0xff, 0xfe}), ErrMalformed, "invalid UTF-8"})
			break
		}
	}
	// null decodes to the zero value: a text field then re-encodes as ""
	// (not deterministic), so does a bool; a required byte string (chunk,
	// chunk table)
	// re-encodes as null but is then too short.
	switch {
	case text >= 0:
		rows = append(rows, rejection{"null field", with(text, []byte{0xf6}), ErrMalformed, "deterministic"})
	case ps[1].v[0]>>5 != 2:
		rows = append(rows, rejection{"null field", with(1, []byte{0xf6}), ErrMalformed, "deterministic"})
	default:
		rows = append(rows, rejection{"null field", with(1, []byte{0xf6}), ErrInvalid, "is 0 bytes"})
	}
	return rows
}

func with2(ps []pair) []pair {
	q := clonePairs(ps)
	q[0].v = []byte{0x02}
	return q
}

func swap(ps []pair, i, j int) []pair {
	q := clonePairs(ps)
	q[i], q[j] = q[j], q[i]
	return q
}

// insertPair returns the encoding of ps with (k, v) added in key order.
func insertPair(ps []pair, k, v []byte) []byte {
	q := clonePairs(ps)
	i := 0
	for i < len(q) && bytes.Compare(q[i].k, k) < 0 {
		i++
	}
	q = append(q[:i], append([]pair{{k, v}}, q[i:]...)...)
	return joinMap(q)
}

// zeroFieldRejection adds an optional field with its zero value, which the
// deterministic encoding omits.
var zeroFields = map[string]struct{ k, v []byte }{
	nameNotice:   {[]byte{0x06}, []byte{0x00}}, // start window 0
	nameRequest:  {[]byte{0x08}, []byte{0xf4}}, // want table false
	nameReport:   {[]byte{0x0c}, []byte{0x60}}, // class ""
	nameCommand:  {[]byte{0x03}, []byte{0x60}}, // campaign ""
	nameReply:    {[]byte{0x02}, []byte{0x00}}, // code none
	nameTable:    {[]byte{0x02}, []byte{0x00}}, // (required field, duplicated as 0)
	nameChunk:    {[]byte{0x04}, []byte{0x40}}, // (unknown field)
	nameWaveEnd:  {[]byte{0x04}, []byte{0x40}}, // (unknown field)
	nameParity:   {[]byte{0x05}, []byte{0x40}}, // (unknown field)
	nameAnnounce: {[]byte{0x03}, []byte{0x80}}, // (unknown field: key 3 is a wave end's)
}

func TestDecodeRejects(t *testing.T) {
	bases := map[string]bool{}
	for _, v := range vectors(t) {
		name := v.msg.MessageName()
		if bases[name] {
			continue
		}
		bases[name] = true
		b, err := Encode(v.msg)
		if err != nil {
			t.Fatal(err)
		}
		rows := genericRejections(t, v.msg, b)
		zf := zeroFields[name]
		want, text := error(ErrMalformed), "deterministic"
		switch name {
		case nameTable:
			text = "duplicate map key"
		case nameChunk, nameWaveEnd, nameParity, nameAnnounce:
			text = "unknown field"
		}
		rows = append(rows, rejection{"zero-valued optional field present", insertPair(splitMap(t, b), zf.k, zf.v), want, text})
		for _, r := range rows {
			t.Run(name+"/"+r.kind, func(t *testing.T) {
				err := Decode(r.data, newLike(v.msg))
				checkErr(t, err, r.want, r.text, name)
			})
		}
	}
	if len(bases) != 10 {
		t.Fatalf("%d message types have vectors, want 10", len(bases))
	}
}

func checkErr(t *testing.T, err, want error, text, name string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want %v", want)
	}
	for _, s := range []error{ErrMalformed, ErrTooLarge, ErrVersion, ErrInvalid} {
		if errors.Is(err, s) != (s == want) {
			t.Fatalf("errors.Is(%v) = %v, want only %v", s, !(s == want), want)
		}
	}
	if !strings.Contains(err.Error(), name) {
		t.Errorf("error %q does not name the message %q", err, name)
	}
	if !strings.Contains(err.Error(), text) {
		t.Errorf("error %q does not say %q", err, text)
	}
}

// invalidCase breaks one field of a valid message.
type invalidCase[T any] struct {
	kind   string
	break_ func(*T)
	want   error
	text   string
}

func runInvalid[T any, PT interface {
	*T
	Message
}](t *testing.T, base PT, cases []invalidCase[T]) {
	t.Helper()
	for _, c := range cases {
		t.Run(base.MessageName()+"/"+c.kind, func(t *testing.T) {
			m := PT(new(T))
			if err := Unmarshal(mustMarshal(t, base), m); err != nil {
				t.Fatal(err)
			}
			c.break_((*T)(m))
			// Encode refuses it...
			_, err := Encode(m)
			checkErr(t, err, c.want, c.text, base.MessageName())
			// ...and Decode refuses the raw encoding.
			raw := mustMarshal(t, m)
			if len(raw) > m.MaxSize() && c.want != ErrTooLarge {
				t.Fatalf("test bug: %d bytes over cap", len(raw))
			}
			err = Decode(raw, PT(new(T)))
			checkErr(t, err, c.want, c.text, base.MessageName())
		})
	}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func base[T any](t testing.TB) *T {
	for _, v := range vectors(t) {
		if m, ok := any(v.msg).(*T); ok {
			return m
		}
	}
	t.Fatalf("no vector of type %T", new(T))
	return nil
}

func TestInvalidNotice(t *testing.T) {
	runInvalid(t, base[UpdateNotice](t), []invalidCase[UpdateNotice]{
		{"empty campaign", func(m *UpdateNotice) { m.Campaign = "" }, ErrInvalid, "campaign id is empty"},
		{"target with separator", func(m *UpdateNotice) { m.Target = "a/b" }, ErrInvalid, `contains '/'`},
		{"target too long", func(m *UpdateNotice) { m.Target = strings.Repeat("x", MaxIDLen+1) }, ErrInvalid, "over 64"},
		{"empty envelope", func(m *UpdateNotice) { m.Envelope = nil }, ErrInvalid, "envelope is empty"},
		{"oversize envelope", func(m *UpdateNotice) { m.Envelope = make([]byte, MaxEnvelopeSize+1) }, ErrTooLarge, "envelope is 65537 bytes, max 65536"},
		{"too many sources", func(m *UpdateNotice) { m.Sources = make([]SourceHint, MaxSources+1) }, ErrInvalid, "17 source hints"},
		{"unknown source kind", func(m *UpdateNotice) { m.Sources[0].Kind = "ftp" }, ErrInvalid, `unknown kind "ftp"`},
		{"http source without URI", func(m *UpdateNotice) { m.Sources[1].URI = "" }, ErrInvalid, "has no URI"},
		{"broker source with URI", func(m *UpdateNotice) { m.Sources[0].URI = "x" }, ErrInvalid, "has a URI"},
		{"oversize URI", func(m *UpdateNotice) { m.Sources[1].URI = strings.Repeat("u", MaxURILen+1) }, ErrTooLarge, "source 1 URI"},
		{"negative deadline", func(m *UpdateNotice) { m.Deadline = -1 }, ErrInvalid, "negative deadline"},
		{"short image digest", func(m *UpdateNotice) { m.Image = m.Image[:31] }, ErrInvalid, "image digest is 31 bytes, want 32"},
		{"long image digest", func(m *UpdateNotice) { m.Image = append(m.Image, 0) }, ErrInvalid, "image digest is 33 bytes"},
		{"small chunk size", func(m *UpdateNotice) { m.ChunkSize = MinChunkSize - 1 }, ErrInvalid, "chunk size 255"},
		{"big chunk size", func(m *UpdateNotice) { m.ChunkSize = MaxChunkSize + 1 }, ErrInvalid, "chunk size 1048577"},
		{"unsigned", func(m *UpdateNotice) { m.Auth = nil }, ErrInvalid, "no authentication"},
		{"oversize authentication", func(m *UpdateNotice) { m.Auth = make([]byte, MaxNoticeAuthSize+1) }, ErrTooLarge, "authentication is 2049 bytes, max 2048"},
	})
}

func TestInvalidChunkRequest(t *testing.T) {
	runInvalid(t, base[ChunkRequest](t), []invalidCase[ChunkRequest]{
		{"bad image digest", func(m *ChunkRequest) { m.Image = nil }, ErrInvalid, "image digest is 0 bytes"},
		{"zero chunk size", func(m *ChunkRequest) { m.ChunkSize = 0 }, ErrInvalid, "chunk size 0"},
		{"ranges and bitmap", func(m *ChunkRequest) { m.Bitmap = []byte{1} }, ErrInvalid, "both ranges and bitmap"},
		{"empty range", func(m *ChunkRequest) { m.Ranges[1].Count = 0 }, ErrInvalid, "range 1 [10,+0) empty"},
		{"range beyond max", func(m *ChunkRequest) { m.Ranges[1] = Range{First: MaxChunks - 1, Count: 2} }, ErrInvalid, "beyond 131072 chunks"},
		{"overlapping ranges", func(m *ChunkRequest) { m.Ranges[1].First = 3 }, ErrInvalid, "sorted and disjoint"},
		{"unsorted ranges", func(m *ChunkRequest) { m.Ranges[0], m.Ranges[1] = m.Ranges[1], m.Ranges[0] }, ErrInvalid, "sorted and disjoint"},
		{"too many ranges", func(m *ChunkRequest) {
			m.Ranges = nil
			for i := range uint32(MaxRanges + 1) {
				m.Ranges = append(m.Ranges, Range{First: 2 * i, Count: 1})
			}
		}, ErrInvalid, "1025 ranges"},
		{"oversize bitmap", func(m *ChunkRequest) { m.Ranges = nil; m.Bitmap = rep(0xff, MaxBitmapSize+1) }, ErrTooLarge, "bitmap is 16385 bytes"},
		{"wants nothing", func(m *ChunkRequest) { m.Ranges = nil; m.Bitmap = []byte{0, 0} }, ErrInvalid, "wants no chunk"},
		{"empty reply address", func(m *ChunkRequest) { m.ReplyTo = "" }, ErrInvalid, "reply address is empty"},
		{"wildcard reply address", func(m *ChunkRequest) { m.ReplyTo = "firmcast/v1/dev/+/chunks" }, ErrInvalid, "wildcard"},
		{"oversize reply address", func(m *ChunkRequest) { m.ReplyTo = strings.Repeat("r", MaxReplyToLen+1) }, ErrTooLarge, "reply address is 257 bytes"},
		{"bad requester", func(m *ChunkRequest) { m.Requester = "dev 42" }, ErrInvalid, "requester"},
		{"bad campaign", func(m *ChunkRequest) { m.Campaign = "c#1" }, ErrInvalid, "campaign id"},
		{"protocol 1 written", func(m *ChunkRequest) { m.Protocol = ProtocolPlain }, ErrInvalid, "delivery protocol 1 is written as an absent field"},
	})
}

func TestInvalidChunk(t *testing.T) {
	runInvalid(t, base[Chunk](t), []invalidCase[Chunk]{
		{"bad image digest", func(m *Chunk) { m.Image = m.Image[1:] }, ErrInvalid, "image digest is 31 bytes"},
		{"index beyond max", func(m *Chunk) { m.Index = MaxChunks }, ErrInvalid, "index 131072"},
		{"empty data", func(m *Chunk) { m.Data = nil }, ErrInvalid, "data is empty"},
		{"oversize data", func(m *Chunk) { m.Data = make([]byte, MaxChunkSize+1) }, ErrTooLarge, "data is 1048577 bytes, max 1048576"},
	})
}

func TestInvalidWaveEnd(t *testing.T) {
	runInvalid(t, base[WaveEnd](t), []invalidCase[WaveEnd]{
		{"bad image digest", func(m *WaveEnd) { m.Image = m.Image[1:] }, ErrInvalid, "image digest is 31 bytes"},
		{"wave 0", func(m *WaveEnd) { m.Wave = 0 }, ErrInvalid, "wave number 0"},
		{"nothing sent", func(m *WaveEnd) { m.Sent = nil }, ErrInvalid, "no range sent"},
		{"empty range", func(m *WaveEnd) { m.Sent = []Range{{First: 3, Count: 0}} }, ErrInvalid, "range 0 [3,+0) empty"},
		{"range beyond max", func(m *WaveEnd) { m.Sent = []Range{{First: MaxChunks - 1, Count: 2}} }, ErrInvalid, "beyond 131072 chunks"},
		{"overlapping ranges", func(m *WaveEnd) { m.Sent = []Range{{First: 0, Count: 4}, {First: 2, Count: 1}} }, ErrInvalid, "range 1 starts at 2"},
		{"too many ranges", func(m *WaveEnd) {
			m.Sent = nil
			for i := range MaxRanges + 1 {
				m.Sent = append(m.Sent, Range{First: uint32(2 * i), Count: 1})
			}
		}, ErrInvalid, "1025 ranges"},
	})
}

func TestInvalidChunkTable(t *testing.T) {
	runInvalid(t, base[ChunkTable](t), []invalidCase[ChunkTable]{
		{"bad image digest", func(m *ChunkTable) { m.Image = nil }, ErrInvalid, "image digest is 0 bytes"},
		{"bad chunk size", func(m *ChunkTable) { m.ChunkSize = 0 }, ErrInvalid, "chunk size 0"},
		{"zero image size", func(m *ChunkTable) { m.ImageSize = 0 }, ErrInvalid, "image size is 0"},
		{"too many hashes", func(m *ChunkTable) { m.Hashes = append(m.Hashes, Digest(rep(1, 32))) }, ErrInvalid, "4 hashes for 3 chunks"},
		{"too few hashes", func(m *ChunkTable) { m.ImageSize = 1000 }, ErrInvalid, "3 hashes for 4 chunks"},
		{"image beyond max chunks", func(m *ChunkTable) { m.ImageSize = MaxChunks*256 + 1 }, ErrTooLarge, "131073 chunks"},
	})
}

// TestShortDigestOnTheWire: a chunk or parity hash that is not a byte
// string of DigestSize bytes cannot be held in a ChunkTable; Decode
// refuses the encoding that carries one, naming the digest.
func TestShortDigestOnTheWire(t *testing.T) {
	// wireTable is ChunkTable with its digests as plain byte strings, to
	// encode what a ChunkTable cannot hold.
	type wireTable struct {
		V              uint     `cbor:"0,keyasint"`
		Image          []byte   `cbor:"1,keyasint"`
		ImageSize      uint64   `cbor:"2,keyasint"`
		ChunkSize      uint32   `cbor:"3,keyasint"`
		Hashes         [][]byte `cbor:"4,keyasint"`
		Block          uint32   `cbor:"5,keyasint,omitempty"`
		ParityPerBlock uint32   `cbor:"6,keyasint,omitempty"`
		Parity         [][]byte `cbor:"7,keyasint,omitempty"`
	}
	wire := func(ct *ChunkTable) *wireTable {
		w := &wireTable{V: ct.V, Image: ct.Image, ImageSize: ct.ImageSize, ChunkSize: ct.ChunkSize, Block: ct.Block, ParityPerBlock: ct.ParityPerBlock}
		for _, h := range ct.Hashes {
			w.Hashes = append(w.Hashes, bytes.Clone(h[:]))
		}
		for _, h := range ct.Parity {
			w.Parity = append(w.Parity, bytes.Clone(h[:]))
		}
		return w
	}
	for _, tc := range []struct {
		name   string
		break_ func(w *wireTable)
		text   string
	}{
		{"short hash", func(w *wireTable) { w.Hashes[2] = w.Hashes[2][:31] }, "digest is 31 bytes, want 32"},
		{"long hash", func(w *wireTable) { w.Hashes[0] = append(w.Hashes[0], 0) }, "digest is 33 bytes, want 32"},
		{"empty hash", func(w *wireTable) { w.Hashes[1] = []byte{} }, "digest is 0 bytes, want 32"},
		{"short parity hash", func(w *wireTable) { w.Parity[1] = w.Parity[1][:31] }, "digest is 31 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := wire(testCodedTable(t))
			// Unchanged, the wire form is the table's own encoding.
			if good, want := mustMarshal(t, w), mustMarshal(t, testCodedTable(t)); !bytes.Equal(good, want) {
				t.Fatalf("test bug: wire form differs from the table's encoding")
			}
			tc.break_(w)
			err := Decode(mustMarshal(t, w), new(ChunkTable))
			checkErr(t, err, ErrMalformed, tc.text, nameTable)
		})
	}
}

func TestInvalidCodedTable(t *testing.T) {
	runInvalid(t, testCodedTable(t), []invalidCase[ChunkTable]{
		{"parity without block", func(m *ChunkTable) { m.Block = 0 }, ErrInvalid, "parity without a block size"},
		{"parity hashes without block", func(m *ChunkTable) { m.Block, m.ParityPerBlock = 0, 0 }, ErrInvalid, "parity without a block size"},
		{"block without parity", func(m *ChunkTable) { m.ParityPerBlock, m.Parity = 0, nil }, ErrInvalid, "block size 2 without parity"},
		{"too many shards", func(m *ChunkTable) { m.Block, m.ParityPerBlock = 200, 57 }, ErrInvalid, "over 256 shards"},
		{"too few parity hashes", func(m *ChunkTable) { m.Parity = m.Parity[1:] }, ErrInvalid, "1 parity hashes for 2 blocks of 1"},
		{"too many parity hashes", func(m *ChunkTable) { m.ParityPerBlock = 2 }, ErrInvalid, "2 parity hashes for 2 blocks of 2"},
		{"parity beyond max", func(m *ChunkTable) {
			m.ImageSize, m.Hashes, m.Block, m.ParityPerBlock = MaxChunks*256, make([]Digest, MaxChunks), 1, 1
			for i := range m.Hashes {
				m.Hashes[i] = Digest(rep(1, 32))
			}
		}, ErrTooLarge, "131072 blocks of 1 parity chunks, max 65536"},
	})
}

func TestInvalidParityChunk(t *testing.T) {
	runInvalid(t, base[ParityChunk](t), []invalidCase[ParityChunk]{
		{"bad image digest", func(m *ParityChunk) { m.Image = m.Image[1:] }, ErrInvalid, "image digest is 31 bytes"},
		{"block beyond max", func(m *ParityChunk) { m.Block = MaxChunks }, ErrInvalid, "block 131072"},
		{"index beyond the code", func(m *ParityChunk) { m.Index = MaxCodeShards - 1 }, ErrInvalid, "parity index 255 beyond 254"},
		{"empty data", func(m *ParityChunk) { m.Data = nil }, ErrInvalid, "data is empty"},
		{"oversize data", func(m *ParityChunk) { m.Data = make([]byte, MaxChunkSize+1) }, ErrTooLarge, "data is 1048577 bytes, max 1048576"},
	})
}

func TestInvalidRepairAnnounce(t *testing.T) {
	runInvalid(t, base[RepairAnnounce](t), []invalidCase[RepairAnnounce]{
		{"bad image digest", func(m *RepairAnnounce) { m.Image = m.Image[:4] }, ErrInvalid, "image digest"},
		{"wave 0", func(m *RepairAnnounce) { m.Wave = 0 }, ErrInvalid, "wave number 0"},
		{"no entry", func(m *RepairAnnounce) { m.Need = nil }, ErrInvalid, "0 block entries"},
		{"blocks not increasing", func(m *RepairAnnounce) { m.Need[1].Block = 0 }, ErrInvalid, "blocks must increase"},
		{"block beyond max", func(m *RepairAnnounce) { m.Need[1].Block = MaxChunks }, ErrInvalid, "beyond"},
		{"no parity", func(m *RepairAnnounce) { m.Need[0].Parity = 0 }, ErrInvalid, "0 parity chunks"},
		{"too much parity", func(m *RepairAnnounce) { m.Need[0].Parity = MaxCodeShards }, ErrInvalid, "256 parity chunks"},
	})
}

func TestInvalidReport(t *testing.T) {
	runInvalid(t, base[DeviceReport](t), []invalidCase[DeviceReport]{
		{"empty device", func(m *DeviceReport) { m.Device = "" }, ErrInvalid, "device id is empty"},
		{"device with wildcard", func(m *DeviceReport) { m.Device = "dev#" }, ErrInvalid, "device id"},
		{"bad campaign", func(m *DeviceReport) { m.Campaign = "a.b" }, ErrInvalid, "campaign id"},
		{"unknown state", func(m *DeviceReport) { m.State = stateCount }, ErrInvalid, "unknown state 13"},
		{"unknown code", func(m *DeviceReport) { m.Code = codeCount }, ErrInvalid, "unknown error code 24"},
		{"done beyond total", func(m *DeviceReport) { m.BytesDone = m.BytesTotal + 1 }, ErrInvalid, "bytes done 600001 beyond total 600000"},
		{"oversize text", func(m *DeviceReport) { m.Text = strings.Repeat("t", MaxTextLen+1) }, ErrTooLarge, "error text is 513 bytes"},
		{"bad source", func(m *DeviceReport) { m.Source = "a b" }, ErrInvalid, "source"},
		{"bad class", func(m *DeviceReport) { m.Class = "x/y" }, ErrInvalid, "class id"},
		{"security event naming a campaign", func(m *DeviceReport) { m.Security, m.Code = true, CodeSignature }, ErrInvalid, "security event names no campaign"},
		{"security event without a code", func(m *DeviceReport) { m.Security, m.Campaign = true, "" }, ErrInvalid, "carries an error code"},
		{"protocol 1 written", func(m *DeviceReport) { m.Protocol = ProtocolPlain }, ErrInvalid, "delivery protocol 1 is written as an absent field"},
	})
}

func TestInvalidCampaignCommand(t *testing.T) {
	runInvalid(t, base[CampaignCommand](t), []invalidCase[CampaignCommand]{
		{"unknown op", func(m *CampaignCommand) { m.Op = "explode" }, ErrInvalid, `unknown op "explode"`},
		{"oversize key", func(m *CampaignCommand) { m.Key = strings.Repeat("k", MaxKeyLen+1) }, ErrTooLarge, "API key is 257 bytes"},
		{"create without spec", func(m *CampaignCommand) { m.Spec = nil }, ErrInvalid, "create without spec"},
		{"start without campaign", func(m *CampaignCommand) { m.Op = OpStart; m.Spec = nil }, ErrInvalid, "campaign id is empty"},
		{"spec on pause", func(m *CampaignCommand) { m.Op = OpPause; m.Campaign = "c" }, ErrInvalid, "spec given for op pause"},
		{"list with campaign", func(m *CampaignCommand) { m.Op = OpList; m.Spec = nil; m.Campaign = "c" }, ErrInvalid, "list with a campaign id"},
		{"spec bad image", func(m *CampaignCommand) { m.Spec.Image = nil }, ErrInvalid, "spec: image digest is 0 bytes"},
		{"spec oversize envelope", func(m *CampaignCommand) { m.Spec.Envelope = make([]byte, MaxEnvelopeSize+1) }, ErrTooLarge, "envelope"},
		{"spec no target", func(m *CampaignCommand) { m.Spec.Devices = nil; m.Spec.Class = "" }, ErrInvalid, "no target"},
		{"spec bad device", func(m *CampaignCommand) { m.Spec.Devices[1] = "" }, ErrInvalid, "device 1 is empty"},
		{"spec bad group", func(m *CampaignCommand) { m.Spec.Groups = []string{"g*"} }, ErrInvalid, "group 0"},
		{"spec bad tag", func(m *CampaignCommand) { m.Spec.Tags = []string{"$sys"} }, ErrInvalid, "tag 0"},
		{"spec decreasing phases", func(m *CampaignCommand) { m.Spec.Phases = []uint8{50, 40, 100} }, ErrInvalid, "phase 1 is 40%"},
		{"spec phase over 100", func(m *CampaignCommand) { m.Spec.Phases = []uint8{50, 101} }, ErrInvalid, "phase 1 is 101%"},
		{"spec phases not ending at 100", func(m *CampaignCommand) { m.Spec.Phases = []uint8{10, 50} }, ErrInvalid, "last phase is 50%"},
		{"spec permille over 1000", func(m *CampaignCommand) { m.Spec.FailPermille = 1001 }, ErrInvalid, "permille"},
		{"spec negative deadline", func(m *CampaignCommand) { m.Spec.Deadline = -5 }, ErrInvalid, "negative deadline"},
		{"spec oversize name", func(m *CampaignCommand) { m.Spec.Name = strings.Repeat("n", MaxNameLen+1) }, ErrTooLarge, "name is 129 bytes"},
	})
}

func TestInvalidCampaignReply(t *testing.T) {
	runInvalid(t, base[CampaignReply](t), []invalidCase[CampaignReply]{
		{"unknown code", func(m *CampaignReply) { m.OK = false; m.Code = codeCount }, ErrInvalid, "unknown error code"},
		{"ok with code", func(m *CampaignReply) { m.Code = CodeConflict }, ErrInvalid, "ok reply with error code conflict"},
		{"failed without code", func(m *CampaignReply) { m.OK = false }, ErrInvalid, "failed reply without error code"},
		{"oversize error", func(m *CampaignReply) { m.Error = strings.Repeat("e", MaxTextLen+1) }, ErrTooLarge, "error text is 513 bytes"},
		{"status without id", func(m *CampaignReply) { m.Status.ID = "" }, ErrInvalid, "status: schemas: bad identifier: campaign id is empty"},
		{"status without state", func(m *CampaignReply) { m.Status.State = "" }, ErrInvalid, "state is empty"},
		{"status bad image", func(m *CampaignReply) { m.Status.Image = []byte{1} }, ErrInvalid, "image digest is 1 bytes"},
		{"status empty count key", func(m *CampaignReply) { m.Status.Counts[""] = 1 }, ErrInvalid, "count key"},
		{"list entry bad", func(m *CampaignReply) { m.List = []CampaignStatus{{ID: "a", State: "x"}, {ID: "b"}} }, ErrInvalid, "list entry 1: state is empty"},
	})
}

// TestUnmarshalLimits checks the generic limits of Unmarshal, which
// applies no size cap.
func TestUnmarshalLimits(t *testing.T) {
	var v any
	arr := append(cborHead(4, MaxArrayElements+1), make([]byte, MaxArrayElements+1)...)
	if err := Unmarshal(arr, &v); err == nil || !strings.Contains(err.Error(), "exceeded max number of elements") {
		t.Errorf("array of %d elements: %v", MaxArrayElements+1, err)
	}
	ok := append(cborHead(4, MaxArrayElements), make([]byte, MaxArrayElements)...)
	if err := Unmarshal(ok, &v); err != nil {
		t.Errorf("array of %d elements: %v", MaxArrayElements, err)
	}
	if err := Unmarshal([]byte{0xc1, 0x00}, &v); err == nil {
		t.Error("tag accepted")
	}
	var tv any
	if err := TagDecMode().Unmarshal([]byte{0xc1, 0x00}, &tv); err != nil {
		t.Errorf("TagDecMode refused a tag: %v", err)
	}
}

// TestEncodeVersion checks that Encode refuses a message without V.
func TestEncodeVersion(t *testing.T) {
	for _, v := range vectors(t) {
		m := cloneMsg(t, v.msg)
		reflect.ValueOf(m).Elem().FieldByName("V").SetUint(0)
		if _, err := Encode(m); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), m.MessageName()) {
			t.Errorf("%s: Encode with V=0: %v", v.name, err)
		}
	}
}

// A repair announcement and a wave end share the broadcast topic and look
// alike (a digest, a number, a list of pairs): neither decodes as the
// other, and neither has the shape of a chunk or a parity chunk.
func TestAnnounceIsNoWaveEnd(t *testing.T) {
	a := base[RepairAnnounce](t)
	w := base[WaveEnd](t)
	ab, wb := mustEnc(t, a), mustEnc(t, w)
	if Decode(ab, new(WaveEnd)) == nil {
		t.Error("a repair announcement decodes as a wave end")
	}
	if Decode(wb, new(RepairAnnounce)) == nil {
		t.Error("a wave end decodes as a repair announcement")
	}
	if IsChunk(ab) || IsParityChunk(ab) {
		t.Error("a repair announcement has the shape of a chunk")
	}
	if !IsRepairAnnounce(ab) || IsRepairAnnounce(wb) {
		t.Errorf("IsRepairAnnounce: %v for an announcement, %v for a wave end", IsRepairAnnounce(ab), IsRepairAnnounce(wb))
	}
	for _, v := range vectors(t) {
		if _, ok := v.msg.(*RepairAnnounce); !ok && IsRepairAnnounce(mustEnc(t, v.msg)) {
			t.Errorf("IsRepairAnnounce holds for %s", v.name)
		}
	}
}

func mustEnc(t *testing.T, m Message) []byte {
	t.Helper()
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
