package deviceagent

import (
	"context"
	"errors"
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

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func TestPolicyDefers(t *testing.T) {
	v2 := testImage(6, 10*testChunk)
	t.Run("metered limit", func(t *testing.T) {
		w := memWorld(t)
		w.serve(v2, nil)
		d := w.newDevice("dev-p", func(c *Config) {
			c.Prices = map[string]float64{"broker": 1e-6}
			c.Policy.MaxMeteredBytes = 4096
		})
		d.start()
		w.notice("camp-p", "dev-p", false, v2, w.envelope(v2, 2, nil, nil))
		r := w.waitState("dev-p", schemas.StateDeferred, 10*time.Second)
		if r.Code != schemas.CodePolicy || !strings.Contains(r.Text, "metered limit") {
			t.Errorf("deferred report %s %q, want policy code naming the metered limit", r.Code, r.Text)
		}
	})
	t.Run("consent declined", func(t *testing.T) {
		w := memWorld(t)
		w.serve(v2, nil)
		d := w.newDevice("dev-c", func(c *Config) {
			c.Policy.Consent = func(ctx context.Context, u Update) error {
				if u.Phase == "download" {
					return errors.New("user is on a call")
				}
				return nil
			}
		})
		d.start()
		w.notice("camp-c", "dev-c", false, v2, w.envelope(v2, 2, nil, nil))
		r := w.waitState("dev-c", schemas.StateDeferred, 10*time.Second)
		if !strings.Contains(r.Text, "user is on a call") {
			t.Errorf("deferred report %q does not name the application's reason", r.Text)
		}
	})
	t.Run("maintenance window", func(t *testing.T) {
		w := memWorld(t)
		w.serve(v2, nil)
		clk := &fakeClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
		d := w.newDevice("dev-m", func(c *Config) {
			c.Clock = clk
			c.Policy.Window = &Window{Start: 2 * time.Hour, End: 4 * time.Hour}
			c.Policy.Recheck = 20 * time.Millisecond
		})
		d.start()
		w.notice("camp-m", "dev-m", false, v2, w.envelope(v2, 2, nil, nil))
		r := w.waitState("dev-m", schemas.StateDeferred, 10*time.Second)
		if !strings.Contains(r.Text, "maintenance window") {
			t.Errorf("deferred report %q does not name the window", r.Text)
		}
		if st := d.agent.State(); st.State != schemas.StateStaged {
			t.Errorf("deferred in state %s, want staged (downloaded, waiting to install)", st.State)
		}
		clk.Set(time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC))
		w.waitReport("dev-m", 10*time.Second, func(r schemas.DeviceReport) bool {
			return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
		})
	})
}

// TestSourceFailover: the cheapest source (HTTP, free) breaks mid-download;
// the picker moves to the broker, which serves only the chunks still
// missing, and the update completes without restarting.
func TestSourceFailover(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(7, 40*testChunk)
	cs := w.serve(v2, nil)
	const cut = 13
	var mu sync.Mutex
	httpServed := map[int]int{}
	gets := 0
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			rw.Header().Set("Content-Length", fmt.Sprint(len(v2)))
			return
		}
		if strings.HasSuffix(r.URL.Path, ".table") {
			tab, _ := schemas.BuildChunkTable(bytesReader(v2), testChunk)
			b, _ := schemas.Encode(tab)
			rw.Write(b)
			return
		}
		mu.Lock()
		gets++
		first := gets == 1
		mu.Unlock()
		if !first {
			http.Error(rw, "outage", http.StatusServiceUnavailable)
			return
		}
		var a, b int
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b)
		rw.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(v2)))
		rw.Header().Set("Content-Length", fmt.Sprint(b-a+1))
		rw.WriteHeader(http.StatusPartialContent)
		rw.Write(v2[a : a+cut*testChunk])
		mu.Lock()
		for i := 0; i < cut; i++ {
			httpServed[a/testChunk+i]++
		}
		mu.Unlock()
		panic(http.ErrAbortHandler) // the link drops mid-body
	}))
	defer srv.Close()
	d := w.newDevice("dev-f", func(c *Config) { c.Prices = map[string]float64{"broker": 1e-6, "http": 0} })
	d.start()
	// The HTTP source comes from the signed manifest (notices name none).
	w.notice("camp-f", "dev-f", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.URIs = []string{srv.URL + "/fw.bin"} }, nil))
	w.waitReport("dev-f", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	var decisions []string
	for _, r := range w.reportsOf("dev-f") {
		if strings.HasPrefix(r.Text, "source decision") {
			decisions = append(decisions, r.Text)
		}
	}
	if len(decisions) != 2 || !strings.Contains(decisions[0], `chose "http`) || !strings.Contains(decisions[1], `chose "broker" (failover after http`) {
		t.Errorf("decision reports %q: want http first, then the broker by failover", decisions)
	}
	served := cs.Served()
	for i := 0; i < 40; i++ {
		b := served[uint32(i)]
		mu.Lock()
		h := httpServed[i]
		mu.Unlock()
		switch {
		case i < cut && (h != 1 || b != 0):
			t.Errorf("chunk %d: http %d, broker %d; want it from http only", i, h, b)
		case i >= cut && (h != 0 || b != 1):
			t.Errorf("chunk %d: http %d, broker %d; want it from the broker once", i, h, b)
		}
	}
}
