package broker

import (
	"context"
	"strings"
	"sync"
)

// dispatcher runs one subscription's handler on its own goroutine, one
// message at a time and in arrival order, so that the network reader (the
// paho router, the nats.go reader) never waits for a handler. Its queue is
// unbounded: a handler that falls behind costs memory, not lost messages.
type dispatcher struct {
	h    Handler
	ctx  context.Context
	mu   sync.Mutex
	q    []Message
	wake chan struct{}
	stop chan struct{}
	once sync.Once
	done chan struct{}
}

func newDispatcher(ctx context.Context, h Handler) *dispatcher {
	d := &dispatcher{h: h, ctx: ctx, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go d.run()
	return d
}

// enqueue adds m; it never blocks.
func (d *dispatcher) enqueue(m Message) {
	d.mu.Lock()
	d.q = append(d.q, m)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// close stops the goroutine (after the handler call in progress returns)
// and drops queued messages. Safe to call more than once.
func (d *dispatcher) close() {
	d.once.Do(func() { close(d.stop) })
}

func (d *dispatcher) run() {
	defer close(d.done)
	for {
		select {
		case <-d.stop:
			return
		case <-d.wake:
		}
		for {
			d.mu.Lock()
			if len(d.q) == 0 {
				d.mu.Unlock()
				break
			}
			m := d.q[0]
			d.q[0] = Message{}
			d.q = d.q[1:]
			d.mu.Unlock()
			select {
			case <-d.stop:
				return
			default:
			}
			d.h(d.ctx, m)
		}
	}
}

// mqttMatch reports whether MQTT topic name matches filter (with "+" and
// "#" wildcards; a "$share/group/" prefix is ignored).
func mqttMatch(filter, topic string) bool {
	if strings.HasPrefix(filter, "$share/") {
		parts := strings.SplitN(filter, "/", 3)
		if len(parts) < 3 {
			return false
		}
		filter = parts[2]
	}
	fs := strings.Split(filter, "/")
	ts := strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) {
			return false
		}
		if f != "+" && f != ts[i] {
			return false
		}
	}
	return len(fs) == len(ts)
}
