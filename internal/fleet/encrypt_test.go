package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// sniff records every payload a device's transport publishes or
// receives: the broker traffic of the campaign, as the devices see it.
type sniff struct {
	broker.Transport
	rec *traffic
}

type traffic struct {
	mu  sync.Mutex
	msg [][]byte
}

func (t *traffic) add(b []byte) {
	t.mu.Lock()
	t.msg = append(t.msg, bytes.Clone(b))
	t.mu.Unlock()
}

func (s *sniff) Publish(ctx context.Context, topic schemas.Topic, payload []byte, o broker.PublishOptions) error {
	s.rec.add(payload)
	return s.Transport.Publish(ctx, topic, payload, o)
}

func (s *sniff) Subscribe(ctx context.Context, filter schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	return s.Transport.Subscribe(ctx, filter, func(ctx context.Context, m broker.Message) {
		s.rec.add(m.Payload)
		h(ctx, m)
	}, o)
}

// leak says whether b holds a 64-byte window of plain (any offset: every
// such window contains an aligned 32-byte block, checked first) or the
// plaintext digest (raw or hex).
func leak(b, plain []byte, sum [32]byte) string {
	if bytes.Contains(b, sum[:]) || bytes.Contains(b, []byte(hex.EncodeToString(sum[:]))) {
		return "the plaintext digest"
	}
	for i := 0; i+32 <= len(plain); i += 32 {
		if j := bytes.Index(b, plain[i:i+32]); j >= 0 {
			// Confirm a full 64-byte window around it.
			for s := max(0, i-32); s <= i && s+64 <= len(plain); s++ {
				if bytes.Contains(b, plain[s:s+64]) {
					return "a 64-byte window of the plaintext"
				}
			}
		}
	}
	return ""
}

// `firmcast demo --encrypt`: every device ends confirmed on v2, and no
// 64-byte window of v2's plaintext, nor its digest, appears in the broker
// traffic of the campaign (everything the devices published and
// received), the NATS data directory (object store, KV, streams), what
// the HTTP API serves (GET /api/v1/images, and GET /images of every
// stored image and its chunk table), the agents' state directories, the
// logs (debug level) or the summary. The
// devices' flash holds the installed plaintext, as it should. The same
// scan of a plain demo finds the plaintext in the traffic and the NATS
// data (the control that the scan can see it).
//
// With Delta (`firmcast demo --encrypt --delta`), every device takes the
// encrypted delta the server made from v1 (its own content key and IV,
// wrapped with a key derived from v2's), and the same scan finds nothing:
// the delta holds v2's plaintext (its literal bytes, the target digest in
// its header), so its traffic, its object, the agents' staged copies and
// checkpoints are scanned too. The plain delta run is the control (its
// staged deltas name v2 by its plaintext digest; its new bytes travel as
// bsdiff differences, not as windows).
func TestDemoEncryptLeaksNothing(t *testing.T) {
	for _, tc := range []struct {
		name           string
		encrypt, delta bool
	}{
		{"encrypted", true, false},
		{"plain-control", false, false},
		{"encrypted-delta", true, true},
		{"plain-delta-control", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) { demoScan(t, tc.encrypt, tc.delta) })
	}
}

func demoScan(t *testing.T, encrypt, withDelta bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "firmcast.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	rec := &traffic{}
	const size, seed = 64 << 10, 5
	// What the HTTP API serves, read with the console's read-only key
	// once the campaign is over: the image list, and every stored image
	// (v1, v2, the delta) and its chunk table from GET /images.
	var api publisher.Client
	served := map[string][]byte{}
	sum, err := Run(ctx, Config{
		Devices: 8, ImageSize: size, ChunkSize: 4096, Dir: dir, Seed: seed, Encrypt: encrypt, Delta: withDelta,
		Logger:     slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Agent:      func(c *deviceagent.Config) { c.Transport = &sniff{Transport: c.Transport, rec: rec} },
		HTTPListen: "127.0.0.1:0",
		OnConsole:  func(url, key string) { api = publisher.Client{BaseURL: strings.TrimSuffix(url, "/"), Key: key} },
		Hold: func(ctx context.Context, _ Summary) {
			imgs, err := api.Images(ctx)
			if err != nil {
				t.Errorf("GET /api/v1/images: %v", err)
				return
			}
			served["GET /api/v1/images"], _ = json.Marshal(imgs)
			for _, im := range imgs {
				for _, path := range []string{"/images/" + im.Digest, "/images/" + im.Digest + ".table"} {
					served["GET "+path] = httpGet(ctx, t, api, path)
				}
			}
		},
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The list, v2 and its table; in a delta run v1 and the delta too.
	if want := 3 + 4*b2i(withDelta); len(served) != want {
		t.Fatalf("read %d answers of the HTTP API, want %d", len(served), want)
	}
	if sum.Outcome != "completed" || sum.ConfirmedV2 != 8 || sum.Encrypted != encrypt {
		t.Fatalf("outcome %s, %d/8 confirmed on v2, encrypted %v; problems %+v", sum.Outcome, sum.ConfirmedV2, sum.Encrypted, sum.Problems)
	}
	if withDelta && (sum.ViaDelta != 8 || sum.DeltaSize == 0) {
		t.Fatalf("%d/8 devices took the delta (of %d bytes)", sum.ViaDelta, sum.DeltaSize)
	}
	// What is secret: v2's plaintext; in a delta run, v2 is v1 (plain,
	// public) with changes, and the secret is what v2 does not share
	// with v1, such as the 256 new bytes in its middle (NextVersion).
	v2 := Image(seed, "v2", size)
	plain := v2
	if withDelta {
		v2 = NextVersion(Image(seed, "v1", size), seed)
		plain = v2[size/2 : size/2+256]
	}
	psum := sha256.Sum256(v2)
	found := map[string]string{} // where -> what leaked
	sj, _ := json.Marshal(sum)
	if l := leak(sj, plain, psum); l != "" {
		found["summary"] = l
	}
	for what, b := range served {
		if l := leak(b, plain, psum); l != "" {
			found[what] = l
		}
	}
	rec.mu.Lock()
	n := len(rec.msg)
	var total int
	for _, m := range rec.msg {
		if l := leak(m, plain, psum); l != "" {
			found["broker traffic"] = l
		}
		total += len(m)
	}
	rec.mu.Unlock()
	if want := max(size*(1-b2i(withDelta)), int(sum.DeltaSize)); n == 0 || total < want {
		t.Fatalf("recorded %d messages, %d bytes: less than the image or delta (%d bytes)", n, total, want)
	}
	files, flashes := 0, 0
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if filepath.Base(p) == "flash" {
			// The device's flash holds the installed plaintext (stored
			// inverted, see bootctl's file flash): the control that the
			// scan finds it where it is.
			for i := range b {
				b[i] = ^b[i]
			}
			if leak(b, plain, psum) != "" {
				flashes++
			}
			return nil
		}
		files++
		if l := leak(b, plain, psum); l != "" {
			found[strings.TrimPrefix(p, dir)] = l
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if flashes != 8 {
		t.Errorf("the scan found the plaintext in %d of 8 flashes", flashes)
	}
	t.Logf("scanned %d messages (%d bytes) and %d files", n, total, files)
	if encrypt {
		for where, what := range found {
			t.Errorf("%s holds %s", where, what)
		}
		if sum.V2 == hex.EncodeToString(psum[:]) {
			t.Error("the summary names v2 by its plaintext digest")
		}
		return
	}
	inNATS, inHTTP := false, false
	for where := range found {
		inNATS = inNATS || strings.HasPrefix(where, "/nats/")
		inHTTP = inHTTP || strings.HasPrefix(where, "GET /")
	}
	if !inHTTP {
		t.Errorf("control: the plain demo's plaintext or its digest was not found in what GET /images serves: %v", found)
	}
	staged := 0
	for where := range found {
		if strings.HasSuffix(where, "/delta/delta.bin") {
			staged++
		}
	}
	if withDelta && staged != 8 {
		// A plain delta names its target by the plaintext digest (its
		// header): the control that the scan covers the staged deltas.
		t.Errorf("control: the scan found the plaintext digest in %d of 8 staged plain deltas", staged)
	}
	if found["broker traffic"] == "" || !inNATS {
		t.Errorf("control: the plain demo's plaintext was not found in the traffic and the NATS data: %v", found)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// httpGet returns the body of GET path from the API with its key.
func httpGet(ctx context.Context, t *testing.T, api publisher.Client, path string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", api.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+api.Key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", path, err)
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %d, %v", path, resp.StatusCode, err)
	}
	return b
}
