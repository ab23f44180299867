package fetcher

import (
	"context"
	"sync"
	"sync/atomic"
)

// requests sends a fetch's chunk requests from a goroutine of its own, so
// that the fetch loop never waits on the network for them. A request is a
// QoS 1 publish: its acknowledgement comes on the device's one connection
// behind whatever the broker has queued for the device (a wave, a repair
// round), and while the loop waited for it nothing took chunks off the
// receive buffer, which shed them. Requests not yet sent are merged (the
// union of their bitmaps) and go as one; an error of the sender is
// returned by the next send, which ends the fetch as a failed request
// did. Chunks that arrive between a send and the publish are taken out
// of the request as it goes (held).
type requests struct {
	s    *BrokerSource
	im   Image
	held heldBits // chunks the fetch delivered, set by the fetch loop
	// seen is the highest end marker number of the image the fetch loop
	// heard (heard), sent with each request (ChunkRequest.Seen).
	seen atomic.Uint32

	mu      sync.Mutex
	pending []byte // the union of the bitmaps not yet sent; nil: none
	err     error  // the last send's error, returned once by send

	wake chan struct{}
	done chan struct{}
	quit context.CancelFunc
}

func (s *BrokerSource) startRequests(ctx context.Context, im Image, n int) *requests {
	ctx, quit := context.WithCancel(ctx)
	r := &requests{s: s, im: im, held: newHeldBits(n), wake: make(chan struct{}, 1), done: make(chan struct{}), quit: quit}
	go r.run(ctx)
	return r
}

// heard records that the fetch loop heard end marker wave of the image.
// Marker numbers grow (a publisher numbers its waves and rounds of an
// image in order), so the highest is kept.
func (r *requests) heard(wave uint32) {
	for {
		old := r.seen.Load()
		if wave <= old || r.seen.CompareAndSwap(old, wave) {
			return
		}
	}
}

// send queues a request for the chunks set in want; it never blocks.
func (r *requests) send(want []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.err; err != nil {
		r.err = nil
		return err
	}
	if r.pending == nil {
		r.pending = append([]byte(nil), want...)
	} else {
		for i, b := range want {
			r.pending[i] |= b
		}
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

func (r *requests) run(ctx context.Context) {
	defer close(r.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		r.mu.Lock()
		b := r.pending
		r.pending = nil
		r.mu.Unlock()
		if b == nil {
			continue
		}
		some := false
		for i := range 8 * len(b) {
			if b[i/8]&(1<<(i%8)) != 0 {
				if r.held.has(i) {
					b[i/8] &^= 1 << (i % 8)
				} else {
					some = true
				}
			}
		}
		if !some {
			continue
		}
		if err := r.s.request(ctx, r.im, b, false, r.seen.Load()); err != nil && ctx.Err() == nil {
			r.mu.Lock()
			r.err = err
			r.mu.Unlock()
		}
	}
}

// stop ends the sender and waits for it (a request in flight is finished
// or cancelled; one not sent yet is dropped: the fetch is over).
func (r *requests) stop() {
	r.quit()
	<-r.done
}

// heldBits is a bitmap of chunks written concurrently by the fetch loop
// (set) and read by the request sender (has).
type heldBits []atomic.Uint64

func newHeldBits(n int) heldBits { return make(heldBits, (n+63)/64) }

// set records that chunk i was delivered.
func (h heldBits) set(i int) {
	if i >= 0 && i/64 < len(h) {
		h[i/64].Or(1 << (i % 64))
	}
}

// clear undoes set (a chunk whose write failed).
func (h heldBits) clear(i int) {
	if i >= 0 && i/64 < len(h) {
		h[i/64].And(^uint64(1 << (i % 64)))
	}
}

func (h heldBits) has(i int) bool {
	return i >= 0 && i/64 < len(h) && h[i/64].Load()&(1<<(i%64)) != 0
}
