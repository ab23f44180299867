package fetcher

import (
	"context"
	"sync"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// memHub is an in-memory broker for unit tests: exact topic match on the
// MQTT form, one delivery goroutine per subscription with an unbounded
// queue, like a real client library.
type memHub struct {
	mu   sync.Mutex
	subs map[string][]*memSub
	// drop, when set, drops a publish on a topic (fault injection).
	drop func(topic string, payload []byte) bool
}

func newMemHub() *memHub { return &memHub{subs: map[string][]*memSub{}} }

type memSub struct {
	hub   *memHub
	topic string
	h     broker.Handler
	mu    sync.Mutex
	cond  *sync.Cond
	queue [][]byte
	done  bool
	exit  chan struct{}
}

func (s *memSub) loop() {
	defer close(s.exit)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.done {
			s.cond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return
		}
		b := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		s.h(context.Background(), broker.Message{Topic: s.topic, Payload: b})
	}
}

func (s *memSub) Unsubscribe(ctx context.Context) error {
	s.hub.mu.Lock()
	list := s.hub.subs[s.topic]
	for i, x := range list {
		if x == s {
			s.hub.subs[s.topic] = append(list[:i:i], list[i+1:]...)
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

// memConn is one client of the hub; it implements broker.Transport.
type memConn struct{ hub *memHub }

func (c memConn) Publish(ctx context.Context, t schemas.Topic, payload []byte, _ broker.PublishOptions) error {
	if c.hub.drop != nil && c.hub.drop(t.MQTT, payload) {
		return nil
	}
	c.hub.mu.Lock()
	subs := append([]*memSub(nil), c.hub.subs[t.MQTT]...)
	c.hub.mu.Unlock()
	for _, s := range subs {
		s.mu.Lock()
		s.queue = append(s.queue, append([]byte(nil), payload...))
		s.cond.Signal()
		s.mu.Unlock()
	}
	return nil
}

func (c memConn) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, _ broker.SubscribeOptions) (broker.Subscription, error) {
	s := &memSub{hub: c.hub, topic: f.MQTT, h: h, exit: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	c.hub.mu.Lock()
	c.hub.subs[f.MQTT] = append(c.hub.subs[f.MQTT], s)
	c.hub.mu.Unlock()
	go s.loop()
	return s, nil
}

func (c memConn) Request(ctx context.Context, t schemas.Topic, p []byte) ([]byte, error) {
	return nil, broker.ErrTimeout
}
func (c memConn) Reply(ctx context.Context, req broker.Message, p []byte) error { return nil }
func (c memConn) Close(ctx context.Context) error                               { return nil }
