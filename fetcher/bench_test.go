package fetcher

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// writerAtOnly hides a file's Sync and ReadAt, like a flash slot writer
// that programs without buffering.
type writerAtOnly struct{ f *os.File }

func (w writerAtOnly) WriteAt(p []byte, off int64) (int, error) { return w.f.WriteAt(p, off) }
func (w writerAtOnly) ReadAt(p []byte, off int64) (int, error)  { return w.f.ReadAt(p, off) }

// BenchmarkFileFetch compares, in the same run, fetching an image from the
// file source (chunk hashing against the table, running image digest,
// progress persisted every 64 chunks) with the raw cost of copying the same
// bytes file to file while computing their SHA-256.
func BenchmarkFileFetch(b *testing.B) {
	const size = 8 << 20
	const chunk = 16 << 10
	fx := newFixture(b, size, chunk, 30)
	dir := b.TempDir()
	src := fx.writeFiles(b, dir)
	dst := filepath.Join(dir, "slot")
	b.Run("raw-copy-sha256", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, chunk)
		for b.Loop() {
			in, _ := os.Open(src)
			out, _ := os.Create(dst)
			h := sha256.New()
			if _, err := io.CopyBuffer(io.MultiWriter(out, h), in, buf); err != nil {
				b.Fatal(err)
			}
			h.Sum(nil)
			in.Close()
			out.Close()
		}
	})
	for _, skip := range []bool{false, true} {
		name := "fetcher-file-source"
		if skip {
			name += "-chunks-only"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				state := b.TempDir()
				out, _ := os.Create(dst)
				f, err := New(Config{Sources: []Source{NewFileSource(src, 0)}, StateDir: state, Logger: testLogger(b), SkipImageDigest: skip})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.Fetch(context.Background(), fx.im, Plan{}, writerAtOnly{out}); err != nil {
					b.Fatal(err)
				}
				out.Close()
			}
		})
	}
}
