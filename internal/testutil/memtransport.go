package testutil

import (
	"context"
	"strings"
	"sync"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// MemHub is an in-memory broker for unit tests and fault injection: MQTT
// topic matching ("+", "#") on the MQTT form of topics, retained messages,
// and one delivery goroutine per subscription with an unbounded queue, as
// a client library has. Integration tests use real brokers instead.
type MemHub struct {
	mu        sync.Mutex
	subs      []*memSub
	retained  map[string][]byte
	onConnect map[int]func()
	nextID    int
	// Drop, when set, drops a publish (fault injection).
	Drop func(topic string, payload []byte) bool
}

// NewMemHub returns an empty hub.
func NewMemHub() *MemHub { return &MemHub{retained: map[string][]byte{}, onConnect: map[int]func(){}} }

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
func (h *MemHub) Conn() broker.Transport { return &memConn{hub: h} }

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
	hub    *MemHub
	filter string
	h      broker.Handler
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []broker.Message
	done   bool
}

func (s *memSub) push(m broker.Message) {
	s.mu.Lock()
	s.queue = append(s.queue, m)
	s.cond.Signal()
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
	}
}

func (s *memSub) Unsubscribe(ctx context.Context) error {
	s.hub.mu.Lock()
	for i, x := range s.hub.subs {
		if x == s {
			s.hub.subs = append(s.hub.subs[:i:i], s.hub.subs[i+1:]...)
			break
		}
	}
	s.hub.mu.Unlock()
	s.mu.Lock()
	s.done = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

type memConn struct {
	hub    *MemHub
	mu     sync.Mutex
	closed bool
	subs   []*memSub
}

func (c *memConn) Publish(ctx context.Context, t schemas.Topic, payload []byte, o broker.PublishOptions) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return broker.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h := c.hub
	if h.Drop != nil && h.Drop(t.MQTT, payload) {
		return nil
	}
	p := append([]byte(nil), payload...)
	h.mu.Lock()
	if o.Retain {
		if len(p) == 0 {
			delete(h.retained, t.MQTT)
		} else {
			h.retained[t.MQTT] = p
		}
	}
	var to []*memSub
	for _, s := range h.subs {
		if mqttMatch(s.filter, t.MQTT) {
			to = append(to, s)
		}
	}
	h.mu.Unlock()
	for _, s := range to {
		s.push(broker.Message{Topic: t.MQTT, Payload: p})
	}
	return nil
}

func (c *memConn) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	s := &memSub{hub: c.hub, filter: f.MQTT, h: h}
	s.cond = sync.NewCond(&s.mu)
	c.hub.mu.Lock()
	c.hub.subs = append(c.hub.subs, s)
	if o.Retained {
		for t, p := range c.hub.retained {
			if mqttMatch(f.MQTT, t) {
				s.queue = append(s.queue, broker.Message{Topic: t, Payload: p, Retained: true})
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

func (c *memConn) Request(ctx context.Context, t schemas.Topic, p []byte) ([]byte, error) {
	return nil, broker.ErrTimeout
}

func (c *memConn) Reply(ctx context.Context, req broker.Message, p []byte) error { return nil }

// OnConnect registers f to be called by MemHub.Reconnect.
func (c *memConn) OnConnect(f func()) (stop func()) {
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

// Close unsubscribes everything; later publishes fail with ErrClosed.
func (c *memConn) Close(ctx context.Context) error {
	c.mu.Lock()
	subs := c.subs
	c.subs, c.closed = nil, true
	c.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe(ctx)
	}
	return nil
}
