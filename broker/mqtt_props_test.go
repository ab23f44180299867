package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestMQTTUserPropertiesSurviveMochi: mochi strips MQTT v5 user properties
// from what it forwards unless the receiving client's CONNECT asked for
// problem information; MQTTTransport always asks.
func TestMQTTUserPropertiesSurviveMochi(t *testing.T) {
	srv := testutil.StartMochi(t, broker.MQTTServerConfig{})
	topics := testutil.UniqueTopics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := broker.Dial(ctx, broker.Config{URL: srv.URL(), Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	sub, err := broker.Dial(ctx, broker.Config{URL: srv.URL(), Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	rep, _ := topics.Report("dev1")
	got := make(chan paho.UserProperties, 1)
	broker.MQTTConnectionManager(sub).AddOnPublishReceived(func(pr autopaho.PublishReceived) (bool, error) {
		if pr.Packet.Topic == rep.MQTT && pr.Packet.Properties != nil {
			got <- pr.Packet.Properties.User
		}
		return false, nil
	})
	if _, err := sub.Subscribe(ctx, rep, func(context.Context, broker.Message) {}, broker.SubscribeOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
	if _, err := broker.MQTTConnectionManager(pub).Publish(ctx, &paho.Publish{Topic: rep.MQTT, QoS: 1, Payload: []byte("x"),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "trace", Value: "abc"}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-got:
		if u.Get("trace") != "abc" {
			t.Fatalf("user properties %v, want trace=abc", u)
		}
	case <-ctx.Done():
		t.Fatal("message not received")
	}
}
