package fetcher

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestHTTPSourceBasicAuth: a source with credentials sends them with
// every request to its own origin (probe, table, ranges) and the fetch
// completes against a server that demands them; a redirect to another
// origin gets none; the client it was made with stays without them.
func TestHTTPSourceBasicAuth(t *testing.T) {
	fx := newFixture(t, 5*1024+3, 1024, 7)
	rs := newRangeServer(t, fx)
	var mu sync.Mutex
	var leaked []string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			mu.Lock()
			leaked = append(leaked, r.Method+" "+r.URL.Path)
			mu.Unlock()
		}
		rs.serve(w, r)
	}))
	defer other.Close()
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "dev-1" || p != "s3cret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		if r.URL.Path == "/moved.bin" {
			http.Redirect(w, r, other.URL+"/fw.bin", http.StatusFound)
			return
		}
		rs.serve(w, r)
	}))
	defer front.Close()

	client := &http.Client{}
	sink := newMemSink(len(fx.img))
	src := NewHTTPSource(front.URL+"/fw.bin", 0, client).WithBasicAuth("dev-1", "s3cret")
	if _, err := newFetcher(t, t.TempDir(), src).Fetch(context.Background(), fx.im, Plan{}, sink); err != nil {
		t.Fatalf("fetch with credentials: %v", err)
	}
	checkSink(t, sink, fx)
	if client.Transport != nil {
		t.Error("WithBasicAuth changed the client it was given")
	}
	without := NewHTTPSource(front.URL+"/fw.bin", 0, client)
	if _, err := without.Table(context.Background(), fx.im); err == nil {
		t.Error("a source without credentials read the table of a server that demands them")
	}
	moved := NewHTTPSource(front.URL+"/moved.bin", 0, client).WithBasicAuth("dev-1", "s3cret")
	if _, err := moved.Probe(context.Background(), fx.im); err != nil {
		t.Fatalf("probe through a redirect: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("credentials sent to another origin after a redirect: %v", leaked)
	}
}
