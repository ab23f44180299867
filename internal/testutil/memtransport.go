package testutil

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// MemHub is an in-memory broker for unit tests and fault injection: MQTT
// topic matching ("+", "#") on the MQTT form of topics (or, with NATS, NATS
// subject matching ("*", ">") on their NATS form), retained messages,
// shared subscriptions (each message to one member per filter, round
// robin), request / reply, and one delivery goroutine per subscription
// with an unbounded queue, as a client library has. Integration tests use
// real brokers instead.
type MemHub struct {
	mu        sync.Mutex
	subs      []*memSub
	retained  map[string][]byte
	onConnect map[int]func()
	nextID    int
	rr        map[string]int // next member per shared filter
	inbox     atomic.Int64
	pending   atomic.Int64 // queued and not yet handled
	// NATS, set before the first Conn, makes the hub route, retain and
	// deliver the NATS form of topics (messages carry NATS subjects, as
	// from a NATS server) instead of the MQTT form.
	NATS bool
	// Drop, when set, drops a publish (fault injection).
	Drop func(topic string, payload []byte) bool
	// DropChunk, when set, is asked once per published chunk-family
	// message; true drops it for every subscriber (correlated loss).
	DropChunk func(payload []byte) bool
}

// NewMemHub returns an empty hub.
func NewMemHub() *MemHub {
	return &MemHub{retained: map[string][]byte{}, onConnect: map[int]func(){}, rr: map[string]int{}}
}

// Reconnect simulates every client reconnecting: it calls the functions
// registered with OnConnect (the transports implement
// deviceagent.Reconnector).
func (h *MemHub) Reconnect() {
	h.mu.Lock()
	fs := make([]func(), 0, len(h.onConnect))
	for _, f := range h.onConnect {
		fs = append(fs, f)
	}
	h.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Conn returns a new client of the hub.
func (h *MemHub) Conn() *MemConn { return &MemConn{hub: h} }

// Idle reports whether every message queued to a subscription has been
// handled (its handler returned), so a test can wait for quiescence
// instead of sleeping.
func (h *MemHub) Idle() bool { return h.pending.Load() == 0 }

// Retained returns the topics (in the hub's form) holding a retained
// message, sorted.
func (h *MemHub) Retained() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.retained))
	for t := range h.retained {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// name is the form of t the hub routes on.
func (h *MemHub) name(t schemas.Topic) string { return h.dialect().Native(t) }

// dialect is the topic form of the hub: NATS subjects when h.NATS.
func (h *MemHub) dialect() broker.Dialect {
	if h.NATS {
		return broker.DialectNATS
	}
	return broker.DialectMQTT
}

func (h *MemHub) match(filter, topic string) bool {
	if !strings.ContainsAny(filter, "*>+#") {
		// No wildcard: the filter matches only itself. Every publish
		// is matched against every subscription (about 2,000 for 500
		// devices), and splitting both took a loaded -race run's hub
		// 2.5 s per message (TestQuietDevices).
		return filter == topic
	}
	if h.NATS {
		return natsMatch(filter, topic)
	}
	return mqttMatch(filter, topic)
}

func natsMatch(filter, subject string) bool {
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

func mqttMatch(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, p := range f {
		if p == "#" {
			return true
		}
		if i >= len(t) || (p != "+" && p != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}

type memSub struct {
	conn   *MemConn
	filter string
	shared bool
	h      broker.Handler
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []broker.Message
	done   bool
}

func (s *memSub) push(m broker.Message) {
	s.mu.Lock()
	if !s.done {
		s.conn.hub.pending.Add(1)
		s.queue = append(s.queue, m)
		s.cond.Signal()
	}
	s.mu.Unlock()
}

func (s *memSub) loop() {
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.done {
			s.cond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return
		}
		m := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		s.h(context.Background(), m)
		s.conn.hub.pending.Add(-1)
	}
}

func (s *memSub) Unsubscribe(ctx context.Context) error {
	h := s.conn.hub
	h.mu.Lock()
	for i, x := range h.subs {
		if x == s {
			h.subs = append(h.subs[:i:i], h.subs[i+1:]...)
			break
		}
	}
	h.mu.Unlock()
	s.mu.Lock()
	if !s.done {
		s.done = true
		h.pending.Add(-int64(len(s.queue))) // never handled
		s.queue = nil
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// MemConn is one client of a MemHub; it implements broker.Transport and
// deviceagent.Reconnector.
type MemConn struct {
	hub    *MemHub
	mu     sync.Mutex
	closed bool
	subs   []*memSub
	drop   func(topic string, payload []byte) bool
}

// SetDrop sets (nil clears) a hook asked for each chunk-family message
// this client would receive; true drops it for this client only (QoS 0
// loss on its link).
func (c *MemConn) SetDrop(f func(topic string, payload []byte) bool) {
	c.mu.Lock()
	c.drop = f
	c.mu.Unlock()
}

func (c *MemConn) dropped(topic string, payload []byte) bool {
	c.mu.Lock()
	f := c.drop
	c.mu.Unlock()
	return f != nil && f(topic, payload)
}

func (c *MemConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Publish implements broker.Publisher. Clearing a retained message (Retain
// with an empty payload) is delivered to current subscribers, as MQTT does.
func (c *MemConn) Publish(ctx context.Context, t schemas.Topic, payload []byte, o broker.PublishOptions) error {
	if c.isClosed() {
		return broker.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.hub.deliver(broker.Message{Topic: c.hub.name(t), Payload: append([]byte(nil), payload...)}, o)
	return nil
}

func (h *MemHub) deliver(m broker.Message, o broker.PublishOptions) {
	if h.Drop != nil && h.Drop(m.Topic, m.Payload) {
		return
	}
	h.mu.Lock()
	if o.Retain {
		if len(m.Payload) == 0 {
			delete(h.retained, m.Topic)
		} else {
			h.retained[m.Topic] = m.Payload
		}
	}
	var to []*memSub
	shared := map[string][]*memSub{}
	for _, s := range h.subs {
		switch {
		case !h.match(s.filter, m.Topic):
		case s.shared:
			shared[s.filter] = append(shared[s.filter], s)
		default:
			to = append(to, s)
		}
	}
	for f, ss := range shared {
		to = append(to, ss[h.rr[f]%len(ss)])
		h.rr[f]++
	}
	h.mu.Unlock()
	chunk := o.Family == broker.FamilyChunk
	if chunk && h.DropChunk != nil && h.DropChunk(m.Payload) {
		return
	}
	for _, s := range to {
		if chunk && s.conn.dropped(m.Topic, m.Payload) {
			continue
		}
		s.push(m)
	}
}

// Subscribe implements broker.Subscriber; with o.Shared the subscription
// joins the group of shared subscriptions to the same filter.
func (c *MemConn) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if c.isClosed() {
		return nil, broker.ErrClosed
	}
	s := &memSub{conn: c, filter: c.hub.name(f), shared: o.Shared, h: h}
	s.cond = sync.NewCond(&s.mu)
	c.hub.mu.Lock()
	c.hub.subs = append(c.hub.subs, s)
	if o.Retained {
		for t, p := range c.hub.retained {
			if c.hub.match(s.filter, t) {
				s.push(broker.Message{Topic: t, Payload: p, Retained: true})
			}
		}
	}
	c.hub.mu.Unlock()
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	go s.loop()
	return s, nil
}

// Request implements broker.Requester through a private reply topic.
func (c *MemConn) Request(ctx context.Context, t schemas.Topic, p []byte) ([]byte, error) {
	inbox := fmt.Sprintf("_inbox_%d", c.hub.inbox.Add(1)) // one token in either form
	got := make(chan []byte, 1)
	sub, err := c.Subscribe(ctx, schemas.Topic{MQTT: inbox, NATS: inbox}, func(_ context.Context, m broker.Message) {
		select {
		case got <- m.Payload:
		default:
		}
	}, broker.SubscribeOptions{Family: broker.FamilyControl})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe(ctx)
	c.hub.deliver(broker.Message{Topic: c.hub.name(t), Payload: append([]byte(nil), p...), ReplyTo: inbox}, broker.PublishOptions{Family: broker.FamilyControl})
	select {
	case b := <-got:
		return b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", broker.ErrTimeout, ctx.Err())
	}
}

// Reply implements broker.Requester.
func (c *MemConn) Reply(ctx context.Context, req broker.Message, p []byte) error {
	if req.ReplyTo == "" {
		return fmt.Errorf("memhub: reply: request on %s has no reply topic", req.Topic)
	}
	return c.Publish(ctx, schemas.Topic{MQTT: req.ReplyTo, NATS: req.ReplyTo}, p, broker.PublishOptions{Family: broker.FamilyControl})
}

// Dialect implements broker.Transport: the hub's topic form.
func (c *MemConn) Dialect() broker.Dialect { return c.hub.dialect() }

// ReceiveQueue implements broker.Transport: 0, the hub never holds a
// message back.
func (c *MemConn) ReceiveQueue() int { return 0 }

// OnConnect registers f to be called by MemHub.Reconnect.
func (c *MemConn) OnConnect(f func()) (stop func()) {
	h := c.hub
	h.mu.Lock()
	id := h.nextID
	h.nextID++
	h.onConnect[id] = f
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.onConnect, id)
		h.mu.Unlock()
	}
}

// Close unsubscribes everything; later publishes and subscriptions fail
// with ErrClosed.
func (c *MemConn) Close(ctx context.Context) error {
	c.mu.Lock()
	subs := c.subs
	c.subs, c.closed = nil, true
	c.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe(ctx)
	}
	return nil
}

// Close ends every subscription of every connection of the hub (their
// delivery goroutines return). Tests call it at cleanup, so that a
// goroutine-leak check sees none left.
func (h *MemHub) Close() {
	h.mu.Lock()
	subs := append([]*memSub(nil), h.subs...)
	h.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe(context.Background())
	}
}

var _ broker.Transport = (*MemConn)(nil)
