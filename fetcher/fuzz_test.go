package fetcher

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeTable feeds arbitrary bytes as a chunk table whose digest the
// "manifest" signs: decoding must never panic, and an accepted table must
// describe the image exactly.
func FuzzDecodeTable(f *testing.F) {
	fx := newFixture(f, 5*testChunk+3, testChunk, 20)
	f.Add(fx.tb)
	f.Add(fx.tb[:len(fx.tb)/2])
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		im := fx.im
		d := sha256.Sum256(b)
		im.TableDigest = d[:] // the fuzzed bytes are "signed"
		tab, err := DecodeTable(im, b)
		if err != nil {
			return
		}
		if !bytes.Equal(tab.Image, im.Digest) || tab.ImageSize != im.Size || tab.ChunkSize != im.ChunkSize || len(tab.Hashes) != im.Chunks() {
			t.Fatalf("accepted a table that does not describe the image: %+v", tab)
		}
	})
}

// FuzzLoadProgress feeds arbitrary bytes as the persisted progress file:
// loading must never panic, and anything it accepts is consistent.
func FuzzLoadProgress(f *testing.F) {
	fx := newFixture(f, 5*testChunk+3, testChunk, 21)
	dir := f.TempDir()
	p := newProgress(dir, fx.im)
	p.done.set(1)
	p.done.set(4)
	if err := p.save(); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(filepath.Join(dir, progressFile))
	f.Add(seed)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, progressFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		p, resumed, err := loadProgress(dir, fx.im)
		if err != nil && resumed {
			t.Fatal("resumed despite an error")
		}
		if p.done.count() > fx.im.Chunks() || p.hashed > fx.im.Chunks() {
			t.Fatalf("inconsistent progress: %d done, %d hashed of %d", p.done.count(), p.hashed, fx.im.Chunks())
		}
	})
}
