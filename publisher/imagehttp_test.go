package publisher

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// imageFixture is a running publisher with one image, a read key, a
// device and its secret, and the HTTP API on a test server.
type imageFixture struct {
	e      *testEnv
	p      *Publisher
	srv    *httptest.Server
	data   []byte
	img    Image
	read   string // a read-scoped API key
	device string
	secret string
}

func newImageFixture(t *testing.T, size int, edit func(*Config)) *imageFixture {
	t.Helper()
	e := newEnv(t)
	p, _ := e.start(edit)
	ctx := context.Background()
	who := e.who(p)
	f := &imageFixture{e: e, p: p, data: randomImage(t, size), device: devName(0)}
	var err error
	if f.img, _, err = p.UploadImage(ctx, who, "fw", bytes.NewReader(f.data)); err != nil {
		t.Fatal(err)
	}
	if f.read, _, err = p.CreateAPIKey(ctx, who, "reader", []Scope{ScopeRead}); err != nil {
		t.Fatal(err)
	}
	if _, f.secret, err = p.AddDevice(ctx, who, NewDevice{ID: f.device, Class: "sensor"}); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(p.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// get sends method path with the header lines in hdr ("Name: value").
func (f *imageFixture) get(t *testing.T, method, path string, auth func(*http.Request), hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, nil)
	if auth != nil {
		auth(req)
	}
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return res, b
}

func bearerAuth(key string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+key) }
}

func basicAuth(user, pass string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, pass) }
}

// TestImageDownloadNeedsCredentials is the attack of an outsider on the
// network: GET /images/{digest} (and its chunk table, and HEAD) without
// credentials, with a made-up or revoked key, or with a device id and a
// wrong secret, is refused under the default policy (ImageAccessKey),
// before the image is looked up (an unknown image gets 401 too, not 404).
// A read key and a registered device's own credentials are let through;
// ImageAccessPublic lets anyone through.
func TestImageDownloadNeedsCredentials(t *testing.T) {
	f := newImageFixture(t, 3000, nil)
	ctx := context.Background()
	revoked, k, err := f.p.CreateAPIKey(ctx, f.e.who(f.p), "old", []Scope{ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.RevokeAPIKey(ctx, f.e.who(f.p), k.ID); err != nil {
		t.Fatal(err)
	}
	img := "/images/" + f.img.Digest
	unknown := "/images/" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		name, method, path string
		auth               func(*http.Request)
		want               int
	}{
		{"no credentials", "GET", img, nil, http.StatusUnauthorized},
		{"no credentials, HEAD", "HEAD", img, nil, http.StatusUnauthorized},
		{"no credentials, chunk table", "GET", img + ".table", nil, http.StatusUnauthorized},
		{"no credentials, unknown image", "GET", unknown, nil, http.StatusUnauthorized},
		{"made-up key", "GET", img, bearerAuth("fck_0123456789ab_nope"), http.StatusUnauthorized},
		{"revoked key", "GET", img, bearerAuth(revoked), http.StatusUnauthorized},
		{"device with a wrong secret", "GET", img, basicAuth(f.device, f.secret+"x"), http.StatusUnauthorized},
		{"unknown device", "GET", img, basicAuth("dev-999", f.secret), http.StatusUnauthorized},
		{"backend name as device", "GET", img, basicAuth("publisher", f.secret), http.StatusUnauthorized},
		{"read key", "GET", img, bearerAuth(f.read), http.StatusOK},
		{"read key, chunk table", "GET", img + ".table", bearerAuth(f.read), http.StatusOK},
		{"read key, unknown image", "GET", unknown, bearerAuth(f.read), http.StatusNotFound},
		{"device credentials", "GET", img, basicAuth(f.device, f.secret), http.StatusOK},
		{"device credentials, HEAD", "HEAD", img, basicAuth(f.device, f.secret), http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, body := f.get(t, c.method, c.path, c.auth)
			if res.StatusCode != c.want {
				t.Fatalf("%s %s: %d (%d bytes: %.80q), want %d", c.method, c.path, res.StatusCode, len(body), body, c.want)
			}
			switch {
			case c.want == http.StatusUnauthorized:
				if c.method == "GET" && !strings.Contains(string(body), "error") {
					t.Errorf("refusal without a message: %s", body)
				}
				if bytes.Contains(body, f.data[:64]) || res.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("refusal leaks image bytes or lacks WWW-Authenticate: %v", res.Header)
				}
			case c.want == http.StatusOK && c.method == "GET" && !strings.HasSuffix(c.path, ".table"):
				if !bytes.Equal(body, f.data) {
					t.Errorf("body: %d bytes, want the image's %d", len(body), len(f.data))
				}
			}
		})
	}

	t.Run("public policy", func(t *testing.T) {
		pub := newImageFixture(t, 3000, func(c *Config) { c.ImageAccess = ImageAccessPublic })
		res, body := pub.get(t, "GET", "/images/"+pub.img.Digest, nil)
		if res.StatusCode != http.StatusOK || !bytes.Equal(body, pub.data) || !strings.HasPrefix(res.Header.Get("Cache-Control"), "public") {
			t.Fatalf("public: %d, %d bytes, Cache-Control %q", res.StatusCode, len(body), res.Header.Get("Cache-Control"))
		}
	})
	t.Run("bad policy", func(t *testing.T) {
		_, err := Config{JetStream: f.e.js, Transport: f.e.hub.Conn(), ImageAccess: "open"}.withDefaults()
		if err == nil || !strings.Contains(err.Error(), `"open"`) {
			t.Fatalf("image access \"open\": %v, want an error naming it", err)
		}
	})
}

// TestImageRangeReadsOnlyWhatItReturns is the memory and storage
// amplification attack: many concurrent range requests for a few KiB
// near the end of a 16 MiB image. Each must read from NATS only the chunk
// its range lies in (16 KiB), not the image (the JetStream object store
// reads an object from its start, and the old handler loaded the whole
// image per request): the bytes the publisher's NATS connection received
// stay within one chunk per request plus the chunk table and key checks.
func TestImageRangeReadsOnlyWhatItReturns(t *testing.T) {
	const (
		chunk = 16 << 10
		size  = 16 << 20
		n     = 50
		span  = 4096
	)
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.ChunkSize = chunk })
	data := randomImage(t, size)
	img, _, err := p.UploadImage(context.Background(), e.who(p), "big", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	nc := e.js.Conn()
	before := nc.Stats().InBytes
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Inside one of the last 8 chunks.
			off := size - (i%8+1)*chunk + 100
			req, _ := http.NewRequest("GET", srv.URL+"/images/"+img.Digest, nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+span-1))
			req.Header.Set("Authorization", "Bearer "+testAdminKey)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			got, err := io.ReadAll(res.Body)
			if err != nil || res.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[off:off+span]) {
				errs <- fmt.Errorf("range at %d: %d, %d bytes, %v; want 206 with %d bytes", off, res.StatusCode, len(got), err, span)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	read := nc.Stats().InBytes - before
	// A chunk per request with its message overhead and the key check's
	// KV read, and the chunk table (1024 entries) once.
	limit := uint64(n*(chunk+2048) + 64<<10)
	if read > limit {
		t.Fatalf("%d range requests of %d bytes made the publisher read %d bytes from NATS (%.1f images), want at most %d",
			n, span, read, float64(read)/size, limit)
	}
	t.Logf("%d range requests of %d bytes: %d bytes read from NATS", n, span, read)
}
