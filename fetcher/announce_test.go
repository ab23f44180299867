package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// countConn counts the chunk requests a device sends.
type countConn struct {
	waveConn
	requests *atomic.Int64
	sent     chan struct{}  // told of each request, if not full
	seen     *atomic.Uint32 // if not nil: the last request's Seen
}

func (c countConn) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunkRequest {
		c.requests.Add(1)
		var r schemas.ChunkRequest
		if c.seen != nil && schemas.Decode(b, &r) == nil {
			c.seen.Store(r.Seen)
		}
		select {
		case c.sent <- struct{}{}:
		default:
		}
	}
	return c.Transport.Publish(ctx, t, b, o)
}

// codedRig is a 32-chunk test image with a coded table of 2 blocks of 16
// chunks, 4 parity chunks each, the Image naming both tables, a reader of
// its chunks, and an in-memory hub with the image's broadcast topic under
// root.
type codedRig struct {
	fx     fixture
	coded  *schemas.ChunkTable
	im     Image
	read   blockcode.ChunkReader
	hub    *testutil.MemHub
	topics schemas.Topics
	bt     schemas.Topic
}

func newCodedRig(t *testing.T, seed uint64, root string) codedRig {
	t.Helper()
	fx := newFixture(t, 32*testChunk, testChunk, seed)
	read := func(_ context.Context, i uint32) ([]byte, error) {
		off := int(i) * testChunk
		return fx.img[off:min(off+testChunk, len(fx.img))], nil
	}
	coded, err := blockcode.Commit(context.Background(), fx.table, 16, 4, read)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := schemas.Encode(coded)
	if err != nil {
		t.Fatal(err)
	}
	cs := sha256.Sum256(cb)
	im := fx.im
	im.CodedTableDigest = cs[:]
	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics(root)
	bt, _ := topics.Chunks(im.Hex())
	return codedRig{fx: fx, coded: coded, im: im, read: read, hub: hub, topics: topics, bt: bt}
}

// sender returns a function that broadcasts a message on bt through pub.
func sender(ctx context.Context, t *testing.T, pub broker.Transport, bt schemas.Topic) func(schemas.Message) {
	return func(m schemas.Message) {
		t.Helper()
		b, err := schemas.Encode(m)
		if err == nil {
			err = pub.Publish(ctx, bt, b, broker.PublishOptions{Family: broker.FamilyChunk})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// blockParity returns the parity chunks of block b of the coded image.
func blockParity(ctx context.Context, t *testing.T, coded *schemas.ChunkTable, read blockcode.ChunkReader, b uint32) [][]byte {
	t.Helper()
	enc, err := blockcode.NewEncoder(coded)
	if err != nil {
		t.Fatal(err)
	}
	par, err := enc.Parity(ctx, b, read)
	if err != nil {
		t.Fatal(err)
	}
	return par
}

// sendWave broadcasts every chunk of the coded image, then the wave's end
// marker.
func sendWave(ctx context.Context, send func(schemas.Message), coded *schemas.ChunkTable, im Image, read blockcode.ChunkReader) {
	for i := range uint32(coded.NumChunks()) {
		b, _ := read(ctx, i)
		send(&schemas.Chunk{V: schemas.Version, Image: im.Digest, Index: i, Data: b})
	}
	send(&schemas.WaveEnd{V: schemas.Version, Image: im.Digest, Wave: 1, Sent: []schemas.Range{{First: 0, Count: uint32(coded.NumChunks())}}})
}

// TestAnnouncementQuietsCoveredDevice: after a wave's end marker, a device
// whose need a repair announcement covers (it lacks one chunk of block 0,
// one parity chunk of block 0 is announced) sends no loss summary and
// rebuilds from the parity that follows; a device the announcement does
// not cover (it lacks two) sends its summary. The neediest device's
// back-off is the shorter one.
func TestAnnouncementQuietsCoveredDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newCodedRig(t, 13, "announcetest")
	fx, coded, im, read, hub, topics, bt := r.fx, r.coded, r.im, r.read, r.hub, r.topics, r.bt
	var err error

	type dev struct {
		name     string
		lost     map[uint32]bool
		requests atomic.Int64
		seen     atomic.Uint32
		ready    chan struct{}
		sent     chan struct{}
		src      *BrokerSource
		sink     *memSink
		err      chan error
	}
	devs := []*dev{
		{name: "covered", lost: map[uint32]bool{3: true}},
		{name: "needy", lost: map[uint32]bool{3: true, 4: true}},
	}
	for _, d := range devs {
		d.ready, d.err, d.sent = make(chan struct{}), make(chan error, 1), make(chan struct{}, 1)
		conn := countConn{waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: d.ready}, &d.requests, d.sent, &d.seen}
		conn.Transport.(*testutil.MemConn).SetDrop(func(_ string, b []byte) bool {
			var c schemas.Chunk
			return schemas.IsChunk(b) && schemas.Decode(b, &c) == nil && d.lost[c.Index]
		})
		d.src, err = NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-" + d.name,
			Idle: 5 * time.Second, ListenFirst: time.Hour, Quiet: time.Hour, SummaryBackoff: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		d.sink = newMemSink(len(fx.img))
		go func() {
			d.err <- d.src.FetchRepair(ctx, im, AllChunks(int(coded.NumChunks())), checkedWrite(coded, im, d.sink), Repair{Table: coded, Slot: d.sink})
		}()
		<-d.ready
	}
	send := sender(ctx, t, hub.Conn(), bt)
	sendWave(ctx, send, coded, im, read)
	send(&schemas.RepairAnnounce{V: schemas.Version, Image: im.Digest, Wave: 1, Need: []schemas.BlockNeed{{Block: 0, Parity: 1}}})
	// The needy device, not covered, sends its summary (within its
	// back-off slot, under a second).
	select {
	case <-devs[1].sent:
	case <-time.After(5 * time.Second):
		t.Fatal("the device the announcement does not cover sent no loss summary")
	}
	par := blockParity(ctx, t, coded, read, 0)
	for j := range 2 {
		send(&schemas.ParityChunk{V: schemas.Version, Image: im.Digest, Block: 0, Index: uint32(j), Data: par[j]})
	}
	for _, d := range devs {
		if err := <-d.err; err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		if !bytes.Equal(d.sink.data, fx.img) {
			t.Fatalf("%s: wrong image", d.name)
		}
	}
	if r, s := devs[0].requests.Load(), devs[0].src.Suppressed; r != 0 || s != 1 {
		t.Errorf("covered device: %d requests, %d summaries suppressed; want 0 and 1", r, s)
	}
	if s := devs[1].src.Suppressed; s != 0 {
		t.Errorf("needy device: %d summaries suppressed; want 0", s)
	}
	// Its summary names the wave's end marker, the last it heard
	// (ChunkRequest.Seen): the publisher counts no earlier round as on
	// its way to it.
	if s := devs[1].seen.Load(); s != 1 {
		t.Errorf("needy device's summary names end marker %d, want 1 (the wave's)", s)
	}
}

// TestSummaryDelayNeediestFirst: with coded repair a device's back-off is
// spread exponentially (about one device in summaryGroup speaks near
// zero) and is shorter the larger its largest block need; a plain
// device's shrinks with the share of the image it lacks.
func TestSummaryDelayNeediestFirst(t *testing.T) {
	const b = time.Second
	half := 1 + math.Log(0.5)/math.Log(summaryGroup) // s at u = 0.5
	for _, tc := range []struct {
		name    string
		left, n int
		needs   []int
		parity  int
		u       float64
		want    float64 // of b
	}{
		{"nothing needed", 1, 10, []int{0, 0}, 32, 0.5, half},
		{"need 1 of 32", 1, 10, []int{1, 0}, 32, 0.5, math.Pow(half, 1+3.0/32)},
		{"need half the parity", 20, 512, []int{16, 3}, 32, 0.5, math.Pow(half, 2.5)},
		{"need all the parity", 40, 512, []int{32, 0}, 32, 0.5, math.Pow(half, 4)},
		{"need beyond the parity", 50, 512, []int{40, 10}, 32, 0.5, math.Pow(half, 4)},
		{"no parity committed", 1, 10, []int{3}, 0, 0.5, half},
		{"u near 0", 1, 10, []int{0}, 32, 0.0005, 0},
		{"u 0", 1, 10, []int{0}, 32, 0, 0},
		{"u near 1", 1, 10, []int{0}, 32, 0.999999, 1},
		{"plain, 10% missing", 1, 10, nil, 0, 0.5, 0.45},
		{"plain, all missing", 10, 10, nil, 0, 0.5, 0},
	} {
		d := summaryDelay(b, tc.left, tc.n, tc.needs, tc.parity, tc.u)
		if got := d.Seconds(); math.Abs(got-tc.want) > 1e-3 {
			t.Errorf("%s: delay %v, want %.4fs", tc.name, d, tc.want)
		}
	}
	// Over a fleet's draws of u: about one in summaryGroup near zero,
	// most late; and for every draw, a needier device no later.
	early, late := 0, 0
	const draws = 100000
	for k := range draws {
		u := (float64(k) + 0.5) / draws
		d := summaryDelay(b, 1, 10, []int{0}, 32, u)
		if d < b/10 {
			early++
		}
		if d > b/2 {
			late++
		}
		prev := d
		for _, need := range []int{1, 4, 8, 16, 32} {
			dn := summaryDelay(b, 1, 10, []int{need}, 32, u)
			if dn > prev {
				t.Fatalf("u %v: need %d waits %v, longer than a smaller need (%v)", u, need, dn, prev)
			}
			prev = dn
		}
	}
	if want := draws / summaryGroup * 2; early > want {
		t.Errorf("%d of %d draws within a tenth of the back-off; want at most %d", early, draws, want)
	}
	if late < draws*9/10 {
		t.Errorf("%d of %d draws past half the back-off; want at least 90%%", late, draws)
	}
}

// TestRoundLeftShortAsksSoon: a device whose summary brought a repair
// round about, and which the round then leaves short (one of the two
// parity chunks it needs is lost), sends a summary of what is missing
// after the round's end marker (and its back-off), not after a whole
// Idle.
func TestRoundLeftShortAsksSoon(t *testing.T) {
	askedAfterMarker(t, 17, "roundshort", true, "the round's")
}

// TestCrossedSummaryAsksSoon: a device whose loss summary the publisher
// answers with nothing (it counts parity already on its way, a round
// that crossed the summary) and which that round leaves short, asks
// again after the round's end marker (and the short back-off), not
// after a whole Idle. Before, its summary's chunks stayed in flight
// until Idle: 2 s of a 500-device bench's staged time for one device.
func TestCrossedSummaryAsksSoon(t *testing.T) {
	askedAfterMarker(t, 19, "crossed", false, "the one after the crossing round")
}

// askedAfterMarker runs a shortDevice to the end of a round that sends
// one of the two parity chunks it lacks, announced for it (mine) or not
// (a round that crossed its summary), and checks that it asks again
// after the round's end marker; then the other parity chunk completes
// it. what names its second request.
func askedAfterMarker(t *testing.T, seed uint64, root string, mine bool, what string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := startShortDevice(ctx, t, seed, root)
	im, send := d.im, d.send
	if mine {
		send(&schemas.RepairAnnounce{V: schemas.Version, Image: im.Digest, Wave: 1, Need: []schemas.BlockNeed{{Block: 0, Parity: 2}}})
	}
	par := blockParity(ctx, t, d.coded, d.read, 0)
	send(&schemas.ParityChunk{V: schemas.Version, Image: im.Digest, Block: 0, Index: 0, Data: par[0]}) // the round's other one is lost
	send(&schemas.WaveEnd{V: schemas.Version, Image: im.Digest, Wave: 2, Sent: []schemas.Range{{First: 0, Count: 16}}})
	select {
	case <-d.sent:
	case <-ctx.Done():
		t.Fatalf("a device the round left short (announced for it: %v) did not ask again after the round's end marker (Idle is an hour)", mine)
	}
	send(&schemas.ParityChunk{V: schemas.Version, Image: im.Digest, Block: 0, Index: 2, Data: par[2]})
	if err := <-d.done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.sink.data, d.fx.img) {
		t.Fatal("wrong image")
	}
	if r := d.requests.Load(); r != 2 {
		t.Errorf("%d requests; want the wave's summary and %s", r, what)
	}
}

// shortDevice is a coded device that lost chunks 3 and 4 of a wave
// (block 0) and sent its loss summary: Idle is an hour, so whatever it
// asks for next comes from an end marker.
type shortDevice struct {
	fx       fixture
	coded    *schemas.ChunkTable
	im       Image
	read     blockcode.ChunkReader
	send     func(schemas.Message)
	sent     chan struct{}
	requests *atomic.Int64
	sink     *memSink
	done     chan error
}

// startShortDevice starts a shortDevice's fetch, sends it the wave and
// waits for its summary.
func startShortDevice(ctx context.Context, t *testing.T, seed uint64, root string) *shortDevice {
	t.Helper()
	r := newCodedRig(t, seed, root)
	d := &shortDevice{fx: r.fx, coded: r.coded, im: r.im, read: r.read, sent: make(chan struct{}, 1), requests: new(atomic.Int64), done: make(chan error, 1)}
	ready := make(chan struct{})
	conn := countConn{waveConn{Transport: r.hub.Conn(), chunks: r.bt.MQTT, ready: ready}, d.requests, d.sent, nil}
	lost := map[uint32]bool{3: true, 4: true}
	conn.Transport.(*testutil.MemConn).SetDrop(func(_ string, b []byte) bool {
		var c schemas.Chunk
		return schemas.IsChunk(b) && schemas.Decode(b, &c) == nil && lost[c.Index]
	})
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-" + root,
		Idle: time.Hour, ListenFirst: time.Hour, Quiet: time.Hour, WaveGap: time.Hour, SummaryBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d.sink = newMemSink(len(d.fx.img))
	go func() {
		d.done <- src.FetchRepair(ctx, d.im, AllChunks(int(d.coded.NumChunks())), checkedWrite(d.coded, d.im, d.sink), Repair{Table: d.coded, Slot: d.sink})
	}()
	<-ready
	d.send = sender(ctx, t, r.hub.Conn(), r.bt)
	sendWave(ctx, d.send, d.coded, d.im, d.read)
	select {
	case <-d.sent:
	case <-ctx.Done():
		t.Fatal("no loss summary after the wave")
	}
	return d
}

// TestTimerWaitsForBufferedMessages: a timer that fires while received
// messages wait in the device's buffer is acted on only once they are
// taken, so a loop slower than the stream does not ask for (or count lost
// in a summary) what it holds. The loop is held on a message whose
// processing does not re-arm the timer (a chunk that fails its check),
// the timer expires meanwhile, and the whole wave is in the buffer when
// the loop goes on: before, its select took the fired timer or a message
// at random and asked for chunks sitting in its own buffer (about one
// time in two; eight rounds here).
func TestTimerWaitsForBufferedMessages(t *testing.T) {
	for round := range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		r := newCodedRig(t, 17+uint64(round), "draintest")
		var requests atomic.Int64
		ready := make(chan struct{})
		conn := countConn{waveConn{Transport: r.hub.Conn(), chunks: r.bt.MQTT, ready: ready}, &requests, make(chan struct{}, 1), nil}
		const idle = 5 * time.Millisecond
		src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-slow",
			Idle: time.Hour, ListenFirst: time.Hour, Quiet: idle, WaveGap: idle, SummaryBackoff: idle})
		if err != nil {
			t.Fatal(err)
		}
		sink := newMemSink(len(r.fx.img))
		held, gate := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- src.FetchRepair(ctx, r.im, AllChunks(int(r.coded.NumChunks())), func(i int, b []byte) error {
				if err := r.coded.VerifyChunk(uint32(i), b); err != nil {
					close(held)
					<-gate // the wave arrives meanwhile, the timer expires
					return err
				}
				_, err := sink.WriteAt(b, r.im.Offset(i))
				return err
			}, Repair{Table: r.coded, Slot: sink})
		}()
		<-ready
		send := sender(ctx, t, r.hub.Conn(), r.bt)
		last, _ := r.read(ctx, r.coded.NumChunks()-1)
		send(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: r.coded.NumChunks() - 1, Data: last}) // arms the timer (Quiet)
		bad := bytes.Repeat([]byte{0xee}, testChunk)
		send(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: 0, Data: bad})
		<-held
		sendWave(ctx, send, r.coded, r.im, r.read)
		time.Sleep(10 * idle) // the loop held: let the armed timer expire
		close(gate)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		cancel()
		if !bytes.Equal(sink.data, r.fx.img) {
			t.Fatal("wrong image")
		}
		if n := requests.Load(); n != 0 {
			t.Fatalf("round %d: %d chunk requests for chunks the device held in its buffer; want 0", round, n)
		}
	}
}
