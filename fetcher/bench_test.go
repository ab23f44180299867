package fetcher

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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

// BenchmarkFileFetchPaired runs, in each iteration, the raw copy + SHA-256
// and then the fetcher on the same 8 MiB, and reports the best time of
// each and their ratio, so that load from other processes affects both
// sides alike. Variants: the default configuration (whole-image digest,
// progress persisted with fsync every 256 chunks), the same persisted only
// at the start and end, and chunk checks only (SkipImageDigest) persisted
// at the start and end.
func BenchmarkFileFetchPaired(b *testing.B) {
	const size = 8 << 20
	const chunk = 16 << 10
	fx := newFixture(b, size, chunk, 31)
	dir := b.TempDir()
	src := fx.writeFiles(b, dir)
	dst := filepath.Join(dir, "slot")
	raw := func() (time.Duration, time.Duration) {
		start, cpu0 := time.Now(), cpuTime()
		buf := make([]byte, chunk)
		in, _ := os.Open(src)
		out, _ := os.Create(dst)
		h := sha256.New()
		if _, err := io.CopyBuffer(io.MultiWriter(out, h), in, buf); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
		in.Close()
		out.Close()
		return time.Since(start), cpuTime() - cpu0
	}
	fetch := func(cfg Config) (time.Duration, time.Duration) {
		start, cpu0 := time.Now(), cpuTime()
		out, _ := os.Create(dst)
		cfg.Sources, cfg.StateDir, cfg.Logger = []Source{NewFileSource(src, 0)}, b.TempDir(), testLogger(b)
		f, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Fetch(context.Background(), fx.im, Plan{}, writerAtOnly{out}); err != nil {
			b.Fatal(err)
		}
		out.Close()
		return time.Since(start), cpuTime() - cpu0
	}
	for _, v := range []struct {
		name string
		cfg  Config
	}{
		{"default", Config{}},
		{"digest-persist-at-end", Config{PersistEvery: 1 << 20}},
		{"chunks-only-persist-at-end", Config{SkipImageDigest: true, PersistEvery: 1 << 20}},
	} {
		b.Run(v.name, func(b *testing.B) {
			inf := time.Duration(1 << 62)
			rawWall, rawCPU, fWall, fCPU := inf, inf, inf, inf
			for b.Loop() {
				w, c := raw()
				rawWall, rawCPU = min(rawWall, w), min(rawCPU, c)
				w, c = fetch(v.cfg)
				fWall, fCPU = min(fWall, w), min(fCPU, c)
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(rawWall), "raw-ms")
			b.ReportMetric(ms(fWall), "fetch-ms")
			b.ReportMetric(float64(fWall)/float64(rawWall), "ratio")
			b.ReportMetric(ms(rawCPU), "raw-cpu-ms")
			b.ReportMetric(ms(fCPU), "fetch-cpu-ms")
			b.ReportMetric(float64(fCPU)/float64(rawCPU), "cpu-ratio")
		})
	}
}

// cpuTime returns the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
