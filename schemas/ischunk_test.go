package schemas

import (
	"bytes"
	"testing"
)

// TestIsChunk: every encoded Chunk (ParityChunk, ChunkTable) of the
// vectors is recognised by IsChunk (IsParityChunk, IsChunkTable), no
// other message of the vectors is, nor truncated or padded ones (for
// IsChunkTable, which reads only the first heads, ones cut at the start).
func TestIsChunk(t *testing.T) {
	for _, tc := range []struct {
		name string
		is   func([]byte) bool
		of   func(Message) bool
		// heads: is reads only the message's first heads.
		heads bool
	}{
		{"IsChunk", IsChunk, func(m Message) bool { _, ok := m.(*Chunk); return ok }, false},
		{"IsParityChunk", IsParityChunk, func(m Message) bool { _, ok := m.(*ParityChunk); return ok }, false},
		{"IsChunkTable", IsChunkTable, func(m Message) bool { _, ok := m.(*ChunkTable); return ok }, true},
	} {
		for _, v := range vectors(t) {
			b, err := Encode(v.msg)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.of(v.msg)
			if got := tc.is(b); got != want {
				t.Errorf("%s(%s) = %v, want %v", tc.name, v.msg.MessageName(), got, want)
			}
			if want {
				bads := [][]byte{b[1:], nil}
				if !tc.heads {
					bads = append(bads, b[:len(b)-1], append(bytes.Clone(b), 0))
				}
				for _, bad := range bads {
					if tc.is(bad) {
						t.Errorf("%s accepted %x", tc.name, bad)
					}
				}
			}
		}
	}
}

// FuzzIsChunk: IsChunk, IsParityChunk and IsChunkTable never panic, and
// accept whatever Decode accepts as a Chunk, a ParityChunk or a
// ChunkTable (a receive path that sheds by them sheds every chunk and
// parity chunk, and keeps every table), and never two of them.
func FuzzIsChunk(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		is, isParity, isTable := IsChunk(data), IsParityChunk(data), IsChunkTable(data)
		if is && isParity || (is || isParity) && isTable {
			t.Fatalf("two kinds at once (chunk %v, parity %v, table %v): %x", is, isParity, isTable, data)
		}
		var ct ChunkTable
		if Decode(data, &ct) == nil && !isTable {
			t.Fatalf("a decodable chunk table not recognised: %x", data)
		}
		var c Chunk
		if Decode(data, &c) == nil && !is {
			t.Fatalf("a decodable chunk not recognised: %x", data)
		}
		var p ParityChunk
		if Decode(data, &p) == nil && !isParity {
			t.Fatalf("a decodable parity chunk not recognised: %x", data)
		}
	})
}

// TestDecodeChunkView: the aliasing decoder agrees with Decode on every
// vector and on the rejection table's rows (same acceptance, same value,
// same error), and its result aliases the input.
func TestDecodeChunkView(t *testing.T) {
	viewOnVectors(t, "chunk", sameAsDecode, func(b []byte) ([]byte, error) {
		var c Chunk
		err := DecodeChunkView(b, &c)
		return c.Data, err
	}, func(m Message) ([]byte, bool) {
		c, ok := m.(*Chunk)
		if !ok {
			return nil, false
		}
		return c.Data, true
	})
	// Encodings a head reader could take that are not the deterministic
	// one, or not a valid chunk: Decode refuses them, and so must the view.
	img := bytes.Repeat([]byte{7}, 32)
	build := func(version, imgHead, index, dataHead []byte, data ...byte) []byte {
		b := append([]byte{0xa4, 0x00}, version...)
		b = append(append(append(b, 0x01), imgHead...), img...)
		b = append(append(b, 0x02), index...)
		return append(append(append(b, 0x03), dataHead...), data...)
	}
	good := build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x41}, 0x0a)
	sameAsDecode(t, good)
	if err := DecodeChunkView(good, new(Chunk)); err != nil {
		t.Fatalf("the deterministic encoding refused: %v", err)
	}
	for name, in := range map[string][]byte{
		"version in a 1-byte argument": build([]byte{0x18, 0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x41}, 0x0a),
		"version 2":                    build([]byte{0x02}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x41}, 0x0a),
		"digest length in 2 bytes":     build([]byte{0x01}, []byte{0x59, 0x00, 0x20}, []byte{0x05}, []byte{0x41}, 0x0a),
		"index in a 1-byte argument":   build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x18, 0x05}, []byte{0x41}, 0x0a),
		"index 2^32":                   build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x1b, 0, 0, 0, 1, 0, 0, 0, 0}, []byte{0x41}, 0x0a),
		"index at MaxChunks":           build([]byte{0x01}, []byte{0x58, 0x20}, uintHead(MaxChunks), []byte{0x41}, 0x0a),
		"data length in 1 byte":        build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x58, 0x01}, 0x0a),
		"empty data":                   build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x40}),
		"data cut short":               build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x42}, 0x0a),
		"a byte after the map":         append(bytes.Clone(good), 0x00),
		"indefinite-length data":       build([]byte{0x01}, []byte{0x58, 0x20}, []byte{0x05}, []byte{0x5f, 0x41}, 0x0a, 0xff),
	} {
		if err := DecodeChunkView(in, new(Chunk)); err == nil {
			t.Errorf("%s: accepted %x", name, in)
		}
		sameAsDecode(t, in)
	}
}

// uintHead is the shortest CBOR head of the unsigned integer v.
func uintHead(v uint64) []byte {
	switch {
	case v < 24:
		return []byte{byte(v)}
	case v <= 0xff:
		return []byte{0x18, byte(v)}
	case v <= 0xffff:
		return []byte{0x19, byte(v >> 8), byte(v)}
	case v <= 0xffffffff:
		return []byte{0x1a, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	}
	return []byte{0x1b, byte(v >> 56), byte(v >> 48), byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// sameAsDecode checks DecodeChunkView against Decode on data.
func sameAsDecode(t testing.TB, data []byte) {
	t.Helper()
	var a, b Chunk
	errA, errB := DecodeChunkView(data, &a), Decode(data, &b)
	if (errA == nil) != (errB == nil) || (errA != nil && errA.Error() != errB.Error()) {
		t.Fatalf("%x: DecodeChunkView says %v, Decode %v", data, errA, errB)
	}
	if errA == nil && (a.V != b.V || a.Index != b.Index || !bytes.Equal(a.Image, b.Image) || !bytes.Equal(a.Data, b.Data)) {
		t.Fatalf("%x: DecodeChunkView gives %+v, Decode %+v", data, a, b)
	}
}

// FuzzDecodeChunkView: the aliasing decoder never panics and agrees with
// Decode on every input (acceptance, value, error).
func FuzzDecodeChunkView(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
			for _, r := range genericRejections(f, v.msg, b) {
				if len(r.data) <= 4<<10 {
					f.Add(r.data)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) { sameAsDecode(t, data) })
}

// TestPeekIndex: ChunkIndexOf and ParityBlockOf read key 2 of every
// chunk and parity chunk of the vectors as Decode does, and refuse every
// other message, a truncated or padded one, and an index beyond uint32.
func TestPeekIndex(t *testing.T) {
	big := append([]byte{0xa4, 0x00, 0x01, 0x01, 0x41, 0xaa, 0x02}, uintHead(1<<32)...)
	big = append(big, 0x03, 0x41, 0x00)
	for _, tc := range []struct {
		name string
		peek func([]byte) (uint32, bool)
		of   func(Message) (uint32, bool)
	}{
		{"ChunkIndexOf", ChunkIndexOf, func(m Message) (uint32, bool) {
			c, ok := m.(*Chunk)
			if !ok {
				return 0, false
			}
			return c.Index, true
		}},
		{"ParityBlockOf", ParityBlockOf, func(m Message) (uint32, bool) {
			p, ok := m.(*ParityChunk)
			if !ok {
				return 0, false
			}
			return p.Block, true
		}},
	} {
		for _, v := range vectors(t) {
			b, err := Encode(v.msg)
			if err != nil {
				t.Fatal(err)
			}
			want, wantOK := tc.of(v.msg)
			got, ok := tc.peek(b)
			if ok != wantOK || got != want {
				t.Errorf("%s(%s) = %d, %v; want %d, %v", tc.name, v.msg.MessageName(), got, ok, want, wantOK)
			}
			if wantOK {
				for _, bad := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), b[1:], nil} {
					if _, ok := tc.peek(bad); ok {
						t.Errorf("%s accepted %x", tc.name, bad)
					}
				}
			}
		}
		if _, ok := tc.peek(big); ok {
			t.Errorf("%s accepted an index beyond uint32", tc.name)
		}
	}
}

// FuzzPeekIndex: ChunkIndexOf and ParityBlockOf never panic and, on
// whatever Decode accepts as a Chunk or a ParityChunk, give its index or
// block.
func FuzzPeekIndex(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		i, iok := ChunkIndexOf(data)
		blk, bok := ParityBlockOf(data)
		var c Chunk
		if Decode(data, &c) == nil && (!iok || i != c.Index) {
			t.Fatalf("%x: ChunkIndexOf = %d, %v; Decode's index %d", data, i, iok, c.Index)
		}
		var p ParityChunk
		if Decode(data, &p) == nil && (!bok || blk != p.Block) {
			t.Fatalf("%x: ParityBlockOf = %d, %v; Decode's block %d", data, blk, bok, p.Block)
		}
	})
}

// sameAsDecodeParity checks DecodeParityChunkView against Decode on data.
func sameAsDecodeParity(t testing.TB, data []byte) {
	t.Helper()
	var a, b ParityChunk
	errA, errB := DecodeParityChunkView(data, &a), Decode(data, &b)
	if (errA == nil) != (errB == nil) || (errA != nil && errA.Error() != errB.Error()) {
		t.Fatalf("%x: DecodeParityChunkView says %v, Decode %v", data, errA, errB)
	}
	if errA == nil && (a.V != b.V || a.Block != b.Block || a.Index != b.Index || !bytes.Equal(a.Image, b.Image) || !bytes.Equal(a.Data, b.Data)) {
		t.Fatalf("%x: DecodeParityChunkView gives %+v, Decode %+v", data, a, b)
	}
}

// TestDecodeParityChunkView: the aliasing parity decoder agrees with
// Decode on every vector, on the rejection table's rows and on encodings
// a head reader could take that are not the deterministic one; its
// result aliases the input.
func TestDecodeParityChunkView(t *testing.T) {
	viewOnVectors(t, "parity chunk", sameAsDecodeParity, func(b []byte) ([]byte, error) {
		var p ParityChunk
		err := DecodeParityChunkView(b, &p)
		return p.Data, err
	}, func(m Message) ([]byte, bool) {
		p, ok := m.(*ParityChunk)
		if !ok {
			return nil, false
		}
		return p.Data, true
	})
	img := bytes.Repeat([]byte{7}, 32)
	build := func(version, block, index, dataHead []byte, data ...byte) []byte {
		b := append([]byte{0xa5, 0x00}, version...)
		b = append(append(append(b, 0x01, 0x58, 0x20), img...), 0x02)
		b = append(append(append(b, block...), 0x03), index...)
		return append(append(append(b, 0x04), dataHead...), data...)
	}
	good := build([]byte{0x01}, []byte{0x02}, []byte{0x03}, []byte{0x41}, 0x0a)
	sameAsDecodeParity(t, good)
	if err := DecodeParityChunkView(good, new(ParityChunk)); err != nil {
		t.Fatalf("the deterministic encoding refused: %v", err)
	}
	for name, in := range map[string][]byte{
		"version 2":                   build([]byte{0x02}, []byte{0x02}, []byte{0x03}, []byte{0x41}, 0x0a),
		"block in a 1-byte argument":  build([]byte{0x01}, []byte{0x18, 0x02}, []byte{0x03}, []byte{0x41}, 0x0a),
		"block 2^32":                  build([]byte{0x01}, []byte{0x1b, 0, 0, 0, 1, 0, 0, 0, 0}, []byte{0x03}, []byte{0x41}, 0x0a),
		"block at MaxChunks":          build([]byte{0x01}, uintHead(MaxChunks), []byte{0x03}, []byte{0x41}, 0x0a),
		"index at MaxCodeShards-1":    build([]byte{0x01}, []byte{0x02}, uintHead(MaxCodeShards-1), []byte{0x41}, 0x0a),
		"index 2^32":                  build([]byte{0x01}, []byte{0x02}, []byte{0x1b, 0, 0, 0, 1, 0, 0, 0, 0}, []byte{0x41}, 0x0a),
		"empty data":                  build([]byte{0x01}, []byte{0x02}, []byte{0x03}, []byte{0x40}),
		"data cut short":              build([]byte{0x01}, []byte{0x02}, []byte{0x03}, []byte{0x42}, 0x0a),
		"a byte after the map":        append(bytes.Clone(good), 0x00),
		"data length in 1 byte":       build([]byte{0x01}, []byte{0x02}, []byte{0x03}, []byte{0x58, 0x01}, 0x0a),
		"indefinite-length data":      build([]byte{0x01}, []byte{0x02}, []byte{0x03}, []byte{0x5f, 0x41}, 0x0a, 0xff),
		"a chunk, not a parity chunk": append([]byte{0xa4}, good[1:]...),
	} {
		if err := DecodeParityChunkView(in, new(ParityChunk)); err == nil {
			t.Errorf("%s: accepted %x", name, in)
		}
		sameAsDecodeParity(t, in)
	}
}

// FuzzDecodeParityChunkView: the aliasing parity decoder never panics and
// agrees with Decode on every input (acceptance, value, error).
func FuzzDecodeParityChunkView(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
			for _, r := range genericRejections(f, v.msg, b) {
				if len(r.data) <= 4<<10 {
					f.Add(r.data)
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) { sameAsDecodeParity(t, data) })
}

// viewOnVectors checks a decoder that aliases its input against Decode
// (same) on every vector and on the rejection table's rows, and that on
// each vector of its message (data: that message's data) it decodes and
// its data aliases the encoding.
func viewOnVectors(t *testing.T, what string, same func(testing.TB, []byte), view func([]byte) ([]byte, error), data func(Message) ([]byte, bool)) {
	t.Helper()
	var seen int
	for _, v := range vectors(t) {
		b, err := Encode(v.msg)
		if err != nil {
			t.Fatal(err)
		}
		same(t, b)
		for _, r := range genericRejections(t, v.msg, b) {
			same(t, r.data)
		}
		want, ok := data(v.msg)
		if !ok {
			continue
		}
		seen++
		got, err := view(b)
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if !bytes.Equal(got, want) || &got[0] != &b[len(b)-len(want)] {
			t.Fatalf("%s: data not aliased into the message", v.name)
		}
	}
	if seen == 0 {
		t.Fatalf("no %s among the vectors", what)
	}
}
