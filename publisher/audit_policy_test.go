package publisher

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestAuditUnderAccessPolicy runs a publisher as a backend identity on an
// embedded NATS server that enforces the access policy, with a topic root
// and a namespace that differ: every audited operation must be appended
// (the audit subject lies under the root the backend may publish to).
func TestAuditUnderAccessPolicy(t *testing.T) {
	topics := schemas.MustTopics("tenant-a/fw")
	store := testutil.CredentialStore(t, []broker.Account{
		{Identity: broker.Identity{Username: "backend", Role: broker.RoleBackend}, Secret: "s3cret"},
	})
	srv := testutil.StartNATS(t, broker.NATSServerConfig{Auth: store, Topics: topics})
	nc, err := nats.Connect(srv.URL(), nats.UserInfo("backend", "s3cret"), nats.CustomInboxPrefix("tenant-a.fw._inbox"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.JetStream = js
		c.Topics = topics
		c.Namespace = "other_ns"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-1", Class: "c1"}); err != nil {
		t.Fatalf("AddDevice: %v", err)
	}
	entries, err := p.Audit(ctx, 100)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	var sawAdd bool
	for _, en := range entries {
		if en.Action == "device.add" && en.Target == "dev-1" {
			sawAdd = true
		}
	}
	if !sawAdd {
		t.Fatalf("audit log has no device.add entry: %+v", entries)
	}
}
