package publisher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// realEnv runs the publisher and the responders over a real broker at
// transportURL, with state in JetStream at stateURL under a unique
// namespace and topic root (removed at cleanup).
func realEnv(t *testing.T, transportURL, stateURL string) *testEnv {
	t.Helper()
	nc, err := nats.Connect(stateURL)
	if err != nil {
		t.Fatalf("nats %s: %v", stateURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topics := testutil.UniqueTopics(t)
	ns := "fct" + topics.Root()[3:15]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		js.DeleteStream(ctx, ns+"_events") // sources campaigns and campdev
		for _, b := range []string{"imagemeta", "devices", "apikeys", "campaigns", "campdev", "lease", "sessions", "cryptkeys", "deltas"} {
			js.DeleteKeyValue(ctx, ns+"_"+b)
		}
		js.DeleteStream(ctx, ns+"_images")
		js.DeleteStream(ctx, ns+"_audit")
		nc.Close()
	})
	if u := transportURL; len(u) > 4 && u[:4] == "nats" {
		testutil.ClearNoticeStream(t, u, topics)
	}
	e := &testEnv{t: t, js: js, clock: newFakeClock(), admin: testAdminKey}
	e.cfg = Config{
		JetStream: js, Topics: topics, Namespace: ns, Clock: e.clock, Logger: testLogger(),
		ChunkSize: 1024, TickInterval: 20 * time.Millisecond, StartWindow: -1, BootstrapKey: testAdminKey,
		NoticeSigners: []suit.Signer{testNoticeSigner()},
	}
	e.dial = func(id string, shared bool) broker.Transport {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cid := id
		if shared {
			cid = "p" + randomID("")[1:13]
		}
		tr, err := broker.Dial(ctx, broker.Config{URL: transportURL, ClientID: cid, Topics: topics, SharedMember: shared})
		if err != nil {
			t.Fatalf("dial %s as %s: %v", transportURL, id, err)
		}
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer ccancel()
			if !shared {
				// Leave no retained notice on a shared broker.
				if nt, err := topics.Notice(id); err == nil {
					tr.Publish(cctx, nt, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
				}
			}
			tr.Close(cctx)
		})
		return tr
	}
	return e
}

type brokerSetup struct {
	name  string
	start func(t *testing.T) *testEnv
}

func brokerSetups() []brokerSetup {
	return []brokerSetup{
		{"embedded-mochi+embedded-nats", func(t *testing.T) *testEnv {
			mq := testutil.StartMochi(t, broker.MQTTServerConfig{})
			ns := testutil.StartNATS(t, broker.NATSServerConfig{})
			return realEnv(t, mq.URL(), ns.URL())
		}},
		{"embedded-nats", func(t *testing.T) *testEnv {
			ns := testutil.StartNATS(t, broker.NATSServerConfig{})
			return realEnv(t, ns.URL(), ns.URL())
		}},
		{"machine-mosquitto+machine-nats", func(t *testing.T) *testEnv {
			testutil.RequireBroker(t, testutil.MachineMosquittoURL)
			testutil.RequireBroker(t, testutil.MachineNATSURL)
			return realEnv(t, testutil.MachineMosquittoURL, testutil.MachineNATSURL)
		}},
		{"machine-nats", func(t *testing.T) *testEnv {
			testutil.RequireBroker(t, testutil.MachineNATSURL)
			return realEnv(t, testutil.MachineNATSURL, testutil.MachineNATSURL)
		}},
	}
}

// TestCampaignsOverRealBrokers runs the campaign scenarios (phases to 50
// devices, abort at the failure threshold, restart mid-campaign, devices
// that connect after their notice was published, two publisher instances
// sharing the work) over the
// embedded brokers and the machine's Mosquitto and NATS.
func TestCampaignsOverRealBrokers(t *testing.T) {
	scenarios := []struct {
		name string
		run  func(*testing.T, *testEnv)
	}{
		{"phases", scenarioPhases},
		{"abort", scenarioAbort},
		{"restart", scenarioRestart},
		{"late-join", scenarioLateJoin},
		{"two-instances", scenarioTwoInstances},
	}
	for _, b := range brokerSetups() {
		for _, sc := range scenarios {
			t.Run(fmt.Sprintf("%s/%s", b.name, sc.name), func(t *testing.T) {
				sc.run(t, b.start(t))
			})
		}
	}
}

var _ = schemas.Version
