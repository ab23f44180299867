package deviceagent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// countingHTTP serves an image and its chunk table with range requests
// and counts how often each chunk was sent.
type countingHTTP struct {
	*httptest.Server
	mu     sync.Mutex
	served map[int]int
}

func newCountingHTTP(t *testing.T, img []byte) *countingHTTP {
	tab, err := schemas.BuildChunkTable(bytesReader(img), testChunk)
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := schemas.Encode(tab)
	c := &countingHTTP{served: map[int]int{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, ".table"):
			w.Write(tb)
			return
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Length", fmt.Sprint(len(img)))
			return
		}
		var a, b int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err != nil {
			http.Error(w, "range required", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(img)))
		w.WriteHeader(http.StatusPartialContent)
		for off := a; off <= b; off += testChunk {
			end := min(off+testChunk, b+1)
			if _, err := w.Write(img[off:end]); err != nil {
				return // the client went away: the rest was not sent
			}
			c.mu.Lock()
			c.served[off/testChunk]++
			c.mu.Unlock()
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *countingHTTP) counts() map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int]int{}
	for k, v := range c.served {
		out[k] = v
	}
	return out
}

// TestResumeHTTP: the cheapest source is an HTTP server; the agent is
// killed at chunk positions and restarted; counted at the server, no chunk
// it held at the kill is sent again.
func TestResumeHTTP(t *testing.T) {
	v2 := testImage(16, 48*testChunk+17)
	n := (len(v2) + testChunk - 1) / testChunk
	for _, cut := range []int{3, 20, 41} {
		t.Run(fmt.Sprintf("chunk-%02d", cut), func(t *testing.T) {
			w := memWorld(t)
			hs := newCountingHTTP(t, v2)
			d := w.newDevice("dev-h", nil)
			var once sync.Once
			d.tune = func(c *Config) {
				c.Prices = map[string]float64{"http": 0, "broker": 1e-6}
				c.OnProgress = func(done, total uint64) {
					if done >= uint64(cut)*testChunk {
						once.Do(func() { d.cancel() })
					}
				}
			}
			d.start()
			w.notice("camp-h", "dev-h", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.URIs = []string{hs.URL + "/fw.bin"} }, nil))
			select {
			case <-d.done:
				d.done <- nil
			case <-time.After(20 * time.Second):
				t.Fatal("agent was not killed")
			}
			d.stop()
			held := d.heldChunks(v2)
			before := hs.counts()
			d.tune = func(c *Config) { c.Prices = map[string]float64{"http": 0, "broker": 1e-6} }
			d.start()
			w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
			})
			after := hs.counts()
			if len(held) < cut {
				t.Errorf("%d chunks held at the kill, want at least %d", len(held), cut)
			}
			for i := 0; i < n; i++ {
				if held[uint32(i)] && after[i] != before[i] {
					t.Errorf("chunk %d was held at the kill but sent again (%d -> %d)", i, before[i], after[i])
				}
				if after[i] == 0 {
					t.Errorf("chunk %d never sent", i)
				}
			}
			t.Logf("kill at %d: %d held, %d chunk sends before, %d after", cut, len(held), sum(before), sum(after))
		})
	}
}

func sum(m map[int]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}
