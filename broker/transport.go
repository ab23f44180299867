package broker

import (
	"context"
	"errors"

	"github.com/firmcast/firmcast/schemas"
)

// Family is the kind of traffic a publish belongs to; each transport maps
// it to its delivery guarantees (MQTT QoS, NATS core or JetStream).
type Family uint8

// Message families.
const (
	// FamilyControl: API requests and replies. MQTT QoS 1, NATS core.
	FamilyControl Family = iota
	// FamilyNotice: update notices. MQTT QoS 1 (retained when asked),
	// NATS JetStream last-per-subject when retained.
	FamilyNotice
	// FamilyReport: device reports. MQTT QoS 1, NATS core.
	FamilyReport
	// FamilyChunk: broadcast and requested chunks. MQTT QoS 0 so that a
	// broker never queues an image for an offline device; loss is repaired
	// by request. NATS core.
	FamilyChunk
	// FamilyChunkRequest: chunk requests. MQTT QoS 1, NATS core.
	FamilyChunkRequest
)

// Message is one received message.
type Message struct {
	// Topic is the transport-native topic (MQTT) or subject (NATS).
	Topic   string
	Payload []byte
	// ReplyTo and Correlation are set on requests (MQTT v5 response topic
	// and correlation data; NATS reply subject).
	ReplyTo     string
	Correlation []byte
	// Retained is set when the message was held by the broker (MQTT
	// retained, NATS JetStream last-per-subject) rather than live.
	Retained bool
	// Backlog, when set, returns the bytes the transport has received
	// for the subscription and not yet handed to its handler (NATS with
	// SubscribeOptions.Inline: nats.go's pending messages). A handler
	// may wait while it is small: the transport holds what arrives
	// meanwhile, in memory of its own. Nil: unknown.
	Backlog func() int
	// Owned is set when Payload was allocated for this message alone
	// and the transport never touches it again (nats.go copies each
	// message it reads): the handler may keep it without a copy.
	Owned bool
}

// Handler is called for each received message. Handlers of one
// subscription are called one at a time, in order; a handler must not
// block for long, and must not retain m.Payload after it returns unless it
// copies it or m.Owned is set.
type Handler func(ctx context.Context, m Message)

// PublishOptions tunes a publish.
type PublishOptions struct {
	Family Family
	// Retain keeps the message as the topic's last value (notices). An
	// empty payload with Retain clears the retained value.
	Retain bool
}

// SubscribeOptions tunes a subscription.
type SubscribeOptions struct {
	Family Family
	// Shared makes the subscription one member of the shared group
	// schemas.SharedGroup (MQTT v5 $share, NATS queue group): each message
	// goes to one member.
	Shared bool
	// Retained delivers the retained value (last message per subject) on
	// subscribe, as well as live messages.
	Retained bool
	// MaxQueuedBytes bounds, for a FamilyChunk subscription, the bytes of
	// chunks and parity chunks queued for a handler that falls behind:
	// beyond it a chunk is dropped (a loss, repaired later like any QoS 0
	// loss); other messages are always queued. 0 means the default, 4 MiB
	// (also the most that can be set), and at most 256 chunks are queued
	// either way; one chunk larger than the bound is queued when no other
	// is. A device with a small memory budget sets less.
	MaxQueuedBytes int
	// Inline calls the handler on the goroutine that receives the
	// message (paho's router, nats.go's subscription goroutine), without
	// the subscription's own queue and goroutine: for a handler that
	// returns at once (one that copies into a bounded buffer of its own,
	// as the fetcher's does), a second queue in front of it only adds a
	// goroutine hop and a bound that a loaded scheduler overruns.
	// MaxQueuedBytes is then unused.
	Inline bool
}

// Publisher publishes one message.
type Publisher interface {
	// Publish sends payload to topic. It blocks until the message is handed
	// to the broker at the family's guarantee, or ctx ends.
	Publish(ctx context.Context, topic schemas.Topic, payload []byte, opts PublishOptions) error
}

// Subscriber subscribes to a topic filter.
type Subscriber interface {
	// Subscribe registers h for messages matching filter (MQTT "+"/"#" or
	// NATS "*"/">" wildcards in the respective field) and returns once the
	// broker has acknowledged the subscription. The subscription survives
	// reconnects until Unsubscribe.
	Subscribe(ctx context.Context, filter schemas.Topic, h Handler, opts SubscribeOptions) (Subscription, error)
}

// Requester performs request/reply.
type Requester interface {
	// Request sends payload to topic with a reply address and waits for
	// the first reply, or until ctx ends (ErrTimeout wraps ctx's error).
	Request(ctx context.Context, topic schemas.Topic, payload []byte) ([]byte, error)
	// Reply answers a request message received by a Handler.
	Reply(ctx context.Context, req Message, payload []byte) error
}

// Subscription is an active subscription.
type Subscription interface {
	Unsubscribe(ctx context.Context) error
}

// Transport is a connection to one broker. Implementations are safe for
// concurrent use.
type Transport interface {
	Publisher
	Subscriber
	Requester
	// Dialect is the form of a schemas.Topic this transport speaks (the
	// form a reply address it receives on must be given in).
	Dialect() Dialect
	// ReceiveQueue is how many received messages the transport queues
	// for the handlers before it stops reading from the broker, which
	// then holds the rest (MQTT: the Receive Maximum the client
	// announced); 0 when it never stops reading (NATS: the client reads
	// on, into memory). A handler that waits holds back the broker only
	// where it is not 0.
	ReceiveQueue() int
	// Close disconnects and stops the transport's goroutines. It is safe to
	// call more than once.
	Close(ctx context.Context) error
}

// Dialect is which form of a schemas.Topic a transport speaks.
type Dialect uint8

const (
	// DialectMQTT: slash-separated MQTT topics (mqtt://, mqtts://).
	DialectMQTT Dialect = iota
	// DialectNATS: dot-separated NATS subjects (nats://, tls://).
	DialectNATS
)

// Native returns the form of t this dialect speaks.
func (d Dialect) Native(t schemas.Topic) string {
	if d == DialectNATS {
		return t.NATS
	}
	return t.MQTT
}

// Sentinel errors.
var (
	// ErrClosed: the transport was closed.
	ErrClosed = errors.New("broker: transport closed")
	// ErrTimeout: a request got no reply before its context ended.
	ErrTimeout = errors.New("broker: request timed out")
	// ErrNotAuthorized: the broker refused the credentials or the action.
	ErrNotAuthorized = errors.New("broker: not authorized")
	// ErrBadURL: the broker URL cannot be used.
	ErrBadURL = errors.New("broker: bad broker url")
)
