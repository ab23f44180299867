package deviceagent

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestBrokers runs the update over real brokers: the embedded mochi MQTT v5
// broker, the embedded nats-server, and the machine's Mosquitto and NATS.
// One device gets a per-device notice, two more a class-wide announcement;
// all three end confirmed on the new version.
func TestBrokers(t *testing.T) {
	cases := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"mochi", func(t *testing.T) string { return testutil.StartMochi(t, broker.MQTTServerConfig{}).URL() }},
		{"nats-embedded", func(t *testing.T) string { return testutil.StartNATS(t, broker.NATSServerConfig{}).URL() }},
		{"mosquitto-machine", func(t *testing.T) string {
			testutil.RequireBroker(t, testutil.MachineMosquittoURL)
			return testutil.MachineMosquittoURL
		}},
		{"nats-machine", func(t *testing.T) string {
			testutil.RequireBroker(t, testutil.MachineNATSURL)
			return testutil.MachineNATSURL
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			root := testutil.UniqueRoot(t)
			topics := schemas.MustTopics(root)
			if url == testutil.MachineNATSURL {
				testutil.ClearNoticeStream(t, url, topics)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dial := func(t *testing.T, id string) broker.Transport {
				tr, err := broker.Dial(ctx, broker.Config{URL: url, ClientID: id, Topics: topics, Logger: testLogger(t)})
				if err != nil {
					t.Fatalf("dial %s as %s: %v", url, id, err)
				}
				return tr
			}
			pub := dial(t, "pub-"+root[3:15])
			t.Cleanup(func() { pub.Close(context.Background()) })
			if nt, ok := pub.(*broker.NATSTransport); ok {
				if _, err := nt.NoticeStream(ctx); err != nil {
					t.Fatal(err)
				}
			}
			w := newWorld(t, topics, pub, dial)
			v2 := testImage(4, 30*testChunk+333)
			w.serve(v2, nil)
			ids := []string{"d1-" + root[3:15], "d2-" + root[3:15], "d3-" + root[3:15]}
			for _, id := range ids {
				d := w.newDevice(id, nil)
				d.start()
				w.waitReport(id, 20*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
			}
			env := w.envelope(v2, 2, nil, nil)
			w.notice("camp-dev", ids[0], false, v2, env)
			w.notice("camp-cls", "cls", true, v2, env)
			for _, id := range ids {
				r := w.waitReport(id, 40*time.Second, func(r schemas.DeviceReport) bool {
					return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
				})
				t.Logf("%s confirmed v2 via %s (campaign %s)", id, r.Source, r.Campaign)
			}
		})
	}
}

// brokerWorld starts an embedded broker ("mochi" or "nats") and returns a
// world whose publisher and devices dial it.
func brokerWorld(t *testing.T, kind string) *world {
	var url string
	if kind == "nats" {
		url = testutil.StartNATS(t, broker.NATSServerConfig{}).URL()
	} else {
		url = testutil.StartMochi(t, broker.MQTTServerConfig{}).URL()
	}
	topics := testutil.UniqueTopics(t)
	dial := func(t *testing.T, id string) broker.Transport {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		tr, err := broker.Dial(ctx, broker.Config{URL: url, ClientID: id, Topics: topics, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		return tr
	}
	pub := dial(t, "pub")
	t.Cleanup(func() { pub.Close(context.Background()) })
	if nt, ok := pub.(*broker.NATSTransport); ok {
		if _, err := nt.NoticeStream(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return newWorld(t, topics, pub, dial)
}
