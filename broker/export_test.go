package broker

import (
	"github.com/eclipse/paho.golang/autopaho"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// AddMochiHook adds h to the embedded MQTT server's mochi hooks, for
// tests that observe the broker from inside (the inflight probe of
// deadlock_test.go). Call it before Start.
func (s *MQTTServer) AddMochiHook(h mqtt.Hook) error { return s.srv.AddHook(h, nil) }

// NoticeReadsIdle reports whether no background read of a retained
// notice is running on t (tests wait on it before checking that nothing
// more arrives).
func NoticeReadsIdle(t *NATSTransport) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.subs {
		if s.last != nil && !s.last.idle() {
			return false
		}
	}
	return true
}

// MQTTConnectionManager is the autopaho connection of t, an
// *MQTTTransport, for tests of MQTT features Transport does not cover. Do
// not call Disconnect on it.
func MQTTConnectionManager(t Transport) *autopaho.ConnectionManager { return t.(*MQTTTransport).cm }

// Queued reports what sub's dispatcher holds: the chunks it may shed,
// the other messages, and the chunks it dropped for the bound.
func Queued(sub Subscription) (chunks, others int, dropped int64) {
	var d *dispatcher
	switch s := sub.(type) {
	case *mqttSubscription:
		d = s.s.d
	case *natsSub:
		d = s.d
	default:
		return 0, 0, 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.chunks, len(d.q) - d.chunks, d.dropped
}

// MaxQueuedChunks is the dispatcher's chunk bound.
const MaxQueuedChunks = maxQueuedChunks

// Tracked is how many user names the hook counts failures for.
func (h *HTTPHook) Tracked() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.fails)
}
