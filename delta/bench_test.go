package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/gabstv/go-bsdiff/pkg/bsdiff"
)

// copyImage is the peer of Apply: a full image already on the device
// (staged) copied into the slot through the same 32 KiB buffer, hashed
// on the way, as Apply writes its output. It is what applying costs when
// the whole image was sent.
func copyImage(src io.ReaderAt, dst io.WriterAt, n int64) ([32]byte, error) {
	buf := make([]byte, maxIO)
	h := sha256.New()
	for off := int64(0); off < n; {
		b := buf[:min(int64(len(buf)), n-off)]
		if _, err := src.ReadAt(b, off); err != nil {
			return [32]byte{}, err
		}
		h.Write(b)
		if _, err := dst.WriteAt(b, off); err != nil {
			return [32]byte{}, err
		}
		off += int64(len(b))
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

// benchApply runs Apply of delta d (source src, target tgt) and, as its
// peer, copyImage of the full target: sub-benchmarks "delta" and
// "full-copy". B/op is every byte either allocated in the iteration: an
// upper bound of its peak heap growth. Both report the bytes a device
// receives ("sent-B") and the image size ("image-B").
func benchApply(b *testing.B, src, tgt, d []byte) {
	b.Run("delta", func(b *testing.B) {
		p := mustOpen(b, d)
		dst := make(sliceTarget, len(tgt))
		b.ReportAllocs()
		b.SetBytes(int64(len(tgt)))
		for b.Loop() {
			if _, err := p.Apply(context.Background(), bytes.NewReader(src), dst); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(d)), "sent-B")
		b.ReportMetric(float64(len(tgt)), "image-B")
	})
	b.Run("full-copy", func(b *testing.B) {
		dst := make(sliceTarget, len(tgt))
		b.ReportAllocs()
		b.SetBytes(int64(len(tgt)))
		for b.Loop() {
			if _, err := copyImage(bytes.NewReader(tgt), dst, int64(len(tgt))); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(tgt)), "sent-B")
		b.ReportMetric(float64(len(tgt)), "image-B")
	})
}

// BenchmarkApplySynthetic: Apply of an 8 MiB and a 64 MiB image made
// from a random source by twelve edits (bigPair), against a full copy.
func BenchmarkApplySynthetic(b *testing.B) {
	for _, n := range []int{8 << 20, 64 << 20} {
		src, tgt, d := bigDelta(b, n)
		b.Run(fmt.Sprintf("%dMiB", n>>20), func(b *testing.B) { benchApply(b, src, tgt, d) })
	}
}

// BenchmarkRealPairs: Make and Apply for real binary pairs, built by
// scripts/delta-pairs.sh into the directory FIRMCAST_DELTA_PAIRS names
// (commit-old/commit-new: firmcast-agent at two consecutive commits;
// edit-old/edit-new: firmcast-agent with and without one small source
// change). "make" reports the delta's size against the full image; its
// time is the publisher's (bsdiff plus framing); "bsdiff40" is the size
// of go-bsdiff's own patch, for reference. Skipped when the variable is
// not set.
func BenchmarkRealPairs(b *testing.B) {
	dir := os.Getenv("FIRMCAST_DELTA_PAIRS")
	if dir == "" {
		b.Skip("FIRMCAST_DELTA_PAIRS is not set: build the pairs with scripts/delta-pairs.sh")
	}
	for _, pair := range []string{"commit", "edit"} {
		src, err := os.ReadFile(filepath.Join(dir, pair+"-old"))
		if err != nil {
			b.Fatal(err)
		}
		tgt, err := os.ReadFile(filepath.Join(dir, pair+"-new"))
		if err != nil {
			b.Fatal(err)
		}
		var d []byte
		b.Run(pair+"/make", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var buf bytes.Buffer
				if _, err := Make(context.Background(), &buf, src, tgt); err != nil {
					b.Fatal(err)
				}
				d = buf.Bytes()
			}
			b.ReportMetric(float64(len(tgt)), "image-B")
			b.ReportMetric(float64(len(d)), "delta-B")
			b.ReportMetric(100*float64(len(d))/float64(len(tgt)), "delta-%")
		})
		b.Run(pair+"/bsdiff40", func(b *testing.B) {
			// The reference: go-bsdiff's own BSDIFF40 patch (three bzip2
			// streams, not appliable in bounded memory) for the same pair.
			var p []byte
			for b.Loop() {
				if p, err = bsdiff.Bytes(src, tgt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(tgt)), "image-B")
			b.ReportMetric(float64(len(p)), "delta-B")
			b.ReportMetric(100*float64(len(p))/float64(len(tgt)), "delta-%")
		})
		if d == nil {
			var buf bytes.Buffer
			if _, err := Make(context.Background(), &buf, src, tgt); err != nil {
				b.Fatal(err)
			}
			d = buf.Bytes()
		}
		b.Run(pair+"/apply", func(b *testing.B) { benchApply(b, src, tgt, d) })
	}
}
