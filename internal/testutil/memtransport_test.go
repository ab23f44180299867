package testutil

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// collector counts the messages a subscription handled.
type collector struct {
	mu  sync.Mutex
	got []broker.Message
}

func (c *collector) handle(_ context.Context, m broker.Message) {
	c.mu.Lock()
	c.got = append(c.got, m)
	c.mu.Unlock()
}

func (c *collector) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

func waitIdle(t *testing.T, h *MemHub) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.Idle() {
		if time.Now().After(deadline) {
			t.Fatal("hub not idle")
		}
		time.Sleep(time.Millisecond) // polling a condition, not standing in for one
	}
}

// TestMatch: both forms, the wildcards of each.
func TestMatch(t *testing.T) {
	for _, c := range []struct {
		nats          bool
		filter, topic string
		want          bool
	}{
		{false, "a/+/c", "a/b/c", true},
		{false, "a/#", "a/b/c", true},
		{false, "a/+", "a/b/c", false},
		{false, "a/b", "a/b", true},
		{true, "a.*.c", "a.b.c", true},
		{true, "a.>", "a.b.c", true},
		{true, "a.>", "a", false},
		{true, "a.*", "a.b.c", false},
	} {
		h := NewMemHub()
		h.NATS = c.nats
		if got := h.match(c.filter, c.topic); got != c.want {
			t.Errorf("nats=%v match(%q, %q) = %v, want %v", c.nats, c.filter, c.topic, got, c.want)
		}
	}
}

func TestMemHubSharedDropsRetained(t *testing.T) {
	ctx := context.Background()
	for _, nats := range []bool{false, true} {
		h := NewMemHub()
		h.NATS = nats
		topics := schemas.MustTopics("mh")
		rep, _ := topics.Report("d1")
		ct, _ := topics.Chunks("ab")
		nt, _ := topics.Notice("d1")
		// Shared: three members share five messages round robin; a plain
		// subscriber gets all five.
		shared := make([]*collector, 3)
		for i := range shared {
			shared[i] = &collector{}
			if _, err := h.Conn().Subscribe(ctx, topics.ReportsAll(), shared[i].handle, broker.SubscribeOptions{Shared: true}); err != nil {
				t.Fatal(err)
			}
		}
		all := &collector{}
		h.Conn().Subscribe(ctx, topics.ReportsAll(), all.handle, broker.SubscribeOptions{})
		pub := h.Conn()
		for range 5 {
			pub.Publish(ctx, rep, []byte("r"), broker.PublishOptions{Family: broker.FamilyReport})
		}
		waitIdle(t, h)
		if a, b, c, n := shared[0].n(), shared[1].n(), shared[2].n(), all.n(); a+b+c != 5 || a < 1 || b < 1 || c < 1 || n != 5 {
			t.Errorf("nats=%v: shared got %d %d %d, plain %d; want 5 spread, 5", nats, a, b, c, n)
		}
		// Drops: per client and for chunks only; DropChunk for everyone.
		lossy, clean := h.Conn(), h.Conn()
		lc, cc := &collector{}, &collector{}
		lossy.Subscribe(ctx, ct, lc.handle, broker.SubscribeOptions{Family: broker.FamilyChunk})
		clean.Subscribe(ctx, ct, cc.handle, broker.SubscribeOptions{Family: broker.FamilyChunk})
		lossy.SetDrop(func(string, []byte) bool { return true })
		pub.Publish(ctx, ct, []byte("c1"), broker.PublishOptions{Family: broker.FamilyChunk})
		pub.Publish(ctx, ct, []byte("x"), broker.PublishOptions{Family: broker.FamilyControl})
		h.DropChunk = func(p []byte) bool { return string(p) == "c2" }
		pub.Publish(ctx, ct, []byte("c2"), broker.PublishOptions{Family: broker.FamilyChunk})
		lossy.SetDrop(nil)
		pub.Publish(ctx, ct, []byte("c3"), broker.PublishOptions{Family: broker.FamilyChunk})
		waitIdle(t, h)
		if lc.n() != 2 || cc.n() != 3 {
			t.Errorf("nats=%v: lossy got %d (want 2: control, c3), clean %d (want 3: c1, control, c3)", nats, lc.n(), cc.n())
		}
		// Retained, listed in the hub's form, and delivered on subscribe.
		pub.Publish(ctx, nt, []byte("n"), broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
		want := nt.MQTT
		if nats {
			want = nt.NATS
		}
		if r := h.Retained(); len(r) != 1 || r[0] != want {
			t.Errorf("nats=%v: retained %v, want [%s]", nats, r, want)
		}
		late := &collector{}
		h.Conn().Subscribe(ctx, topics.NoticesAll(), late.handle, broker.SubscribeOptions{Retained: true})
		waitIdle(t, h)
		if late.n() != 1 || !late.got[0].Retained || late.got[0].Topic != want {
			t.Errorf("nats=%v: late subscriber got %+v", nats, late.got)
		}
		pub.Publish(ctx, nt, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
		if r := h.Retained(); len(r) != 0 {
			t.Errorf("nats=%v: retained after clear %v", nats, r)
		}
	}
}

func TestMemHubRequestReplyClose(t *testing.T) {
	ctx := context.Background()
	h := NewMemHub()
	topics := schemas.MustTopics("mh")
	api, _ := topics.API("echo")
	srv := h.Conn()
	if _, err := srv.Subscribe(ctx, api, func(ctx context.Context, m broker.Message) {
		srv.Reply(ctx, m, append([]byte("re:"), m.Payload...))
	}, broker.SubscribeOptions{Shared: true}); err != nil {
		t.Fatal(err)
	}
	cl := h.Conn()
	got, err := cl.Request(ctx, api, []byte("hi"))
	if err != nil || string(got) != "re:hi" {
		t.Fatalf("request: %q, %v", got, err)
	}
	other, _ := topics.API("nobody")
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := cl.Request(tctx, other, nil); !errors.Is(err, broker.ErrTimeout) {
		t.Errorf("unanswered request: %v, want ErrTimeout", err)
	}
	if err := srv.Reply(ctx, broker.Message{Topic: "x"}, nil); err == nil {
		t.Error("reply without a reply topic: no error")
	}
	cl.Close(ctx)
	if err := cl.Publish(ctx, api, nil, broker.PublishOptions{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("publish after close: %v", err)
	}
	if _, err := cl.Subscribe(ctx, api, func(context.Context, broker.Message) {}, broker.SubscribeOptions{}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("subscribe after close: %v", err)
	}
	waitIdle(t, h)
}
