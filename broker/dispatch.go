package broker

import (
	"context"
	"strings"
	"sync"

	"github.com/firmcast/firmcast/schemas"
)

// Bounds of a dispatcher's queue of chunks (schemas.IsChunk and
// schemas.IsParityChunk messages on a FamilyChunk subscription: both are
// repaired later): beyond either (or beyond the subscription's
// SubscribeOptions.MaxQueuedBytes), a new chunk is dropped, not
// queued. A dropped chunk is one more loss of a QoS 0 message, which the
// fetcher repairs; everything else (notices, tables, replies, reports,
// requests) is always queued, so the bound never costs a message that is
// not repaired.
const (
	maxQueuedChunks     = 256
	maxQueuedChunkBytes = 4 << 20
)

// dispatcher runs one subscription's handler on its own goroutine, one
// message at a time and in arrival order, so that the network reader (the
// paho router, the nats.go reader) never waits for a handler. Its queue is
// bounded for chunks (see maxQueuedChunks): a handler that falls behind a
// flood of chunks loses chunks, not memory. Other messages are few (one
// notice per device, one reply per request) and always queued.
type dispatcher struct {
	h   Handler
	ctx context.Context
	// shed: this subscription's chunks may be dropped under pressure
	// (a FamilyChunk subscription).
	shed bool
	// maxBytes bounds the chunk bytes queued (maxQueuedChunkBytes, or the
	// subscription's MaxQueuedBytes).
	maxBytes int
	mu       sync.Mutex
	q        []queued
	// chunks and chunkBytes count the chunks in q; dropped the chunks
	// not queued because q held the bound. Guarded by mu.
	chunks, chunkBytes int
	dropped            int64
	// inline: enqueue calls h itself (SubscribeOptions.Inline); no
	// goroutine runs.
	inline bool
	wake   chan struct{}
	stop   chan struct{}
	once   sync.Once
	done   chan struct{}
}

type queued struct {
	m     Message
	chunk bool // counted in chunks and chunkBytes
}

func newDispatcher(ctx context.Context, h Handler, opts SubscribeOptions) *dispatcher {
	d := &dispatcher{h: h, ctx: ctx, shed: opts.Family == FamilyChunk, maxBytes: maxQueuedChunkBytes,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if opts.MaxQueuedBytes > 0 {
		d.maxBytes = min(opts.MaxQueuedBytes, maxQueuedChunkBytes)
	}
	if opts.Inline {
		d.inline = true
		close(d.done)
		return d
	}
	go d.run()
	return d
}

// enqueue adds m, or drops it when it is a chunk and the queue holds the
// chunk bound; it never blocks. A chunk larger than the byte bound is
// queued when no other chunk is, so that any chunk size gets through.
func (d *dispatcher) enqueue(m Message) {
	if d.inline {
		select {
		case <-d.stop:
		default:
			d.h(d.ctx, m)
		}
		return
	}
	chunk := d.shed && (schemas.IsChunk(m.Payload) || schemas.IsParityChunk(m.Payload))
	d.mu.Lock()
	if chunk {
		if d.chunks >= maxQueuedChunks || (d.chunks > 0 && d.chunkBytes+len(m.Payload) > d.maxBytes) {
			d.dropped++
			d.mu.Unlock()
			return
		}
		d.chunks++
		d.chunkBytes += len(m.Payload)
	}
	d.q = append(d.q, queued{m, chunk})
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
				d.q = nil // let a burst's backing array go
				d.mu.Unlock()
				break
			}
			e := d.q[0]
			d.q[0] = queued{}
			d.q = d.q[1:]
			if e.chunk {
				d.chunks--
				d.chunkBytes -= len(e.m.Payload)
			}
			d.mu.Unlock()
			select {
			case <-d.stop:
				return
			default:
			}
			d.h(d.ctx, e.m)
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
