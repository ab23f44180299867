package deviceagent

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestAgentWaitsForNoticeStream starts a NATS device before the backend
// has created the retained-notice stream, on servers that enforce the
// access policy (a device may not create streams): the embedded server
// and Debian's nats-server 2.9.10. The agent neither creates the stream
// nor stops: it comes up (its "connected" report), and once the backend
// has made the stream and published the notice it installs the update.
func TestAgentWaitsForNoticeStream(t *testing.T) {
	const dev = "dev-early"
	accounts := []broker.Account{
		{Identity: broker.Identity{Username: "backend", Role: broker.RoleBackend}, Secret: "backend-secret-0123456789"},
		{Identity: broker.Identity{Username: dev, Role: broker.RoleDevice, Device: dev, Class: "cls"}, Secret: "device-secret-0123456789"},
	}
	for _, srv := range []struct {
		name  string
		start func(t *testing.T, topics schemas.Topics) string
	}{
		{"nats-embedded", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartNATS(t, broker.NATSServerConfig{Auth: testutil.CredentialStore(t, accounts), Topics: topics}).URL()
		}},
		{"nats-server-2.9", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartNATSProcessWithPolicy(t, topics, accounts).URL()
		}},
	} {
		t.Run(srv.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			url := srv.start(t, topics)
			dial := func(t *testing.T, id string) broker.Transport {
				user, secret := accounts[1].Username, accounts[1].Secret
				if id != dev {
					user, secret = accounts[0].Username, accounts[0].Secret
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				tr, err := broker.Dial(ctx, broker.Config{URL: url, ClientID: id, Topics: topics, Username: user, Password: secret, Logger: testLogger(t)})
				if err != nil {
					t.Fatalf("dial as %s: %v", id, err)
				}
				return tr
			}
			pub := dial(t, "backend-1")
			t.Cleanup(func() { pub.Close(context.Background()) })
			w := newWorld(t, topics, pub, dial)
			d := w.newDevice(dev, nil)
			d.start()
			w.waitReport(dev, 30*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
			select {
			case err := <-d.done:
				t.Fatalf("agent stopped: %v", err)
			default:
			}

			// The backend comes up: it makes the stream, then notifies.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := pub.(*broker.NATSTransport).NoticeStream(ctx); err != nil {
				t.Fatal(err)
			}
			v2 := testImage(4, 10*testChunk+77)
			w.serve(v2, nil)
			w.notice("camp-early", dev, false, v2, w.envelope(v2, 2, nil, nil))
			w.waitReport(dev, 40*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
			})
		})
	}
}
