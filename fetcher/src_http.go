package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// HTTPSource serves an image by HTTP(S) range requests from a URL (any CDN,
// or the firmcast server's /images/{digest}). The chunk table is fetched
// from the URL plus TableSuffix.
type HTTPSource struct {
	url    string
	price  float64
	client *http.Client
	// maxSpan bounds one range request, in chunks.
	maxSpan int
}

// NewHTTPSource returns a source for url. client nil means
// http.DefaultClient.
func NewHTTPSource(url string, price float64, client *http.Client) *HTTPSource {
	if client == nil {
		client = http.DefaultClient
	}
	return &HTTPSource{url: url, price: price, client: client, maxSpan: 256}
}

func (s *HTTPSource) Name() string   { return "http " + s.url }
func (s *HTTPSource) Kind() string   { return "http" }
func (s *HTTPSource) Price() float64 { return s.price }

// Probe sends a HEAD request: CanServe when it answers 200 with the
// image's length (or no length).
func (s *HTTPSource) Probe(ctx context.Context, im Image) (Availability, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, s.url, nil)
	if err != nil {
		return CannotServe, err
	}
	resp, err := s.client.Do(req)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+TableSuffix, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end-1))
	resp, err := s.client.Do(req)
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
