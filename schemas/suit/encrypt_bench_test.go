package suit

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"io"
	"testing"
	"time"
)

// benchTarget serves the ciphertext as component 1 and discards what is
// written to component 0 (a flash write is the device's cost, not ours).
type benchTarget struct {
	fakeTarget
	ct []byte
}

func (b *benchTarget) Open(_ context.Context, idx int) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.ct)), nil
}

func (b *benchTarget) Write(context.Context, int, *Params) (ComponentWriter, error) {
	return discardWriter{}, nil
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) Commit() error               { return nil }
func (discardWriter) Abort() error                { return nil }

// BenchmarkDecryptCTR8MiB compares decrypting an 8 MiB A128CTR payload
// and checking its SHA-256 through the device's path (processor: the
// draft's copy-and-decrypt from a ciphertext component, key unwrapped with
// A128KW, plaintext digest checked before commit; reader: the streaming
// decrypter alone) with raw crypto/cipher CTR plus crypto/sha256 over the
// same bytes, in the same run. "ratio" times one processor run and one raw
// run back to back per iteration and reports the median of the ratios
// (x-raw). See docs/BENCHMARKS.md ("Firmware encryption").
func BenchmarkDecryptCTR8MiB(b *testing.B) {
	const size = 8 << 20
	pt := testImage(size)
	c, err := NewContentCipher(A128CTR, newDetRand("bench"))
	if err != nil {
		b.Fatal(err)
	}
	ct, _ := c.Seal(pt)
	sum := sha256.Sum256(pt)
	kek := KEK{KeyID: []byte("dev"), Key: bytes.Repeat([]byte{1}, 16)}
	r, _ := c.WrapFor(kek, nil)
	install := Sequence{
		setIndex(0),
		override(&Params{SourceComponent: u64(1), ImageDigest: &Digest{Alg: AlgSHA256, Bytes: sum[:]},
			ImageSize: u64(size), EncryptionInfo: c.Info(*r)}),
		cmd(DirCopy),
	}
	m := signedManifest(b, 1, 2, nil, map[int64]Sequence{keyInstall: install}, nil)
	p := Processor{Target: &benchTarget{fakeTarget: *newFake(), ct: ct}, Keys: kek}
	processor := func() {
		if _, err := p.Update(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
	reader := func() {
		d, _ := c.NewReader(bytes.NewReader(ct), 0)
		h := sha256.New()
		if _, err := io.CopyBuffer(h, d, make([]byte, 32<<10)); err != nil {
			b.Fatal(err)
		}
		if !bytes.Equal(h.Sum(nil), sum[:]) {
			b.Fatal("digest")
		}
	}
	blk, _ := aes.NewCipher(c.Key())
	buf := make([]byte, 32<<10)
	raw := func() {
		s := cipher.NewCTR(blk, c.iv)
		h := sha256.New()
		for off := 0; off < len(ct); off += len(buf) {
			n := copy(buf, ct[off:])
			s.XORKeyStream(buf[:n], buf[:n])
			h.Write(buf[:n])
		}
		if !bytes.Equal(h.Sum(nil), sum[:]) {
			b.Fatal("digest")
		}
	}
	for _, sub := range []struct {
		name string
		fn   func()
	}{{"processor", processor}, {"reader", reader}, {"raw", raw}} {
		b.Run(sub.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				sub.fn()
			}
		})
	}
	b.Run("ratio", func(b *testing.B) {
		var ratios, pT, rT []float64
		timed := func(fn func()) time.Duration { t0 := time.Now(); fn(); return time.Since(t0) }
		odd := false
		for b.Loop() {
			var pt, rt time.Duration
			if odd = !odd; odd {
				pt, rt = timed(processor), timed(raw)
			} else {
				rt, pt = timed(raw), timed(processor)
			}
			ratios = append(ratios, float64(pt)/float64(rt))
			pT, rT = append(pT, float64(pt)), append(rT, float64(rt))
		}
		b.ReportMetric(median(ratios), "x-raw")
		b.ReportMetric(median(pT)/1e6, "ms-processor")
		b.ReportMetric(median(rT)/1e6, "ms-raw")
	})
}
