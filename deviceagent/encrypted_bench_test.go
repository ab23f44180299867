package deviceagent

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas/suit"
)

// BenchmarkEncryptedInstall8MiB times what an encrypted image costs the
// device from verified ciphertext chunks to a committed candidate:
// decryptSink decrypting 16 KiB chunks where they land in a candidate
// slot (memory flash), then bootctl's commit hashing the slot against the
// signed plaintext digest. In the same iteration, alternately, it times
// the raw work (AES-CTR decryption of the 8 MiB plus SHA-256 of the
// plaintext, crypto/cipher and crypto/sha256 on a buffer), SHA-256 alone
// (the raw work of a plain install) and the same install of the plain
// image (slotSink, no decryption). It reports the fastest iteration of
// each (on a shared machine, the least disturbed) and the ratios: x-raw
// (encrypted install / raw crypto, aim 1.2), plain-x-raw (plain install
// / raw crypto), plain-x-sha (plain install / SHA-256 alone: what the
// simulated flash's erase, program and read-back add) and x-plain
// (encrypted install / plain install: what decryption adds).
//
//	go test -run '^$' -bench EncryptedInstall8MiB -benchtime 20x ./deviceagent/
func BenchmarkEncryptedInstall8MiB(b *testing.B) {
	const size, chunk = 8 << 20, 16 << 10
	l := bootctl.DefaultLayout(1, 2, size/4096+1)
	g := bootctl.Geometry{SectorSize: 4096, Sectors: l.Sectors(), WriteAlign: 16}
	f, err := bootctl.NewMemFlash(g)
	if err != nil {
		b.Fatal(err)
	}
	d, err := bootctl.Open(f, l, bootctl.RootOfTrust{DeviceKey: deviceKey})
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range plain {
		plain[i] = byte(rng.Uint32())
	}
	cc, err := suit.NewContentCipher(suit.A128CTR, nil)
	if err != nil {
		b.Fatal(err)
	}
	ct, err := cc.Seal(plain)
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(plain)
	ctx := context.Background()
	install := func(encrypted bool) time.Duration {
		cand, err := d.OpenCandidate(ctx, 0, size)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		sink := slotSink{cand, f}
		src := plain
		w := func(p []byte, off int64) (int, error) { return sink.WriteAt(p, off) }
		if encrypted {
			ds := newDecryptSink(sink, cc)
			src, w = ct, ds.WriteAt
		}
		for off := 0; off < size; off += chunk {
			if _, err := w(src[off:off+chunk], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if err := cand.Commit(ctx, bootctl.CandidateInfo{Version: 2, Digest: sum}); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	dst := make([]byte, size)
	inf := time.Duration(1 << 62)
	rawMin, shaMin, encMin, plainMin := inf, inf, inf, inf
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := cc.XORAt(dst, ct, 0); err != nil {
			b.Fatal(err)
		}
		sha256.Sum256(dst)
		rawMin = min(rawMin, time.Since(t0))
		t0 = time.Now()
		sha256.Sum256(plain)
		shaMin = min(shaMin, time.Since(t0))
		encMin = min(encMin, install(true))
		plainMin = min(plainMin, install(false))
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(rawMin), "raw-min-ms")
	b.ReportMetric(ms(shaMin), "sha-min-ms")
	b.ReportMetric(ms(encMin), "encrypted-min-ms")
	b.ReportMetric(ms(plainMin), "plain-min-ms")
	b.ReportMetric(float64(encMin)/float64(rawMin), "x-raw")
	b.ReportMetric(float64(plainMin)/float64(rawMin), "plain-x-raw")
	b.ReportMetric(float64(plainMin)/float64(shaMin), "plain-x-sha")
	b.ReportMetric(float64(encMin)/float64(plainMin), "x-plain")
}
