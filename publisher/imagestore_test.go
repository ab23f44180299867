package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestImageHTTPRanges checks the range contract of GET /images/{digest}
// on a 3000-byte image of three 1 KiB chunks.
func TestImageHTTPRanges(t *testing.T) {
	f := newImageFixture(t, 3000, nil)
	path := "/images/" + f.img.Digest
	etag := `"` + f.img.Digest + `"`
	auth := basicAuth(f.device, f.secret)
	for _, c := range []struct {
		name, method string
		hdr          []string
		status       int
		from, to     int    // expected body: data[from:to]
		contentRange string // "" = none expected
	}{
		{"whole image", "GET", nil, 200, 0, 3000, ""},
		{"head", "HEAD", nil, 200, 0, 0, ""},
		{"first bytes", "GET", []string{"Range: bytes=0-99"}, 206, 0, 100, "bytes 0-99/3000"},
		{"across chunks", "GET", []string{"Range: bytes=1000-2499"}, 206, 1000, 2500, "bytes 1000-2499/3000"},
		{"open ended", "GET", []string{"Range: bytes=2500-"}, 206, 2500, 3000, "bytes 2500-2999/3000"},
		{"suffix", "GET", []string{"Range: bytes=-100"}, 206, 2900, 3000, "bytes 2900-2999/3000"},
		{"past the end", "GET", []string{"Range: bytes=3000-"}, 416, 0, 0, "bytes */3000"},
		{"several ranges get the whole image", "GET", []string{"Range: bytes=0-0,5-9"}, 200, 0, 3000, ""},
		{"if-range matches", "GET", []string{"Range: bytes=10-19", "If-Range: " + etag}, 206, 10, 20, "bytes 10-19/3000"},
		{"if-range of another image", "GET", []string{"Range: bytes=10-19", `If-Range: "00"`}, 200, 0, 3000, ""},
		{"if-none-match", "GET", []string{"If-None-Match: " + etag}, 304, 0, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, body := f.get(t, c.method, path, auth, c.hdr...)
			if res.StatusCode != c.status {
				t.Fatalf("status %d, want %d", res.StatusCode, c.status)
			}
			if got := res.Header.Get("Content-Range"); got != c.contentRange {
				t.Errorf("Content-Range %q, want %q", got, c.contentRange)
			}
			if c.status == 200 || c.status == 206 {
				want := int64(c.to - c.from)
				if c.method == "HEAD" {
					want = 3000
				}
				if res.ContentLength != want || res.Header.Get("Accept-Ranges") != "bytes" || res.Header.Get("ETag") != etag {
					t.Errorf("Content-Length %d (want %d), Accept-Ranges %q, ETag %q", res.ContentLength, want, res.Header.Get("Accept-Ranges"), res.Header.Get("ETag"))
				}
			}
			if c.status != 416 && !bytes.Equal(body, f.data[c.from:c.to]) {
				t.Errorf("body: %d bytes, want bytes %d..%d", len(body), c.from, c.to)
			}
		})
	}
	t.Run("chunk table", func(t *testing.T) {
		d, err := f.p.loadImage(context.Background(), f.img.Digest)
		if err != nil {
			t.Fatal(err)
		}
		res, body := f.get(t, "GET", path+".table", auth)
		if res.StatusCode != 200 || !bytes.Equal(body, d.tableBytes) || res.Header.Get("ETag") != `"`+f.img.TableDigest+`"` {
			t.Fatalf("table: %d, %d bytes (want %d), ETag %q", res.StatusCode, len(body), len(d.tableBytes), res.Header.Get("ETag"))
		}
	})
}

// TestImageReadsFollowRanges counts the chunk messages downloads read:
// a whole image reads each chunk once, a range reads the chunks it
// covers and at most as many again of read-ahead, a range inside one
// chunk reads that chunk only.
func TestImageReadsFollowRanges(t *testing.T) {
	f := newImageFixture(t, 100*1024, nil)
	path := "/images/" + f.img.Digest
	auth := basicAuth(f.device, f.secret)
	f.get(t, "HEAD", path, auth) // loads the table
	// settled waits for the reads of the last download to return: a
	// read-ahead cancelled when the handler closed its reader may finish
	// after the client has the whole body, and is that download's read.
	settled := func() {
		waitFor(t, 10*time.Second, func() string {
			return fmt.Sprintf("%d chunk reads still in flight after a download", f.p.st.images.readsInFlight.Load())
		}, func() bool { return f.p.st.images.readsInFlight.Load() == 0 })
	}
	msgs := func(hdr ...string) int64 {
		settled()
		before := f.p.st.images.readMsgs.Load()
		res, _ := f.get(t, "GET", path, auth, hdr...)
		if res.StatusCode/100 != 2 {
			t.Fatalf("%v: status %d", hdr, res.StatusCode)
		}
		settled()
		return f.p.st.images.readMsgs.Load() - before
	}
	if n := msgs(); n != 100 {
		t.Errorf("whole image of 100 chunks: %d messages read, want 100", n)
	}
	if n := msgs("Range: bytes=10300-10400"); n != 1 {
		t.Errorf("range inside chunk 10: %d messages read, want 1", n)
	}
	if n := msgs("Range: bytes=10240-20479"); n < 10 || n > 19 {
		t.Errorf("range of chunks 10..19: %d messages read, want 10 to 19", n)
	}
	if n := msgs("Range: bytes=0-0"); n != 1 {
		t.Errorf("first byte: %d messages read, want 1", n)
	}
}

// TestImageUploadAtomic interrupts an upload while its chunks are being
// stored: the image stays invisible (no record, 404, not listed), and a
// retry stores it with one message per chunk (the interrupted attempt's
// messages are replaced, not kept beside the new ones).
func TestImageUploadAtomic(t *testing.T) {
	f := newImageFixture(t, 3000, nil)
	ctx := context.Background()
	who := f.e.who(f.p)
	data := randomImage(t, 64*1024)
	// Cancel the upload as its fifth chunk message is published: in
	// the upload's own goroutine, so the cancel lands mid-store. (A
	// subscriber's callback, as this test had, could run after the
	// stream acknowledged every chunk and race the commit itself.)
	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	js := f.p.st.images.js
	cut := &cancelAtPublish{JetStream: js, at: 5, cancel: cancel}
	f.p.st.images.js = cut
	_, _, err := f.p.UploadImage(uctx, who, "half", bytes.NewReader(data))
	f.p.st.images.js = js
	if cut.n < 5 {
		t.Fatalf("upload published %d messages, want the cancel at the fifth", cut.n)
	}
	if err == nil {
		t.Fatal("upload cancelled while storing its chunks succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled upload: %v, want context.Canceled", err)
	}
	digest := sha256Hex(data)
	if _, err := f.p.Image(ctx, digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-uploaded image: %v, want ErrNotFound", err)
	}
	if res, _ := f.get(t, "GET", "/images/"+digest, bearerAuth(f.read)); res.StatusCode != http.StatusNotFound {
		t.Fatalf("half-uploaded image over HTTP: %d, want 404", res.StatusCode)
	}
	imgs, err := f.p.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range imgs {
		if i.Digest == digest {
			t.Fatal("half-uploaded image listed")
		}
	}
	// The retry.
	up, created, err := f.p.UploadImage(ctx, who, "whole", bytes.NewReader(data))
	if err != nil || !created {
		t.Fatalf("retry: created %v, %v", created, err)
	}
	res, body := f.get(t, "GET", "/images/"+up.Digest, bearerAuth(f.read))
	if res.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("retried image: %d, %d bytes", res.StatusCode, len(body))
	}
	info, err := f.p.st.images.stream.Info(ctx, jetstream.WithSubjectFilter(f.p.st.images.prefix+"."+digest+".>"))
	if err != nil {
		t.Fatal(err)
	}
	if want := up.Chunks + 1; len(info.State.Subjects) != want {
		t.Errorf("stored subjects of the image: %d, want %d (one per chunk and one table part)", len(info.State.Subjects), want)
	}
	for s, k := range info.State.Subjects {
		if k != 1 {
			t.Errorf("%s holds %d messages, want 1", s, k)
		}
	}
}

// TestImageStoreCorruptChunk replaces a stored chunk with other bytes: the
// chunk is never served (a download is cut short before it, a wave
// fails), while the chunks before it still are.
func TestImageStoreCorruptChunk(t *testing.T) {
	f := newImageFixture(t, 3000, nil)
	ctx := context.Background()
	if _, err := f.e.js.Publish(ctx, f.p.st.images.chunkSubject(f.img.Digest, 1), bytes.Repeat([]byte{0xAA}, 1024)); err != nil {
		t.Fatal(err)
	}
	path := "/images/" + f.img.Digest
	auth := bearerAuth(f.read)
	if res, body := f.get(t, "GET", path, auth, "Range: bytes=0-1023"); res.StatusCode != 206 || !bytes.Equal(body, f.data[:1024]) {
		t.Fatalf("range before the bad chunk: %d, %d bytes", res.StatusCode, len(body))
	}
	req, _ := http.NewRequest("GET", f.srv.URL+path, nil)
	auth(req)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil || len(body) >= 2048 || bytes.Contains(body, bytes.Repeat([]byte{0xAA}, 16)) {
		t.Fatalf("download over a corrupt chunk: %d bytes, err %v; want it cut short before chunk 1", len(body), err)
	}
	if err := f.p.Wave(ctx, f.img.Digest); err == nil {
		t.Fatal("wave over a corrupt chunk succeeded")
	}
}

// TestImageStreamCreatedOnce: the image stream is created by the first
// publisher of a namespace and found by the next, which sends no
// STREAM.UPDATE (which Debian's nats-server 2.9.10 can panic on when it
// races a create).
func TestImageStreamCreatedOnce(t *testing.T) {
	e := newEnv(t)
	adv := testutil.WatchStreamAdvisories(t, e.js.Conn().ConnectedUrl())
	e.open(nil)
	e.open(nil)
	adv.Sync(t)
	if u := adv.Updated(); len(u) != 0 {
		t.Errorf("streams updated by opening the stores twice: %v", u)
	}
	n := 0
	for _, c := range adv.Created() {
		if c == "firmcast_images" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("image stream created %d times, want 1", n)
	}
}

// TestImageTableParts stores a chunk table larger than one stored part
// (256-byte chunks: 10000 entries, about 340 KB) and reads it back.
func TestImageTableParts(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.ChunkSize = 256 })
	const n = 10000
	data := randomImage(t, n*256-7)
	img, _, err := p.UploadImage(context.Background(), e.who(p), "parts", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.readImageData(context.Background(), img.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.tableBytes) <= tablePart || d.chunks() != n {
		t.Fatalf("table of %d bytes, %d chunks", len(d.tableBytes), d.chunks())
	}
	for _, i := range []int{0, n - 1} {
		b, err := p.readChunk(context.Background(), d, i)
		if err != nil || !bytes.Equal(b, data[i*256:min((i+1)*256, len(data))]) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	if _, err := p.readChunk(context.Background(), d, n); !errors.Is(err, ErrInvalid) {
		t.Fatalf("chunk past the end: %v, want ErrInvalid", err)
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestImageMigration starts a publisher on a namespace where an earlier
// version left an image in the object store (bytes under the digest, the
// chunk table beside it, the record in the metadata bucket): the image is
// copied into the image stream and served; an image whose object is
// missing is logged and skipped, not fatal. A publisher with CodedRepair
// migrates it with the table its record names (coding is for new
// uploads).
func TestImageMigration(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	p := e.open(nil)
	data := randomImage(t, 5000)
	sp, err := p.spool(bytes.NewReader(data), e.cfg.ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	sp.close()
	tb, err := schemas.Encode(sp.table)
	if err != nil {
		t.Fatal(err)
	}
	tsum := sha256.Sum256(tb)
	digest := sha256Hex(data)
	obs, err := e.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: legacyImageBucket("firmcast")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctx, digest, data); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctx, digest+".table", tb); err != nil {
		t.Fatal(err)
	}
	old := Image{Digest: digest, Size: int64(len(data)), ChunkSize: e.cfg.ChunkSize, Chunks: len(sp.table.Hashes), TableDigest: hex.EncodeToString(tsum[:]), Name: "old"}
	lost := old
	lost.Digest = strings.Repeat("cd", 32)
	for _, img := range []Image{old, lost} {
		if _, err := createJSON(ctx, p.st.imageMeta, "image", img.Digest, img); err != nil {
			t.Fatal(err)
		}
	}

	p2 := e.open(func(c *Config) { c.CodedRepair = true })
	d, err := p2.loadImage(ctx, digest)
	if err != nil {
		t.Fatalf("migrated image: %v", err)
	}
	if d.table.Coded() {
		t.Fatal("the migrated image's table was coded: its record names the uncoded one")
	}
	var got []byte
	for i := range d.chunks() {
		b, err := p2.readChunk(ctx, d, i)
		if err != nil {
			t.Fatalf("migrated chunk %d: %v", i, err)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("migrated image differs")
	}
	if _, err := p2.loadImage(ctx, lost.Digest); err == nil {
		t.Fatal("an image without bytes loads")
	}
}

// cancelAtPublish cancels an upload when its at-th message is published
// (a fault injected into the image store's JetStream).
type cancelAtPublish struct {
	jetstream.JetStream
	n, at  int
	cancel context.CancelFunc
}

func (c *cancelAtPublish) PublishAsync(subj string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if c.n++; c.n == c.at {
		c.cancel()
	}
	return c.JetStream.PublishAsync(subj, data, opts...)
}
