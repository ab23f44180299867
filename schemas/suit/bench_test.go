package suit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"math/big"
	"sort"
	"testing"
	"time"
)

// BenchmarkVerify compares decode + verify of a typical envelope (made by
// Create: ES256, two URIs, use-before) with a bare crypto/ecdsa verification
// of a SHA-256 digest by the same key, in the same run. See
// docs/BENCHMARKS.md ("suit").
func BenchmarkVerify(b *testing.B) {
	key, _ := GenerateKey("es256", nil)
	s, _ := NewKeySigner(key, ES256)
	env, err := Create(context.Background(), CreateOptions{
		Image: bytes.NewReader(testImage(1 << 20)), VendorID: testVendor, ClassID: testClass,
		Seq: 9, URIs: []string{"https://cdn.example/fw.bin", "https://backup.example/fw.bin"},
		UseBefore: time.Unix(2e9, 0),
	}, s)
	if err != nil {
		b.Fatal(err)
	}
	anchors := TrustAnchors{key.Public()}
	b.Run("suit-decode-verify", func(b *testing.B) {
		b.SetBytes(int64(len(env)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Verify(env, anchors); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare-ecdsa-verify", func(b *testing.B) {
		pub := key.Public().(*ecdsa.PublicKey)
		msg := []byte("the same amount of work: one SHA-256 and one P-256 verification")
		h := sha256.Sum256(msg)
		r, ss, err := ecdsa.Sign(nil, key.(*ecdsa.PrivateKey), h[:])
		if err != nil {
			b.Fatal(err)
		}
		rb, sb := new(big.Int).Set(r), new(big.Int).Set(ss)
		b.ReportAllocs()
		for b.Loop() {
			h := sha256.Sum256(msg)
			if !ecdsa.Verify(pub, h[:], rb, sb) {
				b.Fatal("verify")
			}
		}
	})
	// Interleaved: each iteration times one decode+verify and one bare
	// verify back to back, so machine load affects both alike; "x-bare" is
	// the median of the per-iteration ratios (robust to preemption spikes),
	// the figure in docs/BENCHMARKS.md.
	b.Run("ratio", func(b *testing.B) {
		pub := key.Public().(*ecdsa.PublicKey)
		msg := []byte("the same amount of work: one SHA-256 and one P-256 verification")
		h := sha256.Sum256(msg)
		r, ss, _ := ecdsa.Sign(nil, key.(*ecdsa.PrivateKey), h[:])
		var ratios, suitT, bareT []float64
		suitOnce := func() time.Duration {
			t0 := time.Now()
			if _, err := Verify(env, anchors); err != nil {
				b.Fatal(err)
			}
			return time.Since(t0)
		}
		bareOnce := func() time.Duration {
			t0 := time.Now()
			h := sha256.Sum256(msg)
			if !ecdsa.Verify(pub, h[:], r, ss) {
				b.Fatal("verify")
			}
			return time.Since(t0)
		}
		odd := false
		for b.Loop() {
			// Alternate which goes first, so neither always runs on the
			// caches the other warmed.
			var st, bt time.Duration
			if odd = !odd; odd {
				st, bt = suitOnce(), bareOnce()
			} else {
				bt, st = bareOnce(), suitOnce()
			}
			ratios = append(ratios, float64(st)/float64(bt))
			suitT = append(suitT, float64(st))
			bareT = append(bareT, float64(bt))
		}
		b.ReportMetric(median(ratios), "x-bare")
		b.ReportMetric(median(suitT)/1e3, "µs-suit")
		b.ReportMetric(median(bareT)/1e3, "µs-bare")
	})
	b.Run("vector-exp1-ESP256", func(b *testing.B) {
		v := readVector(b, "suit_manifest_exp1.suit")
		a := vectorAnchors(b)
		for b.Loop() {
			if _, err := Verify(v, a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
