package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// BenchmarkReportPublish measures a QoS 1 report publish (MQTT: until
// PUBACK; NATS: until flushed) with delivery to one subscriber, on the
// embedded brokers.
//
//	go test -run X -bench . -benchtime 2000x ./broker/
func BenchmarkReportPublish(b *testing.B) {
	for _, c := range []struct {
		name string
		url  func(b *testing.B) string
	}{
		{"mochi", func(b *testing.B) string { return testutil.StartMochi(b, broker.MQTTServerConfig{}).URL() }},
		{"nats", func(b *testing.B) string { return testutil.StartNATS(b, broker.NATSServerConfig{}).URL() }},
	} {
		b.Run(c.name, func(b *testing.B) {
			url := c.url(b)
			topics := testutil.UniqueTopics(b)
			pub := testutil.Dial(b, broker.Config{URL: url, Topics: topics})
			sub := testutil.Dial(b, broker.Config{URL: url, Topics: topics})
			rep, _ := topics.Report("dev1")
			got := make(chan struct{}, 1024)
			ctx := context.Background()
			if _, err := sub.Subscribe(ctx, rep, func(context.Context, broker.Message) { got <- struct{}{} }, broker.SubscribeOptions{Family: broker.FamilyReport}); err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, 200)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := pub.Publish(ctx, rep, payload, broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
					b.Fatal(err)
				}
				select {
				case <-got:
				case <-time.After(10 * time.Second):
					b.Fatal("report not delivered")
				}
			}
		})
	}
}

// BenchmarkRequestReply measures one request/reply round trip on the
// embedded brokers.
func BenchmarkRequestReply(b *testing.B) {
	for _, c := range []struct {
		name string
		url  func(b *testing.B) string
	}{
		{"mochi", func(b *testing.B) string { return testutil.StartMochi(b, broker.MQTTServerConfig{}).URL() }},
		{"nats", func(b *testing.B) string { return testutil.StartNATS(b, broker.NATSServerConfig{}).URL() }},
	} {
		b.Run(c.name, func(b *testing.B) {
			url := c.url(b)
			topics := testutil.UniqueTopics(b)
			srv := testutil.Dial(b, broker.Config{URL: url, Topics: topics})
			cli := testutil.Dial(b, broker.Config{URL: url, Topics: topics})
			api, _ := topics.API("bench")
			ctx := context.Background()
			if _, err := srv.Subscribe(ctx, api, func(ctx context.Context, m broker.Message) { _ = srv.Reply(ctx, m, m.Payload) }, broker.SubscribeOptions{}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if _, err := cli.Request(rctx, api, []byte("ping")); err != nil {
					cancel()
					b.Fatal(err)
				}
				cancel()
			}
		})
	}
}
