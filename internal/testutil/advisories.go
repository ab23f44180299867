package testutil

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamAdvisories records the stream-created and stream-updated
// advisories a NATS server sends: which JetStream streams (buckets and
// object stores included) were created or updated while it watched.
// Start it with WatchStreamAdvisories; call Sync before reading it.
type StreamAdvisories struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu      sync.Mutex
	created []string
	updated []string
	changed chan struct{}
}

// WatchStreamAdvisories connects to natsURL (anonymous) and records the
// stream advisories of its global account until cleanup.
func WatchStreamAdvisories(t testing.TB, natsURL string) *StreamAdvisories {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("WatchStreamAdvisories: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("WatchStreamAdvisories: %v", err)
	}
	a := &StreamAdvisories{nc: nc, js: js, changed: make(chan struct{}, 1)}
	for prefix, list := range map[string]*[]string{
		"$JS.EVENT.ADVISORY.STREAM.CREATED.": &a.created,
		"$JS.EVENT.ADVISORY.STREAM.UPDATED.": &a.updated,
	} {
		if _, err := nc.Subscribe(prefix+">", func(m *nats.Msg) {
			a.mu.Lock()
			*list = append(*list, strings.TrimPrefix(m.Subject, prefix))
			a.mu.Unlock()
			select {
			case a.changed <- struct{}{}:
			default:
			}
		}); err != nil {
			t.Fatalf("WatchStreamAdvisories: %v", err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("WatchStreamAdvisories: %v", err)
	}
	return a
}

// Sync makes sure every advisory caused so far has been recorded: it
// creates and deletes a sentinel stream and waits for its created
// advisory, which the server sends after the earlier ones (one queue).
func (a *StreamAdvisories) Sync(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := "SYNC_" + UniqueRoot(t)
	if _, err := a.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"sync." + name}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatalf("StreamAdvisories.Sync: %v", err)
	}
	defer a.js.DeleteStream(ctx, name)
	for {
		a.mu.Lock()
		for i, n := range a.created {
			if n == name {
				a.created = append(a.created[:i:i], a.created[i+1:]...)
				a.mu.Unlock()
				return
			}
		}
		a.mu.Unlock()
		select {
		case <-a.changed:
		case <-ctx.Done():
			t.Fatalf("StreamAdvisories.Sync: no advisory for the sentinel stream: %v", ctx.Err())
		}
	}
}

// Created and Updated return the names of the streams created and
// updated so far, in order (a stream updated twice appears twice).
func (a *StreamAdvisories) Created() []string { return a.list(&a.created) }

// Updated: see Created.
func (a *StreamAdvisories) Updated() []string { return a.list(&a.updated) }

func (a *StreamAdvisories) list(l *[]string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), *l...)
}
