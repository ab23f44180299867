package publisher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
)

// BenchmarkDeltaCheck measures what DeleteImage reads to find the deltas
// based on an image, with 1000 stored image records and one delta: the
// delta index (deltasOf: one filtered key listing, one record) against
// the full scan it replaced (Images: every record), its peer in the same
// run. The records are written directly (no image bytes).
func BenchmarkDeltaCheck(b *testing.B) {
	const n = 1000
	e := newEnv(b)
	p, _ := e.start(nil)
	ctx := context.Background()
	digest := func(i int) string {
		s := sha256.Sum256(fmt.Appendf(nil, "image %d", i))
		return hex.EncodeToString(s[:])
	}
	for i := range n {
		img := Image{Digest: digest(i), Size: 1, ChunkSize: 1024, Chunks: 1, Name: "fw"}
		if i == n-1 {
			img.DeltaFrom, img.DeltaTo = digest(0), digest(1)
			if err := p.indexDelta(ctx, img); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := createJSON(ctx, p.st.imageMeta, "image", img.Digest, img); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("index", func(b *testing.B) {
		for b.Loop() {
			if d, err := p.deltasOf(ctx, digest(0)); err != nil || len(d) != 1 {
				b.Fatal(len(d), err)
			}
		}
	})
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			if imgs, err := p.Images(ctx); err != nil || len(imgs) != n {
				b.Fatal(len(imgs), err)
			}
		}
	})
}
