package deviceagent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestHTTPSourceSendsDeviceCredentials: the image server demands the
// device's id and secret (as the publisher's GET /images/{digest} does by
// default); the agent, configured with them for the server's image URL
// prefix, downloads and installs the image from the URL the signed
// manifest names (without them it cannot: no other source serves the
// image). A URL outside the prefix (another host, or another path of the
// host) is sent no credentials.
func TestHTTPSourceSendsDeviceCredentials(t *testing.T) {
	v2 := testImage(17, 10*testChunk+5)
	w := memWorld(t)
	hs := newCountingHTTP(t, v2)
	var mu sync.Mutex
	var leaked []string
	guarded := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/images/") && r.Header.Get("Authorization") != "" {
			mu.Lock()
			leaked = append(leaked, r.Host+r.URL.Path)
			mu.Unlock()
		}
		if u, p, ok := r.BasicAuth(); !ok || u != "dev-a" || p != "pw-of-dev-a" {
			http.Error(rw, "device credentials required", http.StatusUnauthorized)
			return
		}
		hs.Config.Handler.ServeHTTP(rw, r)
	}))
	defer guarded.Close()
	other := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			mu.Lock()
			leaked = append(leaked, r.Host+r.URL.Path)
			mu.Unlock()
		}
		http.NotFound(rw, r)
	}))
	defer other.Close()

	d := w.newDevice("dev-a", func(c *Config) {
		c.Prices = map[string]float64{"http": 0, "broker": 1e-6}
		c.HTTPAuth = &HTTPAuth{URLPrefix: guarded.URL + "/images/", Username: "dev-a", Password: "pw-of-dev-a"}
	})
	d.start()
	defer d.stop()
	w.notice("camp-a", "dev-a", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.URIs = []string{guarded.URL + "/images/fw.bin"} }, nil))
	w.waitReport("dev-a", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	if sum(hs.counts()) == 0 {
		t.Fatal("no chunk came from the HTTP server")
	}
	im := fetcher.Image{Size: uint64(len(v2)), ChunkSize: testChunk}
	for _, u := range []string{other.URL + "/images/fw.bin", guarded.URL + "/other/fw.bin"} {
		d.agent.httpSource(u, 0).Probe(context.Background(), im)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("credentials sent outside the prefix: %v", leaked)
	}
}

func TestHTTPAuthPrefix(t *testing.T) {
	for _, c := range []struct {
		prefix string
		ok     bool
	}{
		{"https://fw.example.com/images/", true},
		{"http://127.0.0.1:8080/", true},
		{"", false},
		{"https://fw.example.com", false},        // would match fw.example.com.evil.org
		{"https://fw.example.com/images", false}, // would match /images-of-someone-else
		{"ftp://fw.example.com/images/", false},
		{"https://dev:pw@fw.example.com/images/", false},
		{"https://fw.example.com/images/?k=v", false},
		{"/images/", false},
	} {
		err := (&HTTPAuth{URLPrefix: c.prefix, Username: "d", Password: "p"}).check()
		if (err == nil) != c.ok {
			t.Errorf("prefix %q: %v, want ok=%v", c.prefix, err, c.ok)
		}
	}
}
