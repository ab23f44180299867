package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Timeouts of HTTP sources.
const (
	// HTTPConnectTimeout bounds a TCP connect and a TLS handshake of the
	// client NewHTTPClient makes.
	HTTPConnectTimeout = 10 * time.Second
	// HTTPHeaderTimeout bounds the wait for a response's headers (same
	// client).
	HTTPHeaderTimeout = 30 * time.Second
	// HTTPReadTimeout is an HTTPSource's read timeout: the longest
	// a request may go without a byte, from the request to its headers and
	// between reads of its body.
	HTTPReadTimeout = 30 * time.Second
)

// NewHTTPClient returns a client for HTTP sources with connect, TLS
// handshake and response-header timeouts. It has no overall timeout, as a
// range read of many chunks may rightly take long; HTTPSource bounds the
// time without a byte instead (its read timeout).
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: HTTPConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = HTTPConnectTimeout
	tr.ResponseHeaderTimeout = HTTPHeaderTimeout
	return &http.Client{Transport: tr}
}

// HTTPSource serves an image by HTTP(S) range requests from a URL (any CDN,
// or the firmcast server's /images/{digest}). The chunk table is fetched
// from the URL plus TableSuffix.
type HTTPSource struct {
	url    string
	price  float64
	client *http.Client
	// maxSpan bounds one range request, in chunks.
	maxSpan int
	// readTimeout bounds the time a request goes without a byte.
	readTimeout time.Duration
}

// NewHTTPSource returns a source for url. client nil means a client made
// by NewHTTPClient. Every request fails with ErrStalled when it goes
// HTTPReadTimeout without a byte, whatever client.
func NewHTTPSource(url string, price float64, client *http.Client) *HTTPSource {
	if client == nil {
		client = NewHTTPClient()
	}
	return &HTTPSource{url: url, price: price, client: client, maxSpan: 256, readTimeout: HTTPReadTimeout}
}

// withReadTimeout sets the longest time a request may go without a byte
// (d > 0) and returns s.
func (s *HTTPSource) withReadTimeout(d time.Duration) *HTTPSource {
	if d > 0 {
		s.readTimeout = d
	}
	return s
}

// do sends req with the read timeout armed: the request is cancelled when
// no byte arrives for s.readTimeout, from now until the body is closed.
// The returned body must be closed.
func (s *HTTPSource) do(ctx context.Context, method, url string, header http.Header) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	st := &stallTimer{d: s.readTimeout, url: url}
	st.t = time.AfterFunc(s.readTimeout, func() { st.fired.Store(true); cancel() })
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		st.t.Stop()
		cancel()
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		st.t.Stop()
		cancel()
		return nil, st.wrap(err)
	}
	resp.Body = &stallBody{rc: resp.Body, st: st, cancel: cancel}
	return resp, nil
}

// stallTimer cancels a request that goes too long without a byte.
type stallTimer struct {
	t     *time.Timer
	d     time.Duration
	url   string
	fired atomic.Bool
}

// wrap turns the error of a request the timer cancelled into ErrStalled.
func (st *stallTimer) wrap(err error) error {
	if err != nil && st.fired.Load() {
		return fmt.Errorf("%w: %s: no data for %v", ErrStalled, st.url, st.d)
	}
	return err
}

// stallBody re-arms the stall timer on every read that returns bytes.
type stallBody struct {
	rc     io.ReadCloser
	st     *stallTimer
	cancel context.CancelFunc
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.st.t.Reset(b.st.d)
	}
	return n, b.st.wrap(err)
}

func (b *stallBody) Close() error {
	b.st.t.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}

func (s *HTTPSource) Name() string   { return "http " + s.url }
func (s *HTTPSource) Kind() string   { return "http" }
func (s *HTTPSource) Price() float64 { return s.price }

// Probe sends a HEAD request: CanServe when it answers 200 with the
// image's length (or no length).
func (s *HTTPSource) Probe(ctx context.Context, im Image) (Availability, error) {
	resp, err := s.do(ctx, http.MethodHead, s.url, nil)
	if err != nil {
		return CannotServe, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return CannotServe, fmt.Errorf("HEAD %s: %s", s.url, resp.Status)
	}
	if resp.ContentLength >= 0 && uint64(resp.ContentLength) != im.Size {
		return CannotServe, fmt.Errorf("HEAD %s: length %d, want %d", s.url, resp.ContentLength, im.Size)
	}
	return CanServe, nil
}

// Table GETs the chunk table, bounded by its size cap.
func (s *HTTPSource) Table(ctx context.Context, im Image) ([]byte, error) {
	resp, err := s.do(ctx, http.MethodGet, s.url+TableSuffix, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusGone:
		// No table next to this image (a plain CDN): not worth retrying;
		// the table comes from another source.
		return nil, fmt.Errorf("%w: GET %s%s: %s", ErrCannotServe, s.url, TableSuffix, resp.Status)
	default:
		return nil, fmt.Errorf("GET %s%s: %s", s.url, TableSuffix, resp.Status)
	}
	return readBounded(resp.Body, maxTableSize)
}

// Fetch asks for each run of wanted chunks (at most maxSpan chunks) with one
// range request and streams it through one reused chunk buffer.
func (s *HTTPSource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	buf := make([]byte, im.ChunkSize)
	var bad, ferr error
	want.Runs(s.maxSpan, func(first, count int) bool {
		b, err := s.fetchRun(ctx, im, first, count, buf, deliver)
		if b != nil {
			bad = b
		}
		ferr = err
		return err == nil
	})
	if ferr != nil {
		return ferr
	}
	return bad
}

func (s *HTTPSource) fetchRun(ctx context.Context, im Image, first, count int, buf []byte, deliver Deliver) (bad, err error) {
	start := im.Offset(first)
	end := im.Offset(first+count-1) + int64(im.ChunkLen(first+count-1)) // exclusive
	resp, err := s.do(ctx, http.MethodGet, s.url, http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", start, end-1)}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body := io.Reader(resp.Body)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if got, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || got != start {
			return nil, fmt.Errorf("GET %s: Content-Range %q, asked bytes=%d-%d", s.url, resp.Header.Get("Content-Range"), start, end-1)
		}
	case http.StatusOK:
		// The server ignored the range: skip to the start.
		if _, err := io.CopyN(io.Discard, body, start); err != nil {
			return nil, fmt.Errorf("GET %s: skipping to %d: %w", s.url, start, err)
		}
	default:
		return nil, fmt.Errorf("GET %s range %d-%d: %s", s.url, start, end-1, resp.Status)
	}
	for i := first; i < first+count; i++ {
		b := buf[:im.ChunkLen(i)]
		if _, err := io.ReadFull(body, b); err != nil {
			return bad, fmt.Errorf("GET %s: chunk %d: %w", s.url, i, err)
		}
		if err := deliver(i, b); err != nil {
			if errors.Is(err, ErrSink) {
				return bad, err
			}
			bad = err
		}
	}
	return bad, nil
}

// contentRangeStart parses the first byte of "bytes a-b/n".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	a, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(a, 10, 64)
	return n, err == nil
}
