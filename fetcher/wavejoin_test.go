package fetcher

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// joinConn hands each chunk request a device sends (not its table
// requests) to reqs, with when it was sent.
type joinConn struct {
	waveConn
	reqs chan sentReq
}

type sentReq struct {
	at  time.Time
	req schemas.ChunkRequest
}

func (c joinConn) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	var r schemas.ChunkRequest
	if o.Family == broker.FamilyChunkRequest && schemas.Decode(b, &r) == nil && !r.WantTable {
		select {
		case c.reqs <- sentReq{time.Now(), r}:
		default:
		}
	}
	return c.Transport.Publish(ctx, t, b, o)
}

// joinRig is a coded device (newCodedRig) that took its chunk table from
// the wave, through Table, and is fetching; send broadcasts.
type joinRig struct {
	codedRig
	send   func(schemas.Message)
	reqs   chan sentReq
	sink   *memSink
	done   chan error
	tabled time.Time // just before the table was broadcast
}

func startJoinRig(ctx context.Context, t *testing.T, seed uint64, root string, listen, gap, idle time.Duration) *joinRig {
	t.Helper()
	r := &joinRig{codedRig: newCodedRig(t, seed, root), reqs: make(chan sentReq, 16), done: make(chan error, 1)}
	ready := make(chan struct{})
	conn := joinConn{waveConn{Transport: r.hub.Conn(), chunks: r.bt.MQTT, ready: ready}, r.reqs}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-" + root,
		Idle: idle, ListenFirst: listen, Quiet: listen, WaveGap: gap, SummaryBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.send = sender(ctx, t, r.hub.Conn(), r.bt)
	table := make(chan error, 1)
	go func() {
		b, err := src.Table(ctx, r.im)
		if err == nil && !bytes.Equal(b, mustEncode(t, r.coded)) {
			err = errWrongTable
		}
		table <- err
	}()
	<-ready
	r.tabled = time.Now()
	r.send(r.coded) // the wave's first message
	if err := <-table; err != nil {
		t.Fatal(err)
	}
	r.sink = newMemSink(len(r.fx.img))
	go func() {
		r.done <- src.FetchRepair(ctx, r.im, AllChunks(int(r.coded.NumChunks())), checkedWrite(r.coded, r.im, r.sink), Repair{Table: r.coded, Slot: r.sink})
	}()
	return r
}

var errWrongTable = errors.New("Table returned another table")

func mustEncode(t *testing.T, m schemas.Message) []byte {
	t.Helper()
	b, err := schemas.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sendPositions broadcasts the chunks at carousel positions [from, to),
// except those at the positions in skip.
func (r *joinRig) sendPositions(ctx context.Context, from, to int, skip ...int) {
	order := blockcode.Order(r.coded)
	for p := from; p < to; p++ {
		if slices.Contains(skip, p) {
			continue
		}
		i := order[p]
		b, _ := r.read(ctx, i)
		r.send(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: i, Data: b})
	}
}

// next returns the next chunk request the device sends; why names it.
func (r *joinRig) next(ctx context.Context, t *testing.T, why string) sentReq {
	t.Helper()
	select {
	case q := <-r.reqs:
		return q
	case <-ctx.Done():
		t.Fatal(why)
	}
	return sentReq{}
}

func (r *joinRig) finish(t *testing.T) {
	t.Helper()
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.sink.data, r.fx.img) {
		t.Fatal("wrong image")
	}
}

// TestTableFromWaveListensForIt: a device that took its chunk table from
// a wave knows the wave flows, though none of its chunks has reached its
// fetch yet (on a loaded host the first one came 1.7 s after the table):
// it asks for nothing when its listening period (1 ns here) ends, only
// once the wave has paused twice (WaveGap, then Idle), and then for all
// of it. Before, it asked for the image's first Window chunks by unicast
// as its listening period ended, while the wave was bringing them.
func TestTableFromWaveListensForIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const gap = 300 * time.Millisecond
	r := startJoinRig(ctx, t, 31, "tablewave", time.Nanosecond, gap, gap)
	first := r.next(ctx, t, "the device never asked for the wave that stopped")
	if waited := first.at.Sub(r.tabled); waited < 2*gap {
		t.Fatalf("the device asked %v after the table came with the wave; want no request before the wave paused twice (%v)", waited, 2*gap)
	}
	if got, want := (bitmap{n: int(r.coded.NumChunks()), bits: first.req.Bitmap}).count(), int(r.coded.NumChunks()); got != want {
		t.Errorf("the request after the wave stopped names %d chunks; want all %d", got, want)
	}
	r.sendPositions(ctx, 0, int(r.coded.NumChunks()))
	r.finish(t)
}

// TestMidWaveAskFromJoin: a device that took the table from a wave
// mid-carousel (its first chunk at position 10) and lost the chunk at
// position 14 asks, when the wave pauses, for that chunk alone: the ones
// before position 10 went by before it listened, and are for the pass
// after or its loss summary after the wave's end marker, with the
// fleet's. Before, it asked for them too, by unicast, in the middle of
// the wave.
func TestMidWaveAskFromJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const gap = 100 * time.Millisecond
	r := startJoinRig(ctx, t, 37, "midjoin", time.Nanosecond, gap, gap)
	r.sendPositions(ctx, 10, 20, 14)
	first := r.next(ctx, t, "the device never asked for the chunk it lost")
	order := blockcode.Order(r.coded)
	var asked []int
	bm := bitmap{n: int(r.coded.NumChunks()), bits: first.req.Bitmap}
	for i := bm.next(0); i >= 0; i = bm.next(i + 1) {
		asked = append(asked, blockcode.Position(r.coded, uint32(i)))
	}
	if want := []int{14}; !slices.Equal(asked, want) {
		t.Fatalf("the wave's pause made the device ask for the chunks at positions %v (chunk %d is at 14); want %v", asked, order[14], want)
	}
	// The rest of the wave, its end marker, then what the device asks
	// for in its summary (positions 0 to 9): it completes.
	r.sendPositions(ctx, 20, int(r.coded.NumChunks()))
	r.send(&schemas.WaveEnd{V: schemas.Version, Image: r.im.Digest, Wave: 1, Sent: []schemas.Range{{First: 0, Count: uint32(r.coded.NumChunks())}}})
	go func() {
		for {
			select {
			case <-r.reqs:
				r.sendPositions(ctx, 0, 10)
				r.sendPositions(ctx, 14, 15)
			case <-ctx.Done():
				return
			}
		}
	}()
	r.finish(t)
}

// TestMidWaveAskSummarisedAfterMarker: a coded device that asked during a
// wave (a pause after it lost the chunk at position 5) sends its loss
// summary after the wave's end marker, naming the marker, though what it
// asked for is outstanding: the publisher answers no request taken while
// its wave flowed (publisher's repairBatch.midWave), and the summary is
// what it answers. Idle is an hour: before, the device waited for its
// mid-wave request's answer until Idle.
func TestMidWaveAskSummarisedAfterMarker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := startJoinRig(ctx, t, 41, "midsummary", time.Nanosecond, 50*time.Millisecond, time.Hour)
	n := int(r.coded.NumChunks())
	r.sendPositions(ctx, 0, 16, 5)
	mid := r.next(ctx, t, "no request when the wave paused")
	if mid.req.Seen != 0 {
		t.Fatalf("the mid-wave request names end marker %d; want none", mid.req.Seen)
	}
	r.sendPositions(ctx, 16, n)
	r.send(&schemas.WaveEnd{V: schemas.Version, Image: r.im.Digest, Wave: 1, Sent: []schemas.Range{{First: 0, Count: uint32(n)}}})
	sum := r.next(ctx, t, "no loss summary after the end marker of a wave the device asked during")
	if sum.req.Seen != 1 {
		t.Errorf("the summary names end marker %d; want 1", sum.req.Seen)
	}
	asked := bitmap{n: n, bits: sum.req.Bitmap}
	if lost := blockcode.Order(r.coded)[5]; asked.count() != 1 || !asked.has(int(lost)) {
		t.Errorf("the summary names %d chunks; want chunk %d alone (position 5)", asked.count(), lost)
	}
	r.sendPositions(ctx, 5, 6)
	r.finish(t)
}
