package deviceagent

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestRejections runs the rejection table against one agent: each bad
// notice, manifest or payload yields a report with its specific code,
// nothing reaches the active slot (every report still says version 1), and
// the agent keeps serving: a good update completes at the end, despite
// garbage, foreign and out-of-range chunks on its chunk topics.
func TestRejections(t *testing.T) {
	w := memWorld(t)
	d := w.newDevice("dev-x", func(c *Config) { c.MaxAttempts = 2 })
	d.start()
	w.waitReport("dev-x", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })

	v2 := testImage(2, 20000)
	bigImg := testImage(9, 70<<10)
	other := testImage(10, 20000)
	corrupt := testImage(11, 20000)
	badTable := testImage(12, 20000)
	w.serve(corrupt, func(cs *testutil.ChunkServer) { cs.Corrupt = func(i uint32, n int) bool { return i == 3 } })
	w.serve(badTable, func(cs *testutil.ChunkServer) {
		tab, _ := schemas.BuildChunkTable(bytesReader(other), testChunk)
		cs.TableBytes, _ = schemas.Encode(tab)
	})
	flipLast := func(b []byte) []byte { b = append([]byte(nil), b...); b[len(b)-1] ^= 1; return b }
	untrusted := signerFor(t, testKey(99))
	past := time.Now().Add(-time.Hour)

	cases := []struct {
		name     string
		send     func(campaign string)
		campaign bool // the report names the campaign
		code     schemas.ErrCode
	}{
		{"garbage on notice topic", func(string) { w.raw("dev-x", false, []byte{0xff, 0x00, 0x13}) }, false, schemas.CodeMalformed},
		{"garbage on announce topic", func(string) { w.raw("cls", true, []byte("\xa1\x00\x00not cbor")) }, false, schemas.CodeMalformed},
		{"notice for another device", func(c string) { w.raw("dev-x", false, w.encodeNotice(c, "dev-other", v2, w.envelope(v2, 2, nil, nil))) }, false, schemas.CodeDeviceMismatch},
		{"bad signature", func(c string) { w.notice(c, "dev-x", false, v2, flipLast(w.envelope(v2, 2, nil, nil))) }, true, schemas.CodeSignature},
		{"untrusted key", func(c string) { w.notice(c, "dev-x", false, v2, w.envelope(v2, 2, nil, untrusted)) }, true, schemas.CodeUntrustedKey},
		{"wrong vendor", func(c string) {
			w.notice(c, "dev-x", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.VendorID = make([]byte, 16) }, nil))
		}, true, schemas.CodeVendorMismatch},
		{"wrong class", func(c string) {
			w.notice(c, "dev-x", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.ClassID = make([]byte, 16) }, nil))
		}, true, schemas.CodeClassMismatch},
		{"rollback sequence", func(c string) { w.notice(c, "dev-x", false, other, w.envelope(other, 1, nil, nil)) }, true, schemas.CodeRollback},
		{"oversize image", func(c string) { w.notice(c, "dev-x", false, bigImg, w.envelope(bigImg, 2, nil, nil)) }, true, schemas.CodeSize},
		{"notice and manifest disagree", func(c string) { w.notice(c, "dev-x", false, v2, w.envelope(other, 2, nil, nil)) }, true, schemas.CodeDigest},
		{"notice past its campaign deadline", func(c string) {
			n := w.newNotice(c, "dev-x", v2, w.envelope(v2, 2, nil, nil))
			n.Deadline = past.Unix()
			w.raw("dev-x", false, w.signNotice(n, w.signer))
		}, true, schemas.CodeExpired},
		{"expired manifest", func(c string) {
			w.notice(c, "dev-x", false, v2, w.envelope(v2, 2, func(o *suit.CreateOptions) { o.UseBefore = past }, nil))
		}, true, schemas.CodeExpired},
		{"corrupted chunk", func(c string) { w.notice(c, "dev-x", false, corrupt, w.envelope(corrupt, 2, nil, nil)) }, true, schemas.CodeBadChunk},
		{"chunk table of another image", func(c string) { w.notice(c, "dev-x", false, badTable, w.envelope(badTable, 2, nil, nil)) }, true, schemas.CodeChunkTable},
	}
	for i, tc := range cases {
		camp := "rej-" + string(rune('a'+i))
		before := w.maxCounter("dev-x")
		tc.send(camp)
		r := w.waitReport("dev-x", 20*time.Second, func(r schemas.DeviceReport) bool {
			return r.Counter > before && (!tc.campaign || r.Campaign == camp) &&
				(r.State == schemas.StateFailed || !tc.campaign && r.Code != schemas.CodeNone)
		})
		if r.Code != tc.code {
			t.Errorf("%s: report code %s (%s), want %s", tc.name, r.Code, r.Text, tc.code)
		}
		if r.ActiveVersion != 1 {
			t.Errorf("%s: active version %d after the rejection, want 1", tc.name, r.ActiveVersion)
		}
		t.Logf("%-30s -> %s: %s", tc.name, r.Code, r.Text)
	}

	// Still serving: a good update, with junk on the chunk reply topic and
	// the image's broadcast topic, and one corrupted chunk; the junk is
	// reported by kind and the corrupted chunk fetched again.
	bt, _ := w.topics.Chunks(schemas.DigestHex(sha256Of(v2)))
	w.serve(v2, func(cs *testutil.ChunkServer) {
		cs.Corrupt = func(i uint32, n int) bool { return i == 7 && n == 0 }
		cs.Extra = func(req *schemas.ChunkRequest) [][]byte {
			if req.WantTable {
				return nil
			}
			w.pub.Publish(context.Background(), bt, []byte("junk on the broadcast topic"), broker.PublishOptions{Family: broker.FamilyChunk})
			foreign, _ := schemas.Encode(&schemas.Chunk{V: 1, Image: sha256Of(other), Index: 0, Data: other[:testChunk]})
			oob, _ := schemas.Encode(&schemas.Chunk{V: 1, Image: sha256Of(v2), Index: 4000, Data: v2[:testChunk]})
			return [][]byte{{0xff, 0xfe}, foreign, oob}
		}
	})
	w.notice("good", "dev-x", false, v2, w.envelope(v2, 2, nil, nil))
	cv := w.waitReport("dev-x", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "good" && r.State == schemas.StateCandidateVerified
	})
	for _, want := range []string{"not a chunk", "of another image", "out of range", "dropped 1 chunks that did not match"} {
		if !strings.Contains(cv.Text, want) {
			t.Errorf("candidate-verified report %q does not say %q", cv.Text, want)
		}
	}
	t.Logf("candidate verified: %s", cv.Text)
	w.waitReport("dev-x", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "good" && r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
}

func (w *world) maxCounter(dev string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var c uint64
	for _, r := range w.reports {
		if r.Device == dev && r.Counter > c {
			c = r.Counter
		}
	}
	return c
}

func sha256Of(b []byte) []byte { d := sha256.Sum256(b); return d[:] }
