package publisher

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started is
// still running at the end (paho's tests do the same with goleak). One
// goroutine of the embedded nats-server is let be: a stream's source
// consumer setup (the event stream sources two buckets) waits out its
// own timeout rather than the server's shutdown.
// nats.go v1.55.0's jetstream leaves resetPendingAcksOnReconnect waiting on
// a nil channel for ever after an async publish on a connection that is
// then closed (its reconnect channel is never made): a goroutine per
// JetStream context that published asynchronously, not ours to end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"), goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*stream).trySetupSourceConsumer.func3"))
}
