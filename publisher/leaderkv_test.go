package publisher

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestLeaderReadKV checks the leader read against the direct get it backs
// up: same value and revision for a present key, "not found" for a
// missing, a deleted and a purged key, in the default API and in a
// JetStream domain.
func TestLeaderReadKV(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "leaderread"})
	if err != nil {
		t.Fatal(err)
	}
	lk := newLeaderReadKV(js, kv).(*leaderReadKV)
	if lk.leader.api != "$JS.API." || lk.stream != "KV_leaderread" || lk.subj != "$KV.leaderread." {
		t.Fatalf("names: %q %q %q", lk.leader.api, lk.stream, lk.subj)
	}
	if _, err := kv.Put(ctx, "a", []byte("one")); err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "a", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"b", "c"} {
		if _, err := kv.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	e, err := lk.leaderGet(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Value(), []byte("two")) || e.Revision() != rev || e.Key() != "a" || e.Bucket() != "leaderread" {
		t.Fatalf("leader read of a: %q rev %d, want %q rev %d", e.Value(), e.Revision(), "two", rev)
	}
	for _, k := range []string{"missing", "b", "c"} {
		if _, err := lk.leaderGet(ctx, k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("leader read of %s: %v, want ErrKeyNotFound", k, err)
		}
		if _, err := lk.Get(ctx, k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("Get of %s: %v, want ErrKeyNotFound", k, err)
		}
	}

	jd, err := jetstream.NewWithDomain(nc, "hub")
	if err != nil {
		t.Fatal(err)
	}
	if got := newLeaderReadKV(jd, kv).(*leaderReadKV).leader.api; got != "$JS.hub.API." {
		t.Errorf("domain prefix %q", got)
	}
}
