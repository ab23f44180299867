package schemas

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestChunkCount(t *testing.T) {
	for _, tt := range []struct {
		size  uint64
		chunk uint32
		want  uint64
	}{
		{0, 256, 0}, {1, 256, 1}, {255, 256, 1}, {256, 256, 1}, {257, 256, 2}, {600, 256, 3},
		{1 << 40, 1 << 20, 1 << 20}, {10, 0, 0}, {^uint64(0), 1, ^uint64(0)},
	} {
		if got := ChunkCount(tt.size, tt.chunk); got != tt.want {
			t.Errorf("ChunkCount(%d, %d) = %d, want %d", tt.size, tt.chunk, got, tt.want)
		}
	}
}

// TestBuildChunkTableGolden pins the digests, computed independently
// (Python hashlib over bytes(i % 251 for i in range(600))).
func TestBuildChunkTableGolden(t *testing.T) {
	ct := testTable(t)
	want := []string{
		"5bc31b283cef0072274e97d74916552954c935794536cab632641e5ea071379d",
		"e0e30ecceaaf032ca8e25ea5fdce903102fd4caa94d7c904328384b087bdfb89",
		"580326b8290ddeb47a9bbc8d1225fe7db2a1f8acd55ce7fda180b5ff304eed4e",
	}
	if got := DigestHex(ct.Image); got != "db4f2ac25d140369324dbed60d7b8e314fdf1252c171f8513fb7dbf5cc92e88d" {
		t.Errorf("image digest %s", got)
	}
	if ct.ImageSize != 600 || ct.ChunkSize != 256 || ct.V != Version || len(ct.Hashes) != len(want) {
		t.Fatalf("table %+v", ct)
	}
	for i, h := range ct.Hashes {
		if hex.EncodeToString(h[:]) != want[i] {
			t.Errorf("hash %d = %x, want %s", i, h, want[i])
		}
	}
	d, err := ct.Digest()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Encode(ct)
	if d != sha256.Sum256(b) {
		t.Error("Digest is not the SHA-256 of the encoding")
	}
}

func TestBuildChunkTable(t *testing.T) {
	for _, n := range []int{1, 255, 256, 257, 512, 1000} {
		img := testImage(n)
		// A reader returning one byte at a time must give the same table.
		ct, err := BuildChunkTable(iotest.OneByteReader(bytes.NewReader(img)), 256)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if err := ct.Validate(); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if ct.ImageSize != uint64(n) || ct.NumChunks() != uint32(ChunkCount(uint64(n), 256)) {
			t.Fatalf("%d bytes: size %d, %d chunks", n, ct.ImageSize, ct.NumChunks())
		}
		if sum := sha256.Sum256(img); !bytes.Equal(ct.Image, sum[:]) {
			t.Errorf("%d bytes: image digest", n)
		}
		for i := range ct.NumChunks() {
			data := img[i*256 : min(int(i+1)*256, n)]
			if ct.ChunkLen(i) != len(data) {
				t.Errorf("%d bytes: ChunkLen(%d) = %d, want %d", n, i, ct.ChunkLen(i), len(data))
			}
			if err := ct.VerifyChunk(i, data); err != nil {
				t.Errorf("%d bytes: chunk %d: %v", n, i, err)
			}
		}
	}
}

func TestBuildChunkTableRejects(t *testing.T) {
	if _, err := BuildChunkTable(bytes.NewReader(nil), 256); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty image: %v", err)
	}
	if _, err := BuildChunkTable(bytes.NewReader([]byte{1}), 100); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "chunk size 100") {
		t.Errorf("chunk size 100: %v", err)
	}
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(testImage(300)), iotest.ErrReader(boom))
	if _, err := BuildChunkTable(r, 256); !errors.Is(err, boom) || !strings.Contains(err.Error(), "chunk 1") {
		t.Errorf("read error: %v", err)
	}
	// One byte over MaxChunks chunks: refused while streaming, without
	// reading the rest.
	over := io.LimitReader(zeroReader{}, MaxChunks*256+1)
	if _, err := BuildChunkTable(over, 256); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over MaxChunks: %v", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestVerifyChunk(t *testing.T) {
	ct := testTable(t)
	img := testImage(600)
	bad := bytes.Clone(img[256:512])
	bad[7] ^= 1
	for _, tt := range []struct {
		name  string
		index uint32
		data  []byte
		want  error
		text  string
	}{
		{"good last chunk", 2, img[512:], nil, ""},
		{"flipped bit", 1, bad, ErrDigestMismatch, "chunk 1 of image db4f2ac2"},
		{"other chunk's data", 0, img[256:512], ErrDigestMismatch, "chunk 0"},
		{"short chunk", 0, img[:255], ErrInvalid, "chunk 0 is 255 bytes, want 256"},
		{"long last chunk", 2, img[344:], ErrInvalid, "chunk 2 is 256 bytes, want 88"},
		{"index beyond image", 3, img[:88], ErrInvalid, "index 3 beyond the image's 3 chunks"},
		{"huge index", ^uint32(0), img[:88], ErrInvalid, "beyond"},
	} {
		err := ct.VerifyChunk(tt.index, tt.data)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("%s: %v, want %v saying %q", tt.name, err, tt.want, tt.text)
		}
	}
	if ct.ChunkLen(3) != 0 || (&ChunkTable{}).ChunkLen(0) != 0 {
		t.Error("ChunkLen beyond the image is not 0")
	}
}

func TestChunkTableDigestInvalid(t *testing.T) {
	ct := testTable(t)
	ct.Hashes = ct.Hashes[:2]
	if _, err := ct.Digest(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Digest of an invalid table: %v", err)
	}
}

// TestVerifyParity: a coded table accepts each parity chunk whose hash it
// commits and refuses wrong block or parity indices, wrong lengths and
// forged data; a table that is not coded refuses every parity chunk.
func TestVerifyParity(t *testing.T) {
	ct := testTable(t) // 600 bytes in 256-byte chunks: 3 chunks
	plain := *ct
	ct.Block, ct.ParityPerBlock = 2, 2 // blocks [0,2) and [2,3)
	good := func(b, j uint32) []byte { return bytes.Repeat([]byte{byte(16*b + j)}, 256) }
	for b := range uint32(2) {
		for j := range uint32(2) {
			sum := sha256.Sum256(good(b, j))
			ct.Parity = append(ct.Parity, sum)
		}
	}
	if err := ct.Validate(); err != nil {
		t.Fatal(err)
	}
	if ct.NumBlocks() != 2 {
		t.Fatalf("%d blocks, want 2", ct.NumBlocks())
	}
	for b, want := range [][2]uint32{{0, 2}, {2, 1}, {0, 0}} {
		if f, c := ct.BlockChunks(uint32(b)); f != want[0] || c != want[1] {
			t.Errorf("block %d: chunks [%d,+%d), want [%d,+%d)", b, f, c, want[0], want[1])
		}
	}
	for _, tc := range []struct {
		name         string
		table        *ChunkTable
		block, index uint32
		data         []byte
		want         error
		text         string
	}{
		{"good", ct, 1, 1, good(1, 1), nil, ""},
		{"block beyond the image", ct, 2, 0, good(1, 0), ErrInvalid, "block 2 beyond the image's 2 blocks"},
		{"index beyond the parity", ct, 0, 2, good(0, 1), ErrInvalid, "parity index 2 beyond the 2 per block"},
		{"short", ct, 0, 0, good(0, 0)[:255], ErrInvalid, "is 255 bytes, want 256"},
		{"another block's parity", ct, 0, 1, good(1, 1), ErrDigestMismatch, "parity chunk 1 of block 0"},
		{"forged", ct, 1, 0, append(good(1, 0)[:255], 0xff), ErrDigestMismatch, "parity chunk 0 of block 1"},
		{"table not coded", &plain, 0, 0, good(0, 0), ErrInvalid, "commits no parity"},
	} {
		err := tc.table.VerifyParity(tc.block, tc.index, tc.data)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.want, tc.text)
		}
	}
}
