package schemas

import (
	"bytes"
	"testing"
)

// TestIsChunk: every encoded Chunk (ParityChunk) of the vectors is
// recognised by IsChunk (IsParityChunk), no other message of the vectors
// is, nor truncated or padded ones.
func TestIsChunk(t *testing.T) {
	for _, tc := range []struct {
		name string
		is   func([]byte) bool
		of   func(Message) bool
	}{
		{"IsChunk", IsChunk, func(m Message) bool { _, ok := m.(*Chunk); return ok }},
		{"IsParityChunk", IsParityChunk, func(m Message) bool { _, ok := m.(*ParityChunk); return ok }},
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
				for _, bad := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), b[1:], nil} {
					if tc.is(bad) {
						t.Errorf("%s accepted %x", tc.name, bad)
					}
				}
			}
		}
	}
}

// FuzzIsChunk: IsChunk and IsParityChunk never panic, and accept whatever
// Decode accepts as a Chunk or a ParityChunk (a receive path that sheds
// by them sheds every chunk and parity chunk), and never both.
func FuzzIsChunk(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		is, isParity := IsChunk(data), IsParityChunk(data)
		if is && isParity {
			t.Fatalf("both a chunk and a parity chunk: %x", data)
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
