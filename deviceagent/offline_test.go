package deviceagent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// failFastLink is a device transport whose link can be cut. While it is
// cut, publishes and subscribes fail at once with a connection error
// instead of waiting for the reconnection (as a client library without an
// offline queue does), and messages for the device are lost.
type failFastLink struct {
	broker.Transport
	down    atomic.Bool
	refused atomic.Int64 // publishes and subscribes failed while cut
	changed chan struct{}
}

// errLinkDown is what a fail-fast client returns while its connection is
// down.
var errLinkDown = &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}

func newFailFastLink(tr broker.Transport) *failFastLink {
	return &failFastLink{Transport: tr, changed: make(chan struct{}, 1)}
}

func (l *failFastLink) refuse(what string) error {
	l.refused.Add(1)
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return fmt.Errorf("link down (%s): %w", what, errLinkDown)
}

func (l *failFastLink) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if l.down.Load() {
		return l.refuse("publish " + t.MQTT)
	}
	return l.Transport.Publish(ctx, t, b, o)
}

func (l *failFastLink) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if l.down.Load() {
		return nil, l.refuse("subscribe " + f.MQTT)
	}
	return l.Transport.Subscribe(ctx, f, func(ctx context.Context, m broker.Message) {
		if !l.down.Load() {
			h(ctx, m)
		}
	}, o)
}

func (l *failFastLink) OnConnect(f func()) (stop func()) {
	if rc, ok := l.Transport.(Reconnector); ok {
		return rc.OnConnect(f)
	}
	return func() {}
}

// waitRefused waits until the link has refused at least n operations.
func (l *failFastLink) waitRefused(t *testing.T, n int64, d time.Duration, why func() string) {
	t.Helper()
	l.waitUntil(t, func() bool { return l.refused.Load() >= n }, d, func() string {
		return fmt.Sprintf("the link refused %d operations, want %d: %s", l.refused.Load(), n, why())
	})
}

// waitUntil waits until ok holds, checked after each refused operation.
func (l *failFastLink) waitUntil(t *testing.T, ok func() bool, d time.Duration, why func() string) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for !ok() {
		select {
		case <-l.changed:
		case <-deadline.C:
			t.Fatalf("not within %v: %s", d, why())
		}
	}
}

// TestOfflineDoesNotCountAsAttempt cuts a device's fail-fast link
// mid-download for much longer than its retry cap (well beyond
// MaxAttempts fetch attempts), then restores it: the agent must not give
// the update up (a fetch that reached no source is not an attempt), must
// resume from its persisted progress without fetching a chunk it held
// again, and confirm the new image.
func TestOfflineDoesNotCountAsAttempt(t *testing.T) {
	hub := testutil.NewMemHub()
	var link *failFastLink
	w := newWorld(t, schemas.MustTopics("agentoff"), hub.Conn(), func(*testing.T, string) broker.Transport {
		link = newFailFastLink(hub.Conn())
		return link
	})
	v2 := testImage(11, 40*testChunk+7)
	nChunks := (len(v2) + testChunk - 1) / testChunk
	const cutAt = 12 // chunks verified when the link is cut
	// The chunks after the cut are lost on their first serving, so that
	// the download needs the link after the cut (the chunk server answers
	// a request at once, faster than the device writes).
	cs := w.serve(v2, func(cs *testutil.ChunkServer) {
		cs.Drop = func(i uint32, n int) bool { return n == 0 && i >= cutAt+4 }
	})
	var once sync.Once
	d := w.newDevice("dev-off", func(c *Config) {
		c.MaxAttempts, c.RetryBase, c.RetryCap = 3, 20*time.Millisecond, 100*time.Millisecond
		c.OnProgress = func(done, total uint64) {
			if done >= cutAt*testChunk {
				once.Do(func() { link.down.Store(true) })
			}
		}
	})
	d.start()
	w.notice("camp-off", "dev-off", false, v2, w.envelope(v2, 2, nil, nil))
	state := func() string {
		r, err := LoadState(d.dir)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("agent state %s, attempts %d, %s %s", r.State, r.Attempts, r.Code, r.Text)
	}
	// Each fetch attempt makes at least two refused subscribes (the fetcher
	// retries the broker source once) and a refused report: 40 refusals
	// are more than ten attempts, and several retry caps.
	w.waitReport("dev-off", 20*time.Second, func(r schemas.DeviceReport) bool { return r.State == schemas.StateDownloading })
	link.waitRefused(t, 40, 20*time.Second, state)
	rec, err := LoadState(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut off: %d operations refused; %s", link.refused.Load(), state())
	if rec.State != schemas.StateDownloading || rec.Attempts != 0 {
		t.Fatalf("while cut off: %s; want downloading, no attempt counted", state())
	}
	held := d.heldChunks(v2)
	if len(held) < cutAt || len(held) >= nChunks {
		t.Fatalf("%d of %d chunks held at the cut, want at least %d and not all", len(held), nChunks, cutAt)
	}
	before := cs.Served()
	link.down.Store(false)
	w.waitReport("dev-off", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	d.stop()
	after := cs.Served()
	for i := uint32(0); i < uint32(nChunks); i++ {
		if held[i] && after[i] != before[i] {
			t.Errorf("chunk %d was held at the cut but served again (%d -> %d)", i, before[i], after[i])
		}
	}
	if a := d.active(); a.Version != 2 {
		t.Errorf("active version %d, want 2", a.Version)
	}
	for _, r := range w.reportsOf("dev-off") {
		if r.State == schemas.StateFailed {
			t.Errorf("failed report: %s %s", r.Code, r.Text)
		}
	}
}

// TestOfflineResumesOnReconnect cuts a device's fail-fast link with a
// retry backoff of an hour: when the link is back and the transport
// reports the reconnection, the agent tries again at once instead of
// waiting out its backoff.
func TestOfflineResumesOnReconnect(t *testing.T) {
	hub := testutil.NewMemHub()
	var link *failFastLink
	w := newWorld(t, schemas.MustTopics("agentrec"), hub.Conn(), func(*testing.T, string) broker.Transport {
		link = newFailFastLink(hub.Conn())
		return link
	})
	v2 := testImage(13, 30*testChunk+3)
	const cutAt = 8
	w.serve(v2, func(cs *testutil.ChunkServer) {
		cs.Drop = func(i uint32, n int) bool { return n == 0 && i >= cutAt+4 }
	})
	var once sync.Once
	d := w.newDevice("dev-rec", func(c *Config) {
		c.RetryBase, c.RetryCap = time.Hour, time.Hour
		c.OnProgress = func(done, total uint64) {
			if done >= cutAt*testChunk {
				once.Do(func() { link.down.Store(true) })
			}
		}
	})
	d.start()
	w.notice("camp-rec", "dev-rec", false, v2, w.envelope(v2, 2, nil, nil))
	// The failed fetch is persisted (with the time of the next attempt)
	// before its report is refused.
	var rec Record
	link.waitUntil(t, func() bool {
		var err error
		rec, err = LoadState(d.dir)
		return err == nil && rec.NextAttempt != 0
	}, 20*time.Second, func() string {
		return fmt.Sprintf("state %s, attempts %d, %s %s: no retry scheduled", rec.State, rec.Attempts, rec.Code, rec.Text)
	})
	if rec.State != schemas.StateDownloading || rec.Attempts != 0 {
		t.Fatalf("while cut off: state %s, attempts %d; want downloading, no attempt counted", rec.State, rec.Attempts)
	}
	link.down.Store(false)
	hub.Reconnect()
	w.waitReport("dev-rec", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
}
