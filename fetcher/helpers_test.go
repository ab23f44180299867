package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// fixture is one test image with its table and description.
type fixture struct {
	img   []byte
	table *schemas.ChunkTable
	tb    []byte // encoded table
	im    Image
}

func newFixture(t testing.TB, size int, chunk uint32, seed uint64) fixture {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	tab, err := schemas.BuildChunkTable(bytes.NewReader(img), chunk)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := schemas.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	td := sha256.Sum256(tb)
	d := sha256.Sum256(img)
	return fixture{img: img, table: tab, tb: tb, im: Image{Digest: d[:], Size: uint64(size), ChunkSize: chunk, TableDigest: td[:]}}
}

// writeFiles writes the image and its table into dir, named by digest.
func (fx fixture) writeFiles(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, fx.im.Hex())
	if err := os.WriteFile(p, fx.img, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+TableSuffix, fx.tb, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// memSink is a flash-like sink: it refuses to write a byte twice (like
// NOR programming over programmed bytes), reads unwritten bytes as 0xFF,
// and counts writes.
type memSink struct {
	mu      sync.Mutex
	data    []byte
	written []bool
	writes  int
	syncs   int
	failAt  int // fail the n-th write (1-based); 0 = never
}

func newMemSink(size int) *memSink {
	s := &memSink{data: bytes.Repeat([]byte{0xff}, size), written: make([]bool, size)}
	return s
}

func (s *memSink) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.failAt > 0 && s.writes == s.failAt {
		return 0, fmt.Errorf("injected flash failure")
	}
	if off < 0 || int(off)+len(p) > len(s.data) {
		return 0, fmt.Errorf("write [%d,+%d) beyond %d", off, len(p), len(s.data))
	}
	for i := range p {
		if s.written[int(off)+i] {
			return 0, fmt.Errorf("byte %d programmed twice", int(off)+i)
		}
	}
	copy(s.data[off:], p)
	for i := range p {
		s.written[int(off)+i] = true
	}
	return len(p), nil
}

func (s *memSink) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(off) >= len(s.data) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *memSink) Sync() error {
	s.mu.Lock()
	s.syncs++
	s.mu.Unlock()
	return nil
}

// rangeServer serves an image and its table over HTTP with range support,
// counts how often each chunk was served, and injects faults.
type rangeServer struct {
	*httptest.Server
	fx fixture

	mu     sync.Mutex
	served map[int]int
	gets   int
	// failAfter makes every GET of the image after the n-th fail with 503
	// (0 = never).
	failAfter int
	// corrupt flips a byte of chunk i on its n-th serving.
	corrupt func(i, n int) bool
	// badTable serves these bytes as the table.
	badTable []byte
}

func newRangeServer(t testing.TB, fx fixture) *rangeServer {
	rs := &rangeServer{fx: fx, served: map[int]int{}}
	rs.Server = httptest.NewServer(http.HandlerFunc(rs.serve))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *rangeServer) URL() string { return rs.Server.URL + "/fw.bin" }

func (rs *rangeServer) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/fw.bin" + TableSuffix:
		tb := rs.fx.tb
		if rs.badTable != nil {
			tb = rs.badTable
		}
		w.Write(tb)
		return
	case "/fw.bin":
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", strconv.Itoa(len(rs.fx.img)))
		return
	}
	rs.mu.Lock()
	rs.gets++
	fail := rs.failAfter > 0 && rs.gets > rs.failAfter
	rs.mu.Unlock()
	if fail {
		http.Error(w, "injected outage", http.StatusServiceUnavailable)
		return
	}
	var a, b int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err != nil {
		http.Error(w, "want a range", http.StatusBadRequest)
		return
	}
	cs := int(rs.fx.im.ChunkSize)
	body := append([]byte(nil), rs.fx.img[a:b+1]...)
	rs.mu.Lock()
	for i := a / cs; i <= b/cs; i++ {
		n := rs.served[i]
		rs.served[i]++
		if rs.corrupt != nil && rs.corrupt(i, n) {
			body[i*cs-a] ^= 0xa5
		}
	}
	rs.mu.Unlock()
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(rs.fx.img)))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(body)
}

func (rs *rangeServer) servedCounts() map[int]int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := map[int]int{}
	for k, v := range rs.served {
		out[k] = v
	}
	return out
}

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testLogger discards logs unless -v.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	return slog.New(slog.DiscardHandler)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// fastRetry keeps retries quick in tests.
var fastRetry = RetryPolicy{Base: time.Millisecond, Cap: 5 * time.Millisecond, MaxRetries: 2}

// faultySource wraps a source and fails its Fetch after n delivered chunks
// (counted across calls), and its Probe when probeErr is set.
type faultySource struct {
	Source
	failAfter int
	delivered int
	cancel    context.CancelFunc // when set, called instead of failing
}

func (f *faultySource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	errStop := fmt.Errorf("injected source failure after %d chunks", f.failAfter)
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	err := f.Source.Fetch(cctx, im, want, func(i int, data []byte) error {
		if f.delivered >= f.failAfter {
			stop()
			if f.cancel != nil {
				f.cancel()
			}
			return errStop
		}
		if err := deliver(i, data); err != nil {
			return err
		}
		f.delivered++
		return nil
	})
	if f.delivered >= f.failAfter {
		return errStop
	}
	return err
}

func checkSink(t *testing.T, s *memSink, fx fixture) {
	t.Helper()
	if !bytes.Equal(s.data, fx.img) {
		t.Fatal("sink content differs from the image")
	}
}

// heldChunks returns the chunks fully written to the sink.
func (s *memSink) heldChunks(fx fixture) map[int]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]bool{}
	for i := 0; i < fx.im.Chunks(); i++ {
		off := int(fx.im.Offset(i))
		if !slices.Contains(s.written[off:off+fx.im.ChunkLen(i)], false) {
			out[i] = true
		}
	}
	return out
}

// checkedWrite is a Deliver that checks chunk i against table t and
// writes it to s at its offset in im.
func checkedWrite(t *schemas.ChunkTable, im Image, s *memSink) Deliver {
	return func(i int, b []byte) error {
		if err := t.VerifyChunk(uint32(i), b); err != nil {
			return err
		}
		_, err := s.WriteAt(b, im.Offset(i))
		return err
	}
}
