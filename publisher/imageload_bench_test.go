package publisher

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// BenchmarkImageRangeLoad measures the publisher's resident memory under
// concurrent HTTP downloads of one 64 MiB image (16 KiB chunks): each
// iteration sends conc range requests at once, each for 1 MiB at a
// random offset in the image's last 8 MiB, and reads the bodies to the
// end. It reports the peak RSS growth of the process over its RSS before
// the first iteration (VmHWM, reset through /proc/self/clear_refs), in
// MiB. The image store is the machine's NATS (testutil.MachineNATSURL)
// when it answers, so that the NATS server's own memory is not counted;
// otherwise an embedded server (then it is). The HTTP clients run in the
// same process; their share is a few MiB.
//
//	go test -run '^$' -bench BenchmarkImageRangeLoad -benchtime 3x ./publisher/
//
// The figures are in docs/RELIABILITY.md.
func BenchmarkImageRangeLoad(b *testing.B) {
	for _, conc := range []int{16, 200} {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) { benchImageLoad(b, conc, 64<<20, 1<<20, 8<<20) })
	}
}

func benchImageLoad(b *testing.B, conc, size, span, tail int) {
	ctx := context.Background()
	js, where := benchJetStream(b)
	ns := "bench" + strings.ReplaceAll(randomID("")[1:], "-", "")
	p, err := New(ctx, Config{
		JetStream: js, Transport: testutil.NewMemHub().Conn(), Topics: schemas.MustTopics(ns), Namespace: ns,
		Logger: testLogger(), ChunkSize: 16 << 10, BootstrapKey: testAdminKey, StartWindow: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	who, err := p.Authenticate(ctx, testAdminKey)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	img, _, err := p.UploadImage(ctx, who, "load", bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	data = nil
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, DialContext: (&net.Dialer{}).DialContext}}
	defer client.CloseIdleConnections()

	runtime.GC()
	debug.FreeOSMemory()
	base := benchResetPeakRSS(b)
	failed := 0
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		errs := make(chan error, conc)
		for i := range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				off := size - tail + (i*7919*4096)%(tail-span)
				req, _ := http.NewRequest("GET", srv.URL+"/images/"+img.Digest, nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+span-1))
				req.Header.Set("Authorization", "Bearer "+testAdminKey)
				res, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				defer res.Body.Close()
				body := io.LimitReader(res.Body, int64(span))
				if res.StatusCode != http.StatusPartialContent {
					body = io.LimitReader(res.Body, 200)
				}
				var msg bytes.Buffer
				n, err := io.Copy(io.MultiWriter(io.Discard, &cappedWriter{&msg, 200}), body)
				if err != nil || res.StatusCode != http.StatusPartialContent || n != int64(span) {
					errs <- fmt.Errorf("range at %d: %d, %d bytes, %v: %.200q", off, res.StatusCode, n, err, msg.Bytes())
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if failed++; failed == 1 {
				b.Logf("first failed request: %v", err)
			}
		}
	}
	b.StopTimer()
	peak := benchPeakRSS(b)
	b.SetBytes(int64(conc * span))
	b.ReportMetric(float64(peak-base)/(1<<20), "peak-RSS-growth-MiB")
	// Failed requests are counted, not fatal, so that the same benchmark
	// measures code that fails under this load (the tests check that
	// downloads succeed).
	b.ReportMetric(float64(failed)/float64(b.N), "failed-requests/op")
	b.Logf("%s: %d x %d KiB ranges of a %d MiB image: RSS %d MiB before, peak %d MiB",
		where, conc, span>>10, size>>20, base>>20, peak>>20)
}

// cappedWriter keeps the first max bytes written to it.
type cappedWriter struct {
	buf *bytes.Buffer
	max int
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// benchJetStream connects to the machine's NATS, or starts an embedded
// one, and removes the benchmark's streams at cleanup.
func benchJetStream(b *testing.B) (jetstream.JetStream, string) {
	nc, err := nats.Connect(testutil.MachineNATSURL, nats.Timeout(time.Second))
	if err != nil {
		js, _ := startJetStream(b)
		return js, "embedded NATS (its memory counted)"
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var names []string
		for n := range js.StreamNames(ctx).Name() {
			if strings.Contains(n, "bench") {
				names = append(names, n)
			}
		}
		for _, n := range names {
			js.DeleteStream(ctx, n)
		}
		nc.Close()
	})
	return js, "machine NATS " + testutil.MachineNATSURL
}

// benchResetPeakRSS resets the process's peak RSS to its RSS and returns it.
func benchResetPeakRSS(b *testing.B) int64 {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset peak RSS: %v", err)
	}
	return benchProcStatus(b, "VmRSS")
}

func benchPeakRSS(b *testing.B) int64 { return benchProcStatus(b, "VmHWM") }

// benchProcStatus reads a kB field of /proc/self/status, in bytes.
func benchProcStatus(b *testing.B, field string) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		var v int64
		if _, err := fmt.Sscanf(l, field+": %d kB", &v); err == nil {
			return v << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}
