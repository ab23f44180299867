package schemas

import (
	"bytes"
	"testing"
)

// TestIsChunk: every encoded Chunk of the vectors is recognised, no other
// message of the vectors is, nor truncated or padded chunks.
func TestIsChunk(t *testing.T) {
	for _, v := range vectors(t) {
		b, err := Encode(v.msg)
		if err != nil {
			t.Fatal(err)
		}
		_, chunk := v.msg.(*Chunk)
		if got := IsChunk(b); got != chunk {
			t.Errorf("%s: IsChunk = %v, want %v", v.msg.MessageName(), got, chunk)
		}
		if chunk {
			for _, bad := range [][]byte{b[:len(b)-1], append(bytes.Clone(b), 0), b[1:], nil} {
				if IsChunk(bad) {
					t.Errorf("IsChunk accepted %x", bad)
				}
			}
		}
	}
}

// FuzzIsChunk: IsChunk never panics, and accepts whatever Decode accepts
// as a Chunk (a receive path that sheds by IsChunk sheds every chunk).
func FuzzIsChunk(f *testing.F) {
	for _, v := range vectors(f) {
		if b, err := Encode(v.msg); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		is := IsChunk(data)
		var c Chunk
		if Decode(data, &c) == nil && !is {
			t.Fatalf("a decodable chunk not recognised: %x", data)
		}
	})
}
