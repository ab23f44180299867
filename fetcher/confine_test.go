package fetcher

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHTTPSourceReadTimeout: a server that stops sending fails the request
// with ErrStalled after the source's read timeout, whether it never
// answers, answers headers only, or stops in the middle of the body. The
// caller's context (a minute here) is not what ends it. Before the read
// timeout, http.DefaultClient held such a request until the download's
// context ended.
func TestHTTPSourceReadTimeout(t *testing.T) {
	fx := newFixture(t, 20000, 1024, 4)
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
	for _, c := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"no answer", hang},
		{"headers only", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-19999/20000")
			w.WriteHeader(http.StatusPartialContent)
			w.(http.Flusher).Flush()
			hang(w, r)
		}},
		{"body stops", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-19999/20000")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(fx.img[:3000])
			w.(http.Flusher).Flush()
			hang(w, r)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.handler)
			url := srv.URL + "/fw.bin"
			defer srv.Close()
			src := NewHTTPSource(url, 0, nil).withReadTimeout(100 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err := src.Fetch(ctx, fx.im, allChunks(fx.im), func(int, []byte) error { return nil })
			if !errors.Is(err, ErrStalled) || ctx.Err() != nil {
				t.Fatalf("fetch from a server that stops sending: %v (context: %v), want ErrStalled", err, ctx.Err())
			}
			if _, err := src.Table(ctx, fx.im); !errors.Is(err, ErrStalled) && c.name == "no answer" {
				t.Errorf("table from a server that never answers: %v, want ErrStalled", err)
			}
		})
	}
	// The default client has connect, handshake and header timeouts.
	tr := NewHTTPClient().Transport.(*http.Transport)
	if tr.TLSHandshakeTimeout != HTTPConnectTimeout || tr.ResponseHeaderTimeout != HTTPHeaderTimeout || tr.DialContext == nil {
		t.Errorf("default HTTP client transport: handshake %v, header %v", tr.TLSHandshakeTimeout, tr.ResponseHeaderTimeout)
	}
}

// allChunks returns the set of every chunk of im.
func allChunks(im Image) Chunks {
	return Chunks{newBitmap(im.Chunks()).complement()}
}

// TestFileSourceIn: a confined file source reads its image inside its
// root, and nothing outside: not by "..", an absolute path, nor a
// symbolic link inside the root that points out of it.
func TestFileSourceIn(t *testing.T) {
	fx := newFixture(t, 5000, 1024, 5)
	root, outside := t.TempDir(), t.TempDir()
	fx.writeFiles(t, root)
	secret := fx.writeFiles(t, outside)
	if err := os.Symlink(secret, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ok, err := NewFileSourceIn(root, ".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := ok.Probe(ctx, fx.im); a != CanServe {
		t.Errorf("the image inside the root: %v", a)
	}
	sink := newMemSink(len(fx.img))
	if _, err := newFetcher(t, t.TempDir(), ok).Fetch(ctx, fx.im, Plan{}, sink); err != nil {
		t.Errorf("fetch inside the root: %v", err)
	}
	for _, p := range []string{"../" + filepath.Base(outside) + "/" + fx.im.Hex(), secret} {
		if _, err := NewFileSourceIn(root, p, 0); !errors.Is(err, ErrConfig) {
			t.Errorf("path %q: %v, want ErrConfig", p, err)
		}
	}
	for _, p := range []string{"link", "dirlink"} {
		s, err := NewFileSourceIn(root, p, 0)
		if err != nil {
			t.Fatal(err)
		}
		if a, _ := s.Probe(ctx, fx.im); a != CannotServe {
			t.Errorf("symbolic link %s out of the root: probe %v, want cannot-serve", p, a)
		}
		if _, err := s.Table(ctx, fx.im); err == nil {
			t.Errorf("symbolic link %s out of the root: table read", p)
		}
		if err := s.Fetch(ctx, fx.im, allChunks(fx.im), func(int, []byte) error { return nil }); err == nil {
			t.Errorf("symbolic link %s out of the root: chunks read", p)
		}
	}
}
