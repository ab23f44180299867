package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestIdleFleet connects idle agents, each with its own credentials, to
// an embedded MQTT broker enforcing the device policy and to an embedded
// NATS server, and checks every agent subscribed (notices and class
// announcements) and had its "connected" report acknowledged.
func TestIdleFleet(t *testing.T) {
	const n = 12
	for _, name := range []string{"mqtt", "nats"} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			topics := testutil.UniqueTopics(t)
			f, err := NewIdleFleet(ctx, IdleConfig{Agents: n, Dir: t.TempDir(), Topics: topics, Parallel: 4})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if len(f.Accounts) != n {
				t.Fatalf("%d accounts, want %d", len(f.Accounts), n)
			}
			if got, want := f.FlashBytes(), int64(10*SectorSize); got != want {
				t.Fatalf("FlashBytes = %d, want %d", got, want)
			}
			var url string
			if name == "mqtt" {
				auth := testutil.CredentialStore(t, f.Accounts)
				url = testutil.StartMochi(t, broker.MQTTServerConfig{Auth: auth, Topics: topics}).URL()
			} else {
				url = testutil.StartNATS(t, broker.NATSServerConfig{}).URL()
			}
			if err := f.Connect(ctx, url); err != nil {
				t.Fatal(err)
			}
			if f.Reported() != n || f.Subscriptions() != 2*n {
				t.Fatalf("reported %d, subscriptions %d; want %d and %d", f.Reported(), f.Subscriptions(), n, 2*n)
			}
		})
	}
}

// TestIdleFleetRefused checks Connect fails, rather than waiting, when the
// broker refuses the agents' credentials.
func TestIdleFleetRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topics := testutil.UniqueTopics(t)
	f, err := NewIdleFleet(ctx, IdleConfig{Agents: 1, Dir: t.TempDir(), Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := testutil.StartMochi(t, broker.MQTTServerConfig{Auth: broker.NewCredentialStore(), Topics: topics})
	if err := f.Connect(ctx, srv.URL()); err == nil {
		t.Fatal("Connect with unknown credentials succeeded")
	}
}

// TestIdleNATSConns checks the lean NATS baseline holds two processed
// subscriptions per connection.
func TestIdleNATSConns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewIdleNATSConns(IdleConfig{Agents: 10, Topics: testutil.UniqueTopics(t), Parallel: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(ctx, testutil.StartNATS(t, broker.NATSServerConfig{}).URL()); err != nil {
		t.Fatal(err)
	}
	if c.Reported() != 10 || c.Subscriptions() != 20 {
		t.Fatalf("reported %d, subscriptions %d; want 10 and 20", c.Reported(), c.Subscriptions())
	}
}
