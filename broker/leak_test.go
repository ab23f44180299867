package broker_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestCloseStopsGoroutines: after Close, a transport leaves no goroutine
// behind (connection managers, dispatchers, consumers), measured against
// a baseline taken with the brokers already running.
func TestCloseStopsGoroutines(t *testing.T) {
	mq := testutil.StartMochi(t, broker.MQTTServerConfig{})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	topics := testutil.UniqueTopics(t)
	// Client-side goroutines only: the servers keep their own (consumers
	// age out on a timer).
	clientGoroutines := func() (int, string) {
		buf := make([]byte, 4<<20)
		dump := string(buf[:runtime.Stack(buf, true)])
		n, out := 0, ""
		for _, g := range strings.Split(dump, "\n\n") {
			if strings.Contains(g, "nats-server") || strings.Contains(g, "mochi-mqtt") {
				continue
			}
			if strings.Contains(g, "firmcast/broker.") || strings.Contains(g, "paho.golang") || strings.Contains(g, "nats.go") {
				n++
				out += g + "\n\n"
			}
		}
		return n, out
	}
	waitGoroutines := func(limit int) (int, string) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, dump := clientGoroutines()
			if n <= limit || time.Now().After(deadline) {
				return n, dump
			}
			time.Sleep(10 * time.Millisecond) // polling a count: there is no event to wait on
		}
	}
	// Warm up once: the first connection starts lazily created server
	// goroutines that stay.
	for _, url := range []string{mq.URL(), ns.URL()} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics})
		if err != nil {
			t.Fatal(err)
		}
		_ = tr.Close(ctx)
		cancel()
	}
	base, _ := waitGoroutines(0)
	for _, url := range []string{mq.URL(), ns.URL()} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics})
		if err != nil {
			t.Fatal(err)
		}
		notice, _ := topics.Notice("dev1")
		rep, _ := topics.Report("dev1")
		if _, err := tr.Subscribe(ctx, rep, func(context.Context, broker.Message) {}, broker.SubscribeOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Subscribe(ctx, notice, func(context.Context, broker.Message) {}, broker.SubscribeOptions{Retained: true}); err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	if n, dump := waitGoroutines(base); n > base {
		t.Fatalf("%d client goroutines after Close, baseline %d:\n%s", n, base, dump)
	}
}
