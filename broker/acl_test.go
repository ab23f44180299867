package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

const (
	backendUser   = "backend"
	backendSecret = "backend-secret-0123456789"
	dev1Secret    = "dev1-secret-0123456789"
	dev2Secret    = "dev2-secret-0123456789"
	imageDigest   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

func aclAccounts() []broker.Account {
	return []broker.Account{
		{Identity: broker.Identity{Username: backendUser, Role: broker.RoleBackend}, Secret: backendSecret},
		{Identity: broker.Identity{Username: "dev1", Role: broker.RoleDevice, Device: "dev1", Class: "sensor"}, Secret: dev1Secret},
		{Identity: broker.Identity{Username: "dev2", Role: broker.RoleDevice, Device: "dev2", Class: "sensor"}, Secret: dev2Secret},
	}
}

// aclBroker starts a broker enforcing the access policy for topics and
// returns its URL.
type aclBroker struct {
	name  string
	start func(t *testing.T, topics schemas.Topics) string
	// refusesSubscribe: the broker answers a denied SUBSCRIBE, and a
	// denied QoS 1 PUBLISH, with an error. Mosquitto 2.0.11 acknowledges
	// both, enforcing the ACL silently.
	refusesSubscribe bool
}

func aclBrokers() []aclBroker {
	store := func(t *testing.T) *broker.CredentialStore { return testutil.CredentialStore(t, aclAccounts()) }
	return []aclBroker{
		{"mochi", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMochi(t, broker.MQTTServerConfig{Auth: store(t), Topics: topics}).URL()
		}, true},
		{"nats-embedded", func(t *testing.T, topics schemas.Topics) string {
			srv := testutil.StartNATS(t, broker.NATSServerConfig{Auth: store(t), Topics: topics})
			// Devices cannot create the notice stream; the server does.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.EnsureNoticeStream(ctx); err != nil {
				t.Fatal(err)
			}
			return srv.URL()
		}, true},
		{"mosquitto-generated", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMosquittoWithPolicy(t, topics, aclAccounts()).URL()
		}, false},
	}
}

func dialAs(t *testing.T, url string, topics schemas.Topics, client, user, secret string) broker.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics, ClientID: client, Username: user, Password: secret})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Close(ctx)
	})
	return tr
}

func TestACL(t *testing.T) {
	for _, b := range aclBrokers() {
		t.Run(b.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			url := b.start(t, topics)
			backend := dialAs(t, url, topics, "backend-1", backendUser, backendSecret)
			dev1 := dialAs(t, url, topics, "dev1", "dev1", dev1Secret)

			t.Run("WrongSecretRefused", func(t *testing.T) {
				for _, c := range []struct{ user, secret string }{
					{"dev1", "not-the-secret"},
					{"nobody", dev1Secret},
					{backendUser, dev1Secret},
				} {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics, ClientID: c.user, Username: c.user, Password: c.secret})
					cancel()
					if err == nil {
						_ = tr.Close(context.Background())
						t.Fatalf("%s with a wrong secret was let in", c.user)
					}
					if !errors.Is(err, broker.ErrNotAuthorized) {
						t.Errorf("%s with a wrong secret: %v, want ErrNotAuthorized", c.user, err)
					}
				}
			})

			if b.name == "mochi" {
				t.Run("DeviceMustUseItsIDAsClientID", func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics, ClientID: "dev2", Username: "dev1", Password: dev1Secret})
					if !errors.Is(err, broker.ErrNotAuthorized) {
						t.Fatalf("dev1 connecting as client dev2: %v, want ErrNotAuthorized", err)
					}
				})
			}
			t.Run("DeviceCannotPublish", func(t *testing.T) { testDeniedPublishes(t, topics, backend, dev1, b.refusesSubscribe) })
			t.Run("DeviceCannotSubscribe", func(t *testing.T) { testDeniedSubscribes(t, topics, backend, dev1, b.refusesSubscribe) })
		})
	}
}

// imageRequestTopic is the per-image chunk request topic devices used
// before requests moved to per-device topics (root/v1/img/<digest>/req):
// nothing may publish there any more.
func imageRequestTopic(topics schemas.Topics, digest string) schemas.Topic {
	return schemas.Topic{MQTT: topics.Root() + "/v1/img/" + digest + "/req", NATS: strings.ReplaceAll(topics.Root(), "/", ".") + ".v1.img." + digest + ".req"}
}

// everything is the backend's view of the whole root.
func everything(topics schemas.Topics) schemas.Topic {
	return schemas.Topic{MQTT: topics.Root() + "/#", NATS: strings.ReplaceAll(topics.Root(), "/", ".") + ".>"}
}

func isInbox(topic string) bool {
	return strings.Contains(topic, "/api/inbox/") || strings.Contains(topic, ".api.inbox.")
}

func testDeniedPublishes(t *testing.T, topics schemas.Topics, backend, dev1 broker.Transport, reportsDenial bool) {
	ch, sub := collect(t, backend, everything(topics), broker.SubscribeOptions{Family: broker.FamilyReport})
	defer sub.Unsubscribe(context.Background())
	must := func(tp schemas.Topic, err error) schemas.Topic {
		if err != nil {
			t.Fatal(err)
		}
		return tp
	}
	ownReport := must(topics.Report("dev1"))
	cases := []struct {
		name   string
		topic  schemas.Topic
		family broker.Family
	}{
		{"own notice", must(topics.Notice("dev1")), broker.FamilyNotice},
		{"other device's notice", must(topics.Notice("dev2")), broker.FamilyNotice},
		{"chunk broadcast", must(topics.Chunks(imageDigest)), broker.FamilyChunk},
		{"other device's chunk reply", must(topics.ChunkReply("dev2")), broker.FamilyChunk},
		{"other device's report", must(topics.Report("dev2")), broker.FamilyReport},
		{"class announcement", must(topics.Announce("sensor")), broker.FamilyNotice},
		{"other device's chunk requests", must(topics.ChunkRequestsFrom("dev2")), broker.FamilyChunkRequest},
		{"image chunk request topic", imageRequestTopic(topics, imageDigest), broker.FamilyChunkRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			denied := []byte("denied:" + c.name)
			err := dev1.Publish(ctx, c.topic, denied, broker.PublishOptions{Family: c.family})
			if err != nil && !errors.Is(err, broker.ErrNotAuthorized) {
				t.Fatalf("denied publish: %v (want nil or ErrNotAuthorized)", err)
			}
			if err == nil && reportsDenial && c.family != broker.FamilyChunk {
				t.Errorf("denied QoS 1 publish returned nil; this broker reports the denial")
			}
			sentinel := []byte("sentinel:" + c.name)
			if err := dev1.Publish(ctx, ownReport, sentinel, broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
				t.Fatalf("sentinel report: %v", err)
			}
			for {
				m := recv(t, ch, "sentinel report")
				if isInbox(m.Topic) {
					continue
				}
				if string(m.Payload) == string(denied) {
					t.Fatalf("the broker delivered the denied publish to %s", m.Topic)
				}
				if string(m.Payload) == string(sentinel) {
					break
				}
			}
		})
	}
	t.Run("chunk request allowed", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := must(topics.ChunkRequestsFrom("dev1"))
		if err := dev1.Publish(ctx, req, []byte("want-chunks"), broker.PublishOptions{Family: broker.FamilyChunkRequest}); err != nil {
			t.Fatal(err)
		}
		for {
			m := recv(t, ch, "chunk request")
			if string(m.Payload) == "want-chunks" {
				return
			}
		}
	})
}

func testDeniedSubscribes(t *testing.T, topics schemas.Topics, backend, dev1 broker.Transport, refuses bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	own, _ := topics.Notice("dev1")
	other, _ := topics.Notice("dev2")
	all := topics.NoticesAll()
	got := make(chan broker.Message, 16)
	h := func(_ context.Context, m broker.Message) { got <- m }

	// The device may read its own notice, retained included.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = backend.Publish(ctx, own, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
	})
	if err := backend.Publish(ctx, own, []byte("retained-for-dev1"), broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev1.Subscribe(ctx, own, h, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true}); err != nil {
		t.Fatalf("device subscribing to its own notice: %v", err)
	}
	if m := recv(t, got, "own retained notice"); string(m.Payload) != "retained-for-dev1" {
		t.Fatalf("got %q, want the retained notice", m.Payload)
	}
	// Its class announcements and image chunks too.
	ann, _ := topics.Announce("sensor")
	chunks, _ := topics.Chunks(imageDigest)
	for _, tp := range []schemas.Topic{ann, chunks} {
		if _, err := dev1.Subscribe(ctx, tp, h, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatalf("device subscribing to %s: %v", tp.MQTT, err)
		}
	}

	// Another device's notices, directly or by wildcard: refused, and
	// nothing is delivered.
	for _, tp := range []schemas.Topic{other, all} {
		_, err := dev1.Subscribe(ctx, tp, h, broker.SubscribeOptions{Family: broker.FamilyNotice})
		if err != nil && !errors.Is(err, broker.ErrNotAuthorized) {
			t.Fatalf("subscribe to %s: %v, want ErrNotAuthorized or a silent refusal", tp.MQTT, err)
		}
		if err == nil && refuses {
			t.Errorf("subscribe to %s was acknowledged; this broker must refuse it", tp.MQTT)
		}
	}
	if err := backend.Publish(ctx, other, []byte("for-dev2-only"), broker.PublishOptions{Family: broker.FamilyNotice}); err != nil {
		t.Fatal(err)
	}
	if err := backend.Publish(ctx, chunks, []byte("chunk-sentinel"), broker.PublishOptions{Family: broker.FamilyNotice}); err != nil {
		t.Fatal(err)
	}
	for {
		m := recv(t, got, "chunk sentinel")
		if string(m.Payload) == "for-dev2-only" {
			t.Fatalf("dev1 received dev2's notice on %s", m.Topic)
		}
		if string(m.Payload) == "chunk-sentinel" {
			break
		}
	}
}
