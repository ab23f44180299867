package jsensure_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/jsensure"
	"github.com/firmcast/firmcast/internal/testutil"
)

func TestDiffers(t *testing.T) {
	// have is what a server returns for want: its defaults filled in.
	want := jetstream.StreamConfig{Name: "N", Subjects: []string{"a.*.n"}, MaxMsgsPerSubject: 1, Replicas: 1, AllowDirect: true}
	have := want
	have.MaxMsgs, have.MaxBytes, have.MaxMsgSize, have.MaxConsumers = -1, -1, -1, -1
	have.Duplicates = 2 * time.Minute
	have.Sources = []*jetstream.StreamSource{}
	have.Metadata = map[string]string{"_nats.req.level": "0"}
	with := func(f func(*jetstream.StreamConfig)) jetstream.StreamConfig {
		c := have
		f(&c)
		return c
	}
	for _, c := range []struct {
		name       string
		want, have jetstream.StreamConfig
		differs    bool
	}{
		{"same", want, want, false},
		{"server defaults", want, have, false},
		{"description added", with(func(c *jetstream.StreamConfig) { c.Description = "x" }), have, true},
		{"description only on the server", want, with(func(c *jetstream.StreamConfig) { c.Description = "x" }), false},
		{"direct get off on the server", want, with(func(c *jetstream.StreamConfig) { c.AllowDirect = false }), true},
		{"other subjects", want, with(func(c *jetstream.StreamConfig) { c.Subjects = []string{"b.*.n"} }), true},
		{"more history", want, with(func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 5 }), true},
		{"replicas", want, with(func(c *jetstream.StreamConfig) { c.Replicas = 3 }), true},
		{"our metadata kept", with(func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"k": "v"} }),
			with(func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"k": "v", "_nats.ver": "2.11.0"} }), false},
		{"our metadata lost", with(func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"k": "v"} }), have, true},
		{"deny delete wanted", with(func(c *jetstream.StreamConfig) { c.DenyDelete = true }), have, true},
	} {
		if got := jsensure.Differs(c.want, c.have); got != c.differs {
			t.Errorf("%s: Differs = %v, want %v", c.name, got, c.differs)
		}
	}
}

// TestEnsureOnServers starts stream, bucket and object-store creation from
// many clients at once, on the embedded nats-server and on a Debian
// nats-server 2.9.10 process: every call succeeds, each store is created
// once and never updated, a second round sends nothing, a changed
// setting is updated once, and the server is still up. On 2.9.10,
// nats.go's CreateOrUpdate (an update first) racing a create panics the
// server.
func TestEnsureOnServers(t *testing.T) {
	for _, srv := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"embedded", func(t *testing.T) string { return testutil.StartNATS(t, broker.NATSServerConfig{}).URL() }},
		{"nats-server-2.9", func(t *testing.T) string { return testutil.StartNATSProcess(t).URL() }},
	} {
		t.Run(srv.name, func(t *testing.T) {
			url := srv.url(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			adv := testutil.WatchStreamAdvisories(t, url)
			const clients = 16
			conns := make([]jetstream.JetStream, clients)
			for i := range conns {
				nc, err := nats.Connect(url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				if conns[i], err = jetstream.New(nc); err != nil {
					t.Fatal(err)
				}
			}
			stream := jetstream.StreamConfig{Name: "S", Description: "s", Subjects: []string{"s.*.n"}, MaxMsgsPerSubject: 1, Replicas: 1, AllowDirect: true}
			kv := jetstream.KeyValueConfig{Bucket: "b", Description: "b", History: 1, Replicas: 1}
			obj := jetstream.ObjectStoreConfig{Bucket: "o", Description: "o", Replicas: 1}
			round := func() []error {
				var wg sync.WaitGroup
				errs := make([]error, 3*clients)
				start := make(chan struct{})
				for i, js := range conns {
					wg.Add(3)
					go func() {
						defer wg.Done()
						<-start
						_, errs[3*i] = jsensure.Stream(ctx, js, stream)
					}()
					go func() {
						defer wg.Done()
						<-start
						_, errs[3*i+1] = jsensure.KeyValue(ctx, js, kv)
					}()
					go func() {
						defer wg.Done()
						<-start
						_, errs[3*i+2] = jsensure.ObjectStore(ctx, js, obj)
					}()
				}
				close(start)
				wg.Wait()
				return errs
			}
			for r := range 2 {
				for i, err := range round() {
					if err != nil {
						t.Errorf("round %d, call %d: %v", r, i, err)
					}
				}
				adv.Sync(t)
				if c, u := adv.Created(), adv.Updated(); fmt.Sprint(slices.Sorted(slices.Values(c))) != "[KV_b OBJ_o S]" || len(u) != 0 {
					t.Errorf("after round %d: created %v, updated %v; want each store created once and none updated", r, c, u)
				}
			}
			// A setting that really changed is updated, once.
			stream.Description = "s, version 2"
			s, err := jsensure.Stream(ctx, conns[0], stream)
			if err != nil {
				t.Fatal(err)
			}
			if d := s.CachedInfo().Config.Description; d != stream.Description {
				t.Errorf("description %q after the update, want %q", d, stream.Description)
			}
			adv.Sync(t)
			if u := adv.Updated(); fmt.Sprint(u) != "[S]" {
				t.Errorf("updated %v after one changed setting, want [S]", u)
			}
			// A real overlap, another stream's subjects, is not taken for
			// a create racing its own (racedCreate) and stays an error.
			other := jetstream.StreamConfig{Name: "T", Subjects: []string{"s.>"}, Replicas: 1}
			if _, err := jsensure.Stream(ctx, conns[1], other); err == nil || !strings.Contains(err.Error(), "overlap") {
				t.Errorf("stream T over S's subjects: %v, want the overlap refused", err)
			}
			// The server is still up and serving JetStream.
			if _, err := conns[0].AccountInfo(ctx); err != nil {
				t.Fatalf("server after the storm: %v", err)
			}
		})
	}
}

// TestEnsureTurnsOnDirectGet: a notice stream made by an older firmcast
// (no AllowDirect) is updated once, even with replicas starting together.
func TestEnsureTurnsOnDirectGet(t *testing.T) {
	url := testutil.StartNATSProcess(t).URL()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	old := jetstream.StreamConfig{Name: "N", Subjects: []string{"n.*.notice"}, MaxMsgsPerSubject: 1, Replicas: 1}
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	cur := old
	cur.AllowDirect = true
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := jsensure.Stream(ctx, js, cur)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	s, err := js.Stream(ctx, "N")
	if err != nil {
		t.Fatalf("server after the updates: %v", err)
	}
	if !s.CachedInfo().Config.AllowDirect {
		t.Error("AllowDirect still off")
	}
}
