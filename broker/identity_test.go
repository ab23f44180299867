package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// Attacks on identity that broker.Transport cannot express (it sets no
// will and always asks for its own client id), made with raw paho
// clients (testutil.ConnectRawMQTT) on the embedded broker and on a
// mosquitto process configured from the files `firmcast broker
// mosquitto-config` writes. internal/hostile's access matrix has the same
// attacks as rows.

const (
	ctlUser, ctlSecret = "backend-ctl", "backend-ctl-secret-0123456789"
	// impostor is a device whose id is the client id the backend asks
	// for: the registry may refuse such ids, the broker must not rely on
	// it.
	impostor, impostorSecret = "publisher", "publisher-dev-secret-0123456789"
)

func identityAccounts() []broker.Account {
	return append(aclAccounts(),
		broker.Account{Identity: broker.Identity{Username: ctlUser, Role: broker.RoleBackend}, Secret: ctlSecret},
		broker.Account{Identity: broker.Identity{Username: impostor, Role: broker.RoleDevice}, Secret: impostorSecret},
	)
}

func identityBrokers() []aclBroker {
	return []aclBroker{
		{"mochi", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMochi(t, broker.MQTTServerConfig{Auth: testutil.CredentialStore(t, identityAccounts()), Topics: topics}).URL()
		}, true},
		{"mosquitto-generated", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMosquittoWithPolicy(t, topics, identityAccounts()).URL()
		}, false},
	}
}

// TestWillAttack: a device connects with a will aimed at another
// device's topics and drops its connection, so that the broker publishes
// the will in its name. A forged report would be taken by the publisher
// as the victim's (a counter of 2^64-1 makes every later real report
// stale); a retained forged notice would replace the victim's. The
// forged message must never arrive. The embedded broker refuses the
// CONNECT (devices may not set wills); mosquitto checks the will against
// the generated ACL. Each attack is followed by a control: a backend
// identity's will on the same topic, which must arrive, so the forged
// one would have had the time to.
func TestWillAttack(t *testing.T) {
	for _, b := range identityBrokers() {
		t.Run(b.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			brokerURL := b.start(t, topics)
			backend := dialAs(t, brokerURL, topics, "backend-1", backendUser, backendSecret)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			watch := newPayloads()
			all := schemas.Topic{MQTT: topics.Root() + "/#"}
			if _, err := backend.Subscribe(ctx, all, watch.add, broker.SubscribeOptions{Family: broker.FamilyReport}); err != nil {
				t.Fatal(err)
			}
			dev2Report, _ := topics.Report("dev2")
			dev2Notice, _ := topics.Notice("dev2")
			dev1Notice, _ := topics.Notice("dev1")
			var forged []string
			for _, a := range []struct {
				name   string
				topic  schemas.Topic
				retain bool
			}{
				{"forged report of dev2", dev2Report, false},
				{"retained forged notice of dev2", dev2Notice, true},
				{"retained forged notice of its own", dev1Notice, true},
			} {
				payload := "forged will: " + a.name
				forged = append(forged, payload)
				rc, err := testutil.ConnectRawMQTT(t, brokerURL, nil, &paho.Connect{ClientID: "dev1", Username: "dev1", Password: []byte(dev1Secret),
					WillMessage: &paho.WillMessage{Topic: a.topic.MQTT, Payload: []byte(payload), QoS: 1, Retain: a.retain}})
				switch {
				case err == nil:
					if b.name == "mochi" {
						t.Errorf("%s: the embedded broker accepted a device's CONNECT with a will", a.name)
					}
					rc.Abort()
				case !strings.Contains(err.Error(), "refused"):
					t.Fatalf("%s: connect: %v", a.name, err)
				}
				control := "control will: " + a.name
				ctl, err := testutil.ConnectRawMQTT(t, brokerURL, nil, &paho.Connect{ClientID: "ctl", Username: ctlUser, Password: []byte(ctlSecret),
					WillMessage: &paho.WillMessage{Topic: a.topic.MQTT, Payload: []byte(control), QoS: 1, Retain: a.retain}})
				if err != nil {
					t.Fatalf("%s: control connection: %v", a.name, err)
				}
				ctl.Abort()
				if !watch.await(control, 10*time.Second) {
					t.Fatalf("%s: the control will of a backend identity did not arrive", a.name)
				}
				if watch.has(payload) {
					t.Errorf("%s: the forged will arrived", a.name)
				}
			}
			// What a device subscribing now finds retained on its notice
			// topic is the control will, never the forged one.
			for _, dev := range []struct{ id, secret string }{{"dev2", dev2Secret}, {"dev1", dev1Secret}} {
				tr := dialAs(t, brokerURL, topics, dev.id, dev.id, dev.secret)
				notice, _ := topics.Notice(dev.id)
				got := newPayloads()
				if _, err := tr.Subscribe(ctx, notice, got.add, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true}); err != nil {
					t.Fatal(err)
				}
				want := "control will: retained forged notice of dev2"
				if dev.id == "dev1" {
					want = "control will: retained forged notice of its own"
				}
				if !got.await(want, 10*time.Second) {
					t.Errorf("%s: retained notice is not the control will", dev.id)
				}
				for _, f := range forged {
					if got.has(f) {
						t.Errorf("%s received the retained forged will %q", dev.id, f)
					}
				}
				_ = backend.Publish(ctx, notice, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
			}
			for _, f := range forged {
				if watch.has(f) {
					t.Errorf("forged will %q arrived late", f)
				}
			}
		})
	}
}

// TestClientIDTakeover: an MQTT broker drops the older of two
// connections with one client id. A client that connects with the
// backend's client id ("publisher", as `firmcast serve` asks for), or
// with another device's, must not drop that connection: not a device
// asking for it, not a device whose id is that client id, not another
// backend identity. On mosquitto the generated config sets
// use_username_as_clientid (every identity's client id is its user
// name); the embedded broker refuses a device client id other than the
// device id and prefixes a backend identity's with its user name.
func TestClientIDTakeover(t *testing.T) {
	for _, b := range identityBrokers() {
		t.Run(b.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			brokerURL := b.start(t, topics)
			probe, _ := topics.Report("probe")
			dev2Report, _ := topics.Report("dev2")
			for _, a := range []struct {
				name, victim, attackerUser, attackerSecret, asks string
			}{
				{"device asks for the backend's client id", backendUser, "dev1", dev1Secret, "publisher"},
				{"device whose id is the backend's client id", backendUser, impostor, impostorSecret, "publisher"},
				{"other backend identity asks for the backend's client id", backendUser, ctlUser, ctlSecret, "publisher"},
				{"device asks for another device's id", "dev2", "dev1", dev1Secret, "dev2"},
			} {
				t.Run(a.name, func(t *testing.T) {
					victim, topic := connectVictim(t, brokerURL, a.victim, probe.MQTT, dev2Report.MQTT)
					if err := victim.Alive(topic); err != nil {
						t.Fatalf("victim before the attack: %v", err)
					}
					attacker, cerr := testutil.ConnectRawMQTT(t, brokerURL, nil, &paho.Connect{ClientID: a.asks, Username: a.attackerUser, Password: []byte(a.attackerSecret)})
					if cerr == nil {
						defer attacker.Abort()
					}
					if err := victim.Alive(topic); err != nil {
						t.Errorf("%s connecting as client %q (connect: %v) dropped %s: %v", a.attackerUser, a.asks, cerr, a.victim, err)
					}
				})
			}
		})
	}
}

// connectVictim connects the backend (client id "publisher") or dev2
// (its own id) and returns it with a topic it may publish to.
func connectVictim(t *testing.T, brokerURL, who, backendTopic, dev2Topic string) (*testutil.RawMQTT, string) {
	t.Helper()
	cp := &paho.Connect{ClientID: "publisher", Username: backendUser, Password: []byte(backendSecret)}
	topic := backendTopic
	if who == "dev2" {
		cp = &paho.Connect{ClientID: "dev2", Username: "dev2", Password: []byte(dev2Secret)}
		topic = dev2Topic
	}
	rc, err := testutil.ConnectRawMQTT(t, brokerURL, nil, cp)
	if err != nil {
		t.Fatalf("victim %s: %v", who, err)
	}
	return rc, topic
}
