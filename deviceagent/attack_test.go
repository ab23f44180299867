package deviceagent

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// attacker is another device's connection to the same (open) broker: on
// the in-memory hub, as on a broker without ACLs, it can publish on any
// topic, the victim's notice topic included.
type attacker struct {
	w  *world
	tr broker.Transport
}

func (w *world) attacker() *attacker {
	return &attacker{w: w, tr: w.dial(w.t, "dev-mallory")}
}

// publish puts b on victim's notice topic, retained, as the attacker.
func (a *attacker) publish(victim string, b []byte) {
	a.w.t.Helper()
	tp, err := a.w.topics.Notice(victim)
	if err != nil {
		a.w.t.Fatal(err)
	}
	if err := a.tr.Publish(context.Background(), tp, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		a.w.t.Fatal(err)
	}
}

// securityReports returns dev's security reports after counter from.
func (w *world) securityReports(dev string, from uint64) []schemas.DeviceReport {
	var out []schemas.DeviceReport
	for _, r := range w.reportsOf(dev) {
		if r.Counter > from && r.Security {
			out = append(out, r)
		}
	}
	return out
}

// TestForgedNoticeCannotBlockCampaign: a device identity on the broker
// publishes, on the victim's notice topic, notices naming the campaign
// the operator is about to run, before the operator does: (1) signed by
// the attacker's own key, carrying the genuine image and a tampered
// envelope; (2) a genuine, validly signed envelope of an older campaign
// replayed under the new campaign's id and re-signed by the attacker;
// (3) a genuine signed notice of the same campaign for another device
// (misrouted); (4) that genuine notice with its target changed. Each is
// refused before anything in it is recorded: only security reports, none
// naming a campaign, at most three at once. Then the genuine notice
// installs. On the code before the fix, notice (1) marked the campaign
// and image done as a signature failure, reported as the campaign's
// outcome, and the genuine notice was ignored.
func TestForgedNoticeCannotBlockCampaign(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(21, 12*testChunk+5)
	old := testImage(22, 9*testChunk)
	w.serve(v2, nil)
	d := w.newDevice("dev-v", func(c *Config) { c.SecurityInterval = time.Hour })
	d.start()
	w.waitReport("dev-v", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	mallory := w.attacker()
	rogue := signerFor(t, testKey(66))
	const campaign = "c-spring"
	genuine := w.envelope(v2, 2, nil, nil)
	tampered := append([]byte(nil), genuine...)
	tampered[len(tampered)-1] ^= 1
	forged := []struct {
		name string
		b    []byte
	}{
		{"own key, genuine image, tampered envelope", w.signNotice(w.newNotice(campaign, "dev-v", v2, tampered), rogue)},
		{"replayed envelope under a new campaign id", w.signNotice(w.newNotice(campaign, "dev-v", old, w.envelope(old, 2, nil, nil)), rogue)},
		{"genuine notice of another device", w.encodeNotice(campaign, "dev-other", v2, genuine)},
		{"genuine notice, target rewritten", func() []byte {
			n := w.newNotice(campaign, "dev-other", v2, genuine)
			w.signNotice(n, w.signer)
			n.Target = "dev-v"
			b, err := schemas.Encode(n)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}()},
	}
	from := w.maxCounter("dev-v")
	for _, f := range forged {
		mallory.publish("dev-v", f.b)
	}
	// Three security reports at once; the fourth refusal is held back by
	// the rate limit (an hour here) and counted.
	if !eventually(10*time.Second, func() bool {
		d.agent.mu.Lock()
		missed := d.agent.secMissed
		d.agent.mu.Unlock()
		return len(w.securityReports("dev-v", from)) == 3 && missed == 1
	}) {
		t.Errorf("want 3 security reports and 1 held back; reports:\n%s", w.dump("dev-v"))
	}
	for _, r := range w.securityReports("dev-v", from) {
		t.Logf("security report: %s: %s", r.Code, r.Text)
	}
	if st := d.agent.State(); st.Campaign != "" || len(st.Done) != 0 || st.State != schemas.StateIdle {
		t.Errorf("after forged notices the agent recorded campaign %q, done %v, state %s", st.Campaign, st.Done, st.State)
	}
	w.notice(campaign, "dev-v", false, v2, genuine)
	w.waitReport("dev-v", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == campaign && r.State == schemas.StateConfirmed && r.ActiveVersion == 2 &&
			r.Counter > from && bytes.Equal(d.agent.State().Image, sha256Of(v2))
	})
	for _, r := range w.reportsOf("dev-v") {
		switch {
		case r.Security && r.Campaign != "":
			t.Errorf("security report names campaign %q", r.Campaign)
		case r.Counter > from && r.Campaign == campaign && r.Code != schemas.CodeNone:
			t.Errorf("campaign %s got a refusal as its outcome: %s %s %s", campaign, r.State, r.Code, r.Text)
		}
	}
	if n := len(w.securityReports("dev-v", from)); n != 3 {
		t.Errorf("%d security reports for 4 forged notices within the rate limit, want 3", n)
	}
}

// TestMisroutedNoticeNotAnOutcome: a confirmed device receives another
// device's genuine notice of the same campaign (copied onto its topic by a
// device on an open broker). It reports a security event, not a rejection
// naming the campaign, so the campaign cannot count it as failed; its
// state and outcome are unchanged. On the code before the fix it reported
// device-mismatch with the campaign's id.
func TestMisroutedNoticeNotAnOutcome(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(23, 8*testChunk)
	w.serve(v2, nil)
	d := w.newDevice("dev-16", nil)
	d.start()
	env := w.envelope(v2, 2, nil, nil)
	w.notice("c-100", "dev-16", false, v2, env)
	w.waitReport("dev-16", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	from := w.maxCounter("dev-16")
	w.attacker().publish("dev-16", w.encodeNotice("c-100", "dev-3", v2, env))
	r := w.waitReport("dev-16", 10*time.Second, func(r schemas.DeviceReport) bool { return r.Counter > from && r.Code != schemas.CodeNone })
	if !r.Security || r.Campaign != "" || r.Code != schemas.CodeDeviceMismatch || r.State != schemas.StateConfirmed {
		t.Errorf("misrouted notice reported as %+v; want a security event naming no campaign", r)
	}
	if st := d.agent.State(); st.State != schemas.StateConfirmed || st.Campaign != "c-100" {
		t.Errorf("agent state %s campaign %s after a misrouted notice", st.State, st.Campaign)
	}
}

// TestSourceHintsNotFollowed: a notice (validly signed here, as by a
// compromised or misconfigured backend) names an HTTP server and a local
// directory holding the image as free sources, cheaper than the broker.
// The agent contacts neither: sources come from the signed manifest and
// its own configuration. A signed manifest's file:// URI is followed only
// inside Config.FileDirs. On the code before the fix the agent chose the
// hinted HTTP source and sent it requests.
func TestSourceHintsNotFollowed(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(24, 10*testChunk+1)
	w.serve(v2, nil)
	var hits atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(rw, "nothing here", http.StatusNotFound)
	}))
	defer evil.Close()
	outside := t.TempDir() // holds the image, not a configured directory
	allowed := t.TempDir()
	for _, dir := range []string{outside, allowed} {
		writeImageFiles(t, dir, v2)
	}
	d := w.newDevice("dev-h", func(c *Config) {
		c.Prices = map[string]float64{"broker": 1e-6, "http": 0, "file": 0}
		c.FileDirs = []string{allowed}
	})
	d.start()
	w.notice("c-hints", "dev-h", false, v2, w.envelope(v2, 2, nil, nil),
		schemas.SourceHint{Kind: schemas.SourceHTTP, URI: evil.URL + "/steal?from=dev-h"},
		schemas.SourceHint{Kind: schemas.SourceFile, URI: outside})
	w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool { return r.State == schemas.StateConfirmed })
	if n := hits.Load(); n != 0 {
		t.Errorf("the hinted HTTP server got %d requests", n)
	}
	for _, text := range decisions(w, "dev-h") {
		if strings.Contains(text, outside) || strings.Contains(text, evil.URL) {
			t.Errorf("a hinted source was considered: %s", text)
		}
	}
	// A signed manifest's file URI: outside FileDirs not followed, inside
	// followed.
	v3 := testImage(25, 10*testChunk+2)
	w.serve(v3, nil)
	writeImageFiles(t, outside, v3)
	writeImageFiles(t, allowed, v3)
	env := w.envelope(v3, 3, func(o *suit.CreateOptions) {
		o.URIs = []string{"file://" + filepath.Join(outside, schemas.DigestHex(sha256Of(v3))), "file://" + filepath.Join(allowed, schemas.DigestHex(sha256Of(v3)))}
	}, nil)
	from := len(decisions(w, "dev-h"))
	w.notice("c-files", "dev-h", false, v3, env)
	w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "c-files" && r.State == schemas.StateConfirmed
	})
	got := decisions(w, "dev-h")[from:]
	if len(got) == 0 || !strings.Contains(got[0], `chose "file `+allowed) {
		t.Errorf("decisions %q: want the file inside the allowed directory", got)
	}
	for _, text := range got {
		if strings.Contains(text, outside) {
			t.Errorf("a file outside the allowed directories was considered: %s", text)
		}
	}
}

// decisions returns the source decision texts dev reported.
func decisions(w *world, dev string) []string {
	var out []string
	for _, r := range w.reportsOf(dev) {
		if strings.HasPrefix(r.Text, "source decision") {
			out = append(out, r.Text)
		}
	}
	return out
}

// writeImageFiles writes img and its chunk table into dir, named by digest.
func writeImageFiles(t *testing.T, dir string, img []byte) {
	t.Helper()
	tab, err := schemas.BuildChunkTable(bytes.NewReader(img), testChunk)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := schemas.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, schemas.DigestHex(sha256Of(img)))
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+fetcher.TableSuffix, tb, 0o600); err != nil {
		t.Fatal(err)
	}
}

// flakyBroker is a device transport whose broker does not answer at
// first: its first subscribes time out (as a subscribe to a broker that
// is down or overloaded does), and the publishes failPublish picks time
// out too.
type flakyBroker struct {
	broker.Transport
	mu             sync.Mutex
	subscribeFails int                                  // subscribes still to time out
	subscribes     int                                  // subscribes tried
	failPublish    func(t schemas.Topic, b []byte) bool // true: this publish fails
}

func (f *flakyBroker) Subscribe(ctx context.Context, t schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	f.mu.Lock()
	f.subscribes++
	fail := f.subscribeFails > 0
	if fail {
		f.subscribeFails--
	}
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("subscribe %s: no answer from the broker: %w", t.MQTT, context.DeadlineExceeded)
	}
	return f.Transport.Subscribe(ctx, t, h, o)
}

func (f *flakyBroker) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	f.mu.Lock()
	fail := f.failPublish != nil && f.failPublish(t, b)
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("publish %s: %w", t.MQTT, context.DeadlineExceeded)
	}
	return f.Transport.Publish(ctx, t, b, o)
}

// TestAgentSurvivesBrokerTimeouts: the agent's first subscribes time out
// (three, each after the agent's per-try limit) and its health-check
// report fails twice: it keeps trying with backoff, comes up (reports
// "connected") once the broker answers, and confirms the update instead
// of reverting it. On the code before the fix, Run returned the first
// subscribe error and the agent stopped.
func TestAgentSurvivesBrokerTimeouts(t *testing.T) {
	hub := testutil.NewMemHub()
	var fb *flakyBroker
	w := newWorld(t, schemas.MustTopics("agentflaky"), hub.Conn(), func(*testing.T, string) broker.Transport {
		fb = &flakyBroker{Transport: hub.Conn(), subscribeFails: 3}
		return fb
	})
	v2 := testImage(26, 6*testChunk)
	w.serve(v2, nil)
	d := w.newDevice("dev-f", nil)
	healthFails := 2
	d.tune = func(c *Config) {
		c.RetryBase, c.RetryCap = 10*time.Millisecond, 50*time.Millisecond
	}
	d.start()
	fb.mu.Lock()
	fb.failPublish = func(t schemas.Topic, b []byte) bool {
		var r schemas.DeviceReport
		if schemas.Decode(b, &r) != nil || r.Text != "health check" || healthFails == 0 {
			return false
		}
		healthFails--
		return true
	}
	fb.mu.Unlock()
	w.waitReport("dev-f", 30*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	select {
	case err := <-d.done:
		t.Fatalf("agent stopped: %v", err)
	default:
	}
	fb.mu.Lock()
	tries := fb.subscribes
	fb.mu.Unlock()
	if tries < 4 {
		t.Errorf("%d subscribes tried, want at least 4 (3 timed out)", tries)
	}
	w.notice("c-flaky", "dev-f", false, v2, w.envelope(v2, 2, nil, nil))
	w.waitReport("dev-f", 30*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "c-flaky" && r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if healthFails != 0 {
		t.Errorf("%d health-check publishes left to fail", healthFails)
	}
}

// eventually reports whether cond holds within d (checked every few
// milliseconds).
func eventually(d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			return false
		}
	}
	return true
}

// TestNoticeAndFirmwareKeysSeparate: a device whose firmware is signed
// offline (Trust: the operator's key) trusts the publisher's key for
// notices only (NoticeTrust). The operator's envelope in a notice signed
// by the publisher installs; a notice signed by the operator's key is not
// the campaign authority's and is refused as a security event; and the
// publisher's key, which signs notices, cannot sign firmware: its envelope
// fails as the campaign's outcome (untrusted-key), and nothing installs.
func TestNoticeAndFirmwareKeysSeparate(t *testing.T) {
	w := memWorld(t) // w.signer: the operator's firmware key
	server := signerFor(t, testKey(7))
	v2 := testImage(27, 6*testChunk)
	v3 := testImage(28, 6*testChunk)
	w.serve(v2, nil)
	w.serve(v3, nil)
	d := w.newDevice("dev-k", func(c *Config) { c.NoticeTrust = suit.TrustAnchors{testKey(7).Public()} })
	d.start()
	w.waitReport("dev-k", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	from := w.maxCounter("dev-k")
	w.raw("dev-k", false, w.encodeNotice("c-op", "dev-k", v2, w.envelope(v2, 2, nil, nil))) // signed by the operator's key
	r := w.waitReport("dev-k", 10*time.Second, func(r schemas.DeviceReport) bool { return r.Counter > from && r.Code != schemas.CodeNone })
	if !r.Security || r.Code != schemas.CodeUntrustedKey {
		t.Errorf("notice signed by the firmware key: %+v, want a security event (untrusted-key)", r)
	}
	w.raw("dev-k", false, w.signNotice(w.newNotice("c-rogue-fw", "dev-k", v3, w.envelope(v3, 3, nil, server)), server))
	r = w.waitReport("dev-k", 20*time.Second, func(r schemas.DeviceReport) bool { return r.Campaign == "c-rogue-fw" && r.State == schemas.StateFailed })
	if r.Code != schemas.CodeUntrustedKey || r.ActiveVersion != 1 {
		t.Errorf("firmware signed by the notice key: %s %s (active %d), want failed untrusted-key on version 1", r.Code, r.Text, r.ActiveVersion)
	}
	w.raw("dev-k", false, w.signNotice(w.newNotice("c-good", "dev-k", v2, w.envelope(v2, 2, nil, nil)), server))
	w.waitReport("dev-k", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "c-good" && r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
}
