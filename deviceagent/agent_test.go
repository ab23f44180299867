package deviceagent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestNoticeToConfirmed: one device goes from notice to confirmed; every
// state is reported in order with a strictly increasing counter; every
// chunk is served once.
func TestNoticeToConfirmed(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(2, 40000+5)
	cs := w.serve(v2, nil)
	d := w.newDevice("dev-1", nil)
	d.start()
	w.waitReport("dev-1", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.ActiveVersion == 1 })
	w.notice("camp-1", "dev-1", false, v2, w.envelope(v2, 2, nil, nil))
	r := w.waitState("dev-1", schemas.StateConfirmed, 20*time.Second)
	if r.ActiveVersion != 2 || r.Campaign != "camp-1" {
		t.Errorf("confirmed report %+v: want active version 2, campaign camp-1", r)
	}
	d.stop()
	if a := d.active(); a.Version != 2 || a.Digest != sha256.Sum256(v2) {
		t.Errorf("active image version %d digest %x, want v2", a.Version, a.Digest[:4])
	}
	want := []schemas.State{schemas.StateNotified, schemas.StateManifestVerified, schemas.StateDownloading,
		schemas.StateCandidateVerified, schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial, schemas.StateConfirmed}
	var got []schemas.State
	var last uint64
	for _, r := range w.reportsOf("dev-1") {
		if r.Counter <= last {
			t.Errorf("report counter %d after %d", r.Counter, last)
		}
		last = r.Counter
		if len(got) == 0 || got[len(got)-1] != r.State {
			got = append(got, r.State)
		}
	}
	j := 0
	for _, s := range got {
		if j < len(want) && s == want[j] {
			j++
		}
	}
	if j != len(want) {
		t.Errorf("states reported %v, want the sequence %v", got, want)
	}
	for i, n := range cs.Served() {
		if n != 1 {
			t.Errorf("chunk %d served %d times", i, n)
		}
	}
}

// TestReconnectReports: on every reconnection the agent reports its actual
// active version and state.
func TestReconnectReports(t *testing.T) {
	hub := testutil.NewMemHub()
	w := newWorld(t, schemas.MustTopics("agenttest"), hub.Conn(), func(*testing.T, string) broker.Transport { return hub.Conn() })
	d := w.newDevice("dev-rc", nil)
	d.start()
	first := w.waitReport("dev-rc", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	hub.Reconnect()
	again := w.waitReport("dev-rc", 5*time.Second, func(r schemas.DeviceReport) bool {
		return r.Text == "connected" && r.Counter > first.Counter
	})
	if again.ActiveVersion != 1 || again.State != schemas.StateIdle {
		t.Errorf("reconnect report %+v: want idle on version 1", again)
	}
}

// TestReportCounterLease: report counters rise strictly across more
// reports than one lease covers and across restarts (a reset resumes
// above the persisted ceiling), and the ceiling is persisted a lease at a
// time, not per report.
func TestReportCounterLease(t *testing.T) {
	hub := testutil.NewMemHub()
	w := newWorld(t, schemas.MustTopics("agenttest"), hub.Conn(), func(*testing.T, string) broker.Transport { return hub.Conn() })
	d := w.newDevice("dev-lease", nil)
	var last uint64
	for restart := range 3 {
		d.start()
		r := w.waitReport("dev-lease", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.Counter > last })
		last = r.Counter
		for range counterLease/2 + 3 {
			hub.Reconnect()
			r = w.waitReport("dev-lease", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.Counter > last })
			last = r.Counter
		}
		d.stop()
		st, err := LoadState(d.dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Counter < last || st.Counter >= last+counterLease {
			t.Fatalf("restart %d: persisted ceiling %d, last counter used %d: want a ceiling within one lease at or above it", restart, st.Counter, last)
		}
	}
	var prev uint64
	for _, r := range w.reportsOf("dev-lease") {
		if r.Counter <= prev {
			t.Fatalf("report counter %d after %d", r.Counter, prev)
		}
		prev = r.Counter
	}
	if prev <= 2*counterLease {
		t.Fatalf("last counter %d: the test used fewer counters than two leases", prev)
	}
}

// msgHandler is a slog handler that tells ch of each record whose message
// is msg.
type msgHandler struct {
	msg string
	ch  chan struct{}
}

func (h msgHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h msgHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h msgHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h msgHandler) WithGroup(string) slog.Handler      { return h }

// TestReportCounterLeaseSaveFails: a report whose counter needs a new
// lease is not sent when the ceiling cannot be persisted (the state file's
// place taken by a directory: the rename fails, for root too), and the
// next report leases again once it can: every counter sent is covered by
// a persisted ceiling, and counters still rise strictly.
func TestReportCounterLeaseSaveFails(t *testing.T) {
	hub := testutil.NewMemHub()
	w := newWorld(t, schemas.MustTopics("agenttest"), hub.Conn(), func(*testing.T, string) broker.Transport { return hub.Conn() })
	failed := make(chan struct{}, 1)
	d := w.newDevice("dev-lease-fail", func(c *Config) {
		c.Logger = slog.New(msgHandler{"persisting report counter", failed})
	})
	d.start()
	defer d.stop()
	r := w.waitReport("dev-lease-fail", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	st, err := LoadState(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	ceiling := st.Counter
	for last := r.Counter; last < ceiling; {
		hub.Reconnect()
		last = w.waitReport("dev-lease-fail", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.Counter > last }).Counter
	}
	path := filepath.Join(d.dir, StateFile)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	hub.Reconnect() // its report needs a counter beyond the ceiling
	select {
	case <-failed:
	case <-time.After(5 * time.Second):
		t.Fatal("no failed lease logged")
	}
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	hub.Reconnect()
	next := w.waitReport("dev-lease-fail", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.Counter > ceiling })
	if st, err = LoadState(d.dir); err != nil {
		t.Fatal(err)
	}
	if st.Counter < next.Counter {
		t.Fatalf("report counter %d sent above the persisted ceiling %d", next.Counter, st.Counter)
	}
	var prev uint64
	for _, r := range w.reportsOf("dev-lease-fail") {
		if r.Counter <= prev {
			t.Fatalf("report counter %d after %d", r.Counter, prev)
		}
		if r.Counter == ceiling+1 {
			t.Fatalf("report counter %d sent though its lease could not be persisted", r.Counter)
		}
		if r.Counter > st.Counter {
			t.Fatalf("report counter %d sent above the persisted ceiling %d", r.Counter, st.Counter)
		}
		prev = r.Counter
	}
}

// TestGiveUpNoLoop: an update that keeps failing is retried with backoff,
// then given up with a final report; the retained notice, delivered again
// after a restart, does not start it again.
func TestGiveUpNoLoop(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(13, 8*testChunk)
	d := w.newDevice("dev-g", func(c *Config) { c.MaxAttempts = 2 })
	d.start()
	w.notice("camp-g", "dev-g", false, v2, w.envelope(v2, 2, nil, nil)) // nobody serves v2
	retry := w.waitReport("dev-g", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Code == schemas.CodeNoSource && r.State != schemas.StateFailed
	})
	final := w.waitState("dev-g", schemas.StateFailed, 20*time.Second)
	if final.Code != schemas.CodeNoSource {
		t.Errorf("final report code %s (%s), want no-source", final.Code, final.Text)
	}
	t.Logf("retry: %s; final: %s", retry.Text, final.Text)
	d.stop()
	d.start()
	w.waitReport("dev-g", 5*time.Second, func(r schemas.DeviceReport) bool {
		return r.Text == "connected" && r.Counter > final.Counter
	})
	// A sentinel after the retained notice on the same topic: once its
	// report is in, the retained notice has been handled.
	w.raw("dev-g", false, []byte{0xff})
	w.waitReport("dev-g", 5*time.Second, func(r schemas.DeviceReport) bool {
		return r.Code == schemas.CodeMalformed && r.Counter > final.Counter
	})
	if st := d.agent.State(); st.State != schemas.StateFailed {
		t.Errorf("after restart the state is %s, want failed (the retained notice is not taken again)", st.State)
	}
	for _, r := range w.reportsOf("dev-g") {
		if r.Counter > final.Counter && r.State == schemas.StateNotified {
			t.Errorf("the given-up notice started again after the restart: %+v", r)
		}
	}
}

// TestNoSync: the simulator setting (no fsync) takes the same path.
func TestNoSync(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(14, 6*testChunk)
	w.serve(v2, nil)
	d := w.newDevice("dev-ns", func(c *Config) { c.NoSync = true })
	d.start()
	w.notice("camp-ns", "dev-ns", false, v2, w.envelope(v2, 2, nil, nil))
	w.waitReport("dev-ns", 10*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	d.stop()
	if st, err := LoadState(d.dir); err != nil || st.State != schemas.StateConfirmed {
		t.Errorf("persisted state %v, %v: want confirmed", st.State, err)
	}
}

// TestBootGate: the bootloader runs only inside the gate (taken before,
// released after, once per reboot), and a device whose gate does not open
// stays staged-and-rebooting without running its bootloader.
func TestBootGate(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(15, 6*testChunk)
	w.serve(v2, nil)
	var mu sync.Mutex
	var taken, released int
	d := w.newDevice("dev-gate", func(c *Config) {
		c.BootGate = func(ctx context.Context) (func(), error) {
			mu.Lock()
			defer mu.Unlock()
			if taken != released {
				return nil, fmt.Errorf("gate taken %d times, released %d", taken, released)
			}
			taken++
			return func() { mu.Lock(); released++; mu.Unlock() }, nil
		}
	})
	d.start()
	w.notice("camp-gate", "dev-gate", false, v2, w.envelope(v2, 2, nil, nil))
	w.waitState("dev-gate", schemas.StateConfirmed, 20*time.Second)
	d.stop()
	mu.Lock()
	defer mu.Unlock()
	if taken != 1 || released != 1 {
		t.Errorf("gate taken %d times, released %d: want 1 and 1 (one reboot)", taken, released)
	}

	// A closed gate: the device never gets past rebooting.
	w2 := memWorld(t)
	w2.serve(v2, nil)
	gate := make(chan struct{})
	d2 := w2.newDevice("dev-shut", func(c *Config) {
		c.BootGate = func(ctx context.Context) (func(), error) {
			select {
			case <-gate:
				return func() {}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	})
	d2.start()
	w2.notice("camp-shut", "dev-shut", false, v2, w2.envelope(v2, 2, nil, nil))
	w2.waitState("dev-shut", schemas.StateRebooting, 20*time.Second)
	if a := d2.active(); a.Version != 1 {
		t.Errorf("active version %d behind a closed gate, want 1", a.Version)
	}
	close(gate)
	w2.waitState("dev-shut", schemas.StateConfirmed, 20*time.Second)
	d2.stop()
}

// TestHealthCheckFailsRollsBack: the new image fails its self-test, so the
// agent does not confirm it; the bootloader reverts after its trial boots
// and the report says rolled back, with the reason, on the old version.
func TestHealthCheckFailsRollsBack(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(15, 6*testChunk)
	w.serve(v2, nil)
	d := w.newDevice("dev-h", func(c *Config) {
		c.SelfTest = func(context.Context) error { return errors.New("sensor bus dead") }
	})
	d.start()
	w.notice("camp-h", "dev-h", false, v2, w.envelope(v2, 2, nil, nil))
	r := w.waitState("dev-h", schemas.StateRolledBack, 10*time.Second)
	if r.Code != schemas.CodeBootFailed || !strings.Contains(r.Text, "sensor bus dead") || r.ActiveVersion != 1 {
		t.Errorf("rolled-back report %+v: want boot-failed naming the self-test, on version 1", r)
	}
	t.Logf("rolled back: %s", r.Text)
	d.stop()
	if a := d.active(); a.Version != 1 {
		t.Errorf("active version %d after the rollback, want 1", a.Version)
	}
	for _, r := range w.reportsOf("dev-h") {
		if r.State == schemas.StateConfirmed {
			t.Errorf("confirmed report despite the failed health check")
		}
	}
}
