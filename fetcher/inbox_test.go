package fetcher

import (
	"context"
	"testing"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// TestInboxBounds: the receive buffer takes chunks and parity chunks up to
// its count and byte bounds and sheds the rest (counted), without ever
// waiting; a chunk larger than the byte bound is taken when nothing else
// is buffered; tables and markers are taken beyond the bounds; what the
// reader takes frees its room.
func TestInboxBounds(t *testing.T) {
	ctx := context.Background()
	msg := func(m schemas.Message) broker.Message {
		b, err := schemas.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		return broker.Message{Payload: b}
	}
	img := make([]byte, 32)
	chunk := func(i, n int) broker.Message {
		return msg(&schemas.Chunk{V: schemas.Version, Image: img, Index: uint32(i), Data: make([]byte, n)})
	}
	parity := msg(&schemas.ParityChunk{V: schemas.Version, Image: img, Block: 0, Index: 0, Data: make([]byte, 1000)})
	end := msg(&schemas.WaveEnd{V: schemas.Version, Image: img, Wave: 1, Sent: []schemas.Range{{First: 0, Count: 1}}})
	one := len(chunk(0, 1000).Payload)

	// Bytes bind: 3 of 1000-byte chunks fit in 3.5 of them.
	in := newInbox(10, 3*one+one/2)
	for i := range 5 {
		in.handler(ctx, chunk(i, 1000))
	}
	in.bcastHandler(ctx, parity)
	for range nonChunkRoom {
		in.bcastHandler(ctx, end) // beyond the chunk bound, never shed
	}
	if shed, peak, _ := in.stats(); shed != 3 || peak != 3*one || len(in.ch) != 3+nonChunkRoom {
		t.Fatalf("shed %d, peak %d, %d buffered; want 3 shed, peak %d, %d buffered", shed, peak, len(in.ch), 3*one, 3+nonChunkRoom)
	}
	// Taking a chunk frees its room.
	in.got(<-in.ch)
	in.handler(ctx, chunk(9, 1000))
	if shed, _, _ := in.stats(); shed != 3 {
		t.Errorf("after one chunk was taken, a chunk was shed")
	}

	// Count binds.
	in = newInbox(2, 1<<20)
	for i := range 4 {
		in.handler(ctx, chunk(i, 10))
	}
	if shed, _, _ := in.stats(); shed != 2 {
		t.Errorf("count bound 2: %d shed of 4, want 2", shed)
	}

	// A chunk over the byte bound passes alone.
	in = newInbox(10, 100)
	in.handler(ctx, chunk(0, 1000))
	in.handler(ctx, chunk(1, 1000))
	if shed, _, _ := in.stats(); shed != 1 || len(in.ch) != 1 {
		t.Errorf("chunks over the byte bound: %d shed, %d buffered; want 1 and 1", shed, len(in.ch))
	}
}

// TestInboxWaitsForReader: with wait set (a transport that pushes back on
// the broker), a chunk arriving at a full buffer waits while the reader
// takes chunks and is queued once one is taken, not shed; a reader that
// took nothing for takeStall while the buffer stayed full does not hold
// the connection: chunks are shed again. A burst after a pause (the
// reader's last take long ago, the buffer only just full) waits.
func TestInboxWaitsForReader(t *testing.T) {
	ctx := context.Background()
	img := make([]byte, 32)
	chunk := func(i int) broker.Message {
		b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: img, Index: uint32(i), Data: make([]byte, 100)})
		if err != nil {
			t.Fatal(err)
		}
		return broker.Message{Payload: b}
	}
	in := newInbox(2, 1<<20)
	in.wait = true
	in.handler(ctx, chunk(0))
	in.got(<-in.ch) // the reader takes: it is alive
	in.handler(ctx, chunk(1))
	in.handler(ctx, chunk(2)) // full now
	handled := make(chan struct{})
	go func() {
		in.handler(ctx, chunk(3)) // waits for room
		close(handled)
	}()
	in.got(<-in.ch) // room for chunk 3
	<-handled
	if shed, _, _ := in.stats(); shed != 0 || len(in.ch) != 2 {
		t.Fatalf("a chunk at a full buffer with its reader taking: %d shed, %d buffered; want 0 and 2", shed, len(in.ch))
	}
	// A burst after a pause: the reader last took a chunk long ago
	// (the wave ended, a repair round comes), but the buffer only just
	// filled: a chunk waits for the reader about to run, not shed.
	in.mu.Lock()
	in.taken = in.taken.Add(-2 * takeStall)
	in.mu.Unlock()
	waitsForRoom(t, in, chunk(4), "a chunk arriving at a buffer just filled after a pause")
	if shed, _, _ := in.stats(); shed != 0 || len(in.ch) != 2 {
		t.Fatalf("a burst at a full buffer after a pause: %d shed, %d buffered; want 0 and 2", shed, len(in.ch))
	}
	// The fetch loop is at work on a message it took (a long rebuild):
	// the buffer full for over takeStall, a chunk still waits for it.
	in.take(<-in.ch)
	in.handler(ctx, chunk(5)) // room for it: full again
	in.mu.Lock()
	in.taken = in.taken.Add(-3 * takeStall)
	in.fullSince = in.taken.Add(takeStall / 2)
	in.mu.Unlock()
	waitsForRoom(t, in, chunk(6), "a chunk at a buffer full while the fetch loop works on what it took")
	if shed, _, _ := in.stats(); shed != 0 {
		t.Fatalf("a chunk while the fetch loop was at work: %d shed, want 0", shed)
	}
	// The reader stalls (the buffer stayed full for takeStall with
	// nothing taken, the loop not at work): arriving chunks are shed at
	// once.
	in.idle()
	in.mu.Lock()
	in.taken = in.taken.Add(-3 * takeStall)
	in.fullSince = in.taken.Add(takeStall / 2)
	in.mu.Unlock()
	in.handler(ctx, chunk(7))
	if shed, _, _ := in.stats(); shed != 1 {
		t.Fatalf("a chunk at a full buffer whose reader stalled: %d shed, want 1", shed)
	}
	// No pushback, but the transport reports its backlog (NATS): a
	// chunk waits while the backlog is under maxBacklog, and is shed
	// beyond it.
	in = newInbox(1, 1<<20)
	in.handler(ctx, chunk(0))
	in.got(<-in.ch)
	in.handler(ctx, chunk(1)) // full now
	backlog := 0
	withBacklog := func(i int) broker.Message {
		m := chunk(i)
		m.Backlog = func() int { return backlog }
		return m
	}
	waitsForRoom(t, in, withBacklog(2), "a chunk with a small transport backlog behind it")
	backlog = maxBacklog
	in.handler(ctx, withBacklog(3))
	if shed, _, waited := in.stats(); shed != 1 || waited != 1 {
		t.Fatalf("backlog: %d shed, %d waited; want 1 shed (backlog at the bound), 1 waited", shed, waited)
	}
	// Without wait (NATS, a large transport queue), never a wait.
	in = newInbox(1, 1<<20)
	in.handler(ctx, chunk(0))
	in.got(<-in.ch)
	in.handler(ctx, chunk(1))
	in.handler(ctx, chunk(2))
	if shed, _, _ := in.stats(); shed != 1 {
		t.Fatalf("no wait: %d shed, want 1", shed)
	}
}

// waitsForRoom hands m to in's handler, whose buffer is full, and fails
// unless the handler waits for room (rather than shedding m); then it
// takes one chunk off the buffer and waits for the handler to queue m.
func waitsForRoom(t *testing.T, in *inbox, m broker.Message, what string) {
	t.Helper()
	waiting, handled := make(chan struct{}, 1), make(chan struct{})
	in.mu.Lock()
	in.onWait = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	in.mu.Unlock()
	go func() {
		in.handler(context.Background(), m)
		close(handled)
	}()
	select {
	case <-waiting:
	case <-handled:
		t.Fatalf("%s was shed, not waited for room", what)
	}
	in.got(<-in.ch)
	<-handled
}

// TestInboxOwnedPayload: a payload the transport gave away
// (broker.Message.Owned) is queued as it is; any other is copied before
// the handler returns, since the transport may reuse it.
func TestInboxOwnedPayload(t *testing.T) {
	ctx := context.Background()
	b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: make([]byte, 32), Index: 0, Data: make([]byte, 100)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		owned bool
	}{
		{"owned", true},
		{"lent", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := append([]byte(nil), b...)
			in := newInbox(10, 1<<20)
			in.handler(ctx, broker.Message{Payload: p, Owned: tc.owned})
			m := <-in.ch
			if same := &m.b[0] == &p[0]; same != tc.owned || m.own != tc.owned {
				t.Fatalf("queued the transport's buffer: %v (own %v), want %v", same, m.own, tc.owned)
			}
			p[len(p)-1] ^= 0xff // the transport reuses what it lent
			if want := tc.owned; (m.b[len(m.b)-1] != b[len(b)-1]) != want {
				t.Fatalf("queued bytes changed with the transport's: %v, want %v", !want, want)
			}
			m.release()
		})
	}
}
