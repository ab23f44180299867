package publisher

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// memBroker is an in-memory broker for unit tests: NATS subject matching,
// retained last-per-subject, shared subscriptions (round robin), request /
// reply. Each client gets its own memTransport. Faults are injected per
// client with drop.
type memBroker struct {
	mu       sync.Mutex
	subs     []*memSub
	retained map[string][]byte
	rr       map[string]int
	inbox    atomic.Int64
	pending  atomic.Int64 // enqueued and not yet handled
	// dropAll, when set, is asked once per published chunk-family message;
	// true drops it for every subscriber (correlated loss).
	dropAll func(payload []byte) bool
}

func newMemBroker() *memBroker {
	return &memBroker{retained: map[string][]byte{}, rr: map[string]int{}}
}

type memSub struct {
	c      *memTransport
	filter string
	shared bool
	q      chan broker.Message
	done   chan struct{}
	once   sync.Once
}

func (s *memSub) Unsubscribe(context.Context) error {
	s.c.b.mu.Lock()
	defer s.c.b.mu.Unlock()
	for i, x := range s.c.b.subs {
		if x == s {
			s.c.b.subs = append(s.c.b.subs[:i], s.c.b.subs[i+1:]...)
			break
		}
	}
	s.once.Do(func() { close(s.done) })
	return nil
}

type memTransport struct {
	b *memBroker
	// drop, when set, is asked for each chunk-family message this client
	// would receive; true drops it (QoS 0 loss).
	drop func(topic string) bool
	// dropPayload is drop with the payload, for loss models by chunk.
	dropPayload func(topic string, payload []byte) bool
	closed      atomic.Bool
	mu          sync.Mutex
	subs        []*memSub
	// published counts payload bytes this client published per family.
	published [8]atomic.Int64
}

func (b *memBroker) client() *memTransport { return &memTransport{b: b} }

func subjectMatch(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

func (c *memTransport) Publish(ctx context.Context, t schemas.Topic, payload []byte, o broker.PublishOptions) error {
	if c.closed.Load() {
		return broker.ErrClosed
	}
	c.published[o.Family].Add(int64(len(payload)))
	c.b.deliver(broker.Message{Topic: t.NATS, Payload: append([]byte(nil), payload...)}, o)
	return nil
}

func (b *memBroker) deliver(m broker.Message, o broker.PublishOptions) {
	b.mu.Lock()
	if o.Retain {
		if len(m.Payload) == 0 {
			delete(b.retained, m.Topic)
		} else {
			b.retained[m.Topic] = m.Payload
		}
	}
	var targets []*memSub
	shared := map[string][]*memSub{}
	for _, s := range b.subs {
		if !subjectMatch(s.filter, m.Topic) {
			continue
		}
		if s.shared {
			shared[s.filter] = append(shared[s.filter], s)
			continue
		}
		targets = append(targets, s)
	}
	for f, ss := range shared {
		targets = append(targets, ss[b.rr[f]%len(ss)])
		b.rr[f]++
	}
	b.mu.Unlock()
	if o.Retain && len(m.Payload) == 0 {
		return // clearing a retained value is not delivered
	}
	if o.Family == broker.FamilyChunk && b.dropAll != nil && b.dropAll(m.Payload) {
		return
	}
	for _, s := range targets {
		if o.Family == broker.FamilyChunk && s.c.drop != nil && s.c.drop(m.Topic) {
			continue
		}
		if o.Family == broker.FamilyChunk && s.c.dropPayload != nil && s.c.dropPayload(m.Topic, m.Payload) {
			continue
		}
		b.pending.Add(1)
		select {
		case s.q <- m:
		case <-s.done:
			b.pending.Add(-1)
		}
	}
}

func (c *memTransport) Subscribe(ctx context.Context, filter schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if c.closed.Load() {
		return nil, broker.ErrClosed
	}
	s := &memSub{c: c, filter: filter.NATS, shared: o.Shared, q: make(chan broker.Message, 1<<16), done: make(chan struct{})}
	c.b.mu.Lock()
	c.b.subs = append(c.b.subs, s)
	if o.Retained {
		for subj, p := range c.b.retained {
			if subjectMatch(s.filter, subj) {
				c.b.pending.Add(1)
				s.q <- broker.Message{Topic: subj, Payload: p, Retained: true}
			}
		}
	}
	c.b.mu.Unlock()
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	go func() {
		for {
			select {
			case <-s.done:
				return
			case m := <-s.q:
				h(context.Background(), m)
				c.b.pending.Add(-1)
			}
		}
	}()
	return s, nil
}

func (c *memTransport) Request(ctx context.Context, t schemas.Topic, payload []byte) ([]byte, error) {
	inbox := fmt.Sprintf("_INBOX.%d", c.b.inbox.Add(1))
	got := make(chan []byte, 1)
	sub, err := c.Subscribe(ctx, schemas.Topic{NATS: inbox, MQTT: inbox}, func(_ context.Context, m broker.Message) {
		select {
		case got <- m.Payload:
		default:
		}
	}, broker.SubscribeOptions{})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe(ctx)
	c.b.deliver(broker.Message{Topic: t.NATS, Payload: payload, ReplyTo: inbox}, broker.PublishOptions{Family: broker.FamilyControl})
	select {
	case b := <-got:
		return b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", broker.ErrTimeout, ctx.Err())
	}
}

func (c *memTransport) Reply(ctx context.Context, req broker.Message, payload []byte) error {
	return c.Publish(ctx, schemas.Topic{NATS: req.ReplyTo, MQTT: req.ReplyTo}, payload, broker.PublishOptions{Family: broker.FamilyControl})
}

func (c *memTransport) Close(ctx context.Context) error {
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	subs := c.subs
	c.mu.Unlock()
	for _, s := range subs {
		s.Unsubscribe(ctx)
	}
	return nil
}

// retainedNotices returns the subjects holding a retained notice.
func (b *memBroker) retainedNotices() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for s := range b.retained {
		if strings.HasSuffix(s, ".notice") {
			out = append(out, s)
		}
	}
	return out
}

var _ broker.Transport = (*memTransport)(nil)

var brokerChunkReq = broker.PublishOptions{Family: broker.FamilyChunkRequest}

// idle reports whether every delivered message has been handled.
func (b *memBroker) idle() bool { return b.pending.Load() == 0 }
