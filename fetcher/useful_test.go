package fetcher

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestUsefulAdmit: the receive path's filter drops a chunk the fetch
// holds and parity beyond what its block lacks (queued and held parity
// counted), refuses parity that is not the table's before it takes a good
// one's place, and leaves what it cannot judge to the fetch loop.
func TestUsefulAdmit(t *testing.T) {
	ctx := context.Background()
	r := newCodedRig(t, 31, "usefultest") // 2 blocks of 16 chunks, 4 parity chunks each
	par0 := blockParity(ctx, t, r.coded, r.read, 0)
	enc := func(m schemas.Message) []byte {
		b, err := schemas.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chunk := func(i uint32) []byte {
		d, _ := r.read(ctx, i)
		return enc(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: i, Data: d})
	}
	parity := func(img []byte, blk, j uint32, data []byte) []byte {
		return enc(&schemas.ParityChunk{V: schemas.Version, Image: img, Block: blk, Index: j, Data: data})
	}
	corrupt := bytes.Clone(par0[1])
	corrupt[3] ^= 1

	type step struct {
		name  string
		msg   []byte
		admit bool
		taken bool // the loop takes it at once
	}
	for _, tc := range []struct {
		name       string
		held       []int
		lack, have [2]int // per block: chunks lacking, parity held
		steps      []step
		skipped    int64
		bad        int64
	}{
		{
			name: "chunks held and wanted", held: []int{0, 5},
			steps: []step{
				{"held chunk 5", chunk(5), false, false},
				{"wanted chunk 6", chunk(6), true, false},
				{"garbage", []byte{0xa0}, true, false},
			},
			skipped: 1,
		},
		{
			name: "parity up to the need", lack: [2]int{1, 0},
			steps: []step{
				{"1 of lack 1 + margin 2", parity(r.im.Digest, 0, 0, par0[0]), true, false},
				{"2 of 3", parity(r.im.Digest, 0, 1, par0[1]), true, false},
				{"3 of 3", parity(r.im.Digest, 0, 2, par0[2]), true, false},
				{"4: beyond", parity(r.im.Digest, 0, 3, par0[3]), false, false},
				{"block 1 lacks nothing", parity(r.im.Digest, 1, 0, par0[0]), false, false},
			},
			skipped: 2,
		},
		{
			name: "taken parity makes room", lack: [2]int{2, 0}, have: [2]int{1, 0},
			steps: []step{
				{"1 of 3", parity(r.im.Digest, 0, 0, par0[0]), true, true},
				{"2 of 3", parity(r.im.Digest, 0, 1, par0[1]), true, true},
				{"3 of 3", parity(r.im.Digest, 0, 2, par0[2]), true, true},
				{"4 of 3, three taken", parity(r.im.Digest, 0, 3, par0[3]), true, false},
			},
		},
		{
			name: "bad parity takes no place", lack: [2]int{1, 1},
			steps: []step{
				{"corrupt", parity(r.im.Digest, 0, 1, corrupt), false, false},
				{"another image's", parity(bytes.Repeat([]byte{9}, 32), 0, 0, par0[0]), false, false},
				{"block 0's as block 1's", parity(r.im.Digest, 1, 0, par0[0]), false, false},
				{"index beyond the table's", parity(r.im.Digest, 0, 9, par0[0]), false, false},
				{"good 1", parity(r.im.Digest, 0, 0, par0[0]), true, false},
				{"good 2", parity(r.im.Digest, 0, 1, par0[1]), true, false},
				{"good 3", parity(r.im.Digest, 0, 2, par0[2]), true, false},
				{"block beyond the image: the loop's to refuse", parity(r.im.Digest, 7, 0, par0[0]), true, false},
			},
			bad: 4,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUseful(int(r.coded.NumChunks()), r.coded)
			for _, i := range tc.held {
				u.held.set(i)
			}
			for b := range 2 {
				u.setNeed(uint32(b), tc.lack[b], tc.have[b])
			}
			for _, s := range tc.steps {
				ok, blk := u.admit(s.msg)
				if ok != s.admit {
					t.Fatalf("%s: admitted %v, want %v", s.name, ok, s.admit)
				}
				if ok && s.taken {
					u.taken(blk)
				}
			}
			if got := u.skipped.Load(); got != tc.skipped {
				t.Errorf("skipped %d, want %d", got, tc.skipped)
			}
			if got := u.bad.Load(); got != tc.bad {
				t.Errorf("bad %d, want %d", got, tc.bad)
			}
		})
	}
}

// handledConn tells done of every message a handler of the broadcast
// topic has returned from.
type handledConn struct {
	waveConn
	done chan struct{}
}

func (c handledConn) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	if f.MQTT == c.chunks {
		inner := h
		h = func(ctx context.Context, m broker.Message) {
			inner(ctx, m)
			c.done <- struct{}{}
		}
	}
	return c.waveConn.Subscribe(ctx, f, h, o)
}

// TestBrokerSkipsSurplusParity: a repair round arriving while the fetch
// loop is busy is queued only as far as the device can use it: of a
// round of 4 parity chunks for block 1 (the device lacks none there) and
// 4 for block 0 (it lost chunk 3, and chunk 0 is in the loop's hands,
// not written yet: 2 lacking, plus parityMargin), block 1's are dropped
// unqueued, not counted as losses; block 0 is rebuilt from what was
// queued, with no request.
func TestBrokerSkipsSurplusParity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := newCodedRig(t, 37, "skiptest")
	var requests atomic.Int64
	ready := make(chan struct{})
	handled := make(chan struct{}, 64)
	conn := handledConn{waveConn{Transport: countConn{waveConn{Transport: r.hub.Conn()}, &requests, make(chan struct{}, 1), nil}, chunks: r.bt.MQTT, ready: ready}, handled}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-skip",
		Idle: time.Hour, ListenFirst: time.Hour, Quiet: time.Hour, WaveGap: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	n := r.coded.NumChunks()
	const lost = 3
	sink := newMemSink(len(r.fx.img))
	busy, gate := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- src.FetchRepair(ctx, r.im, AllChunks(int(n)), func(i int, b []byte) error {
			if i == 0 {
				close(busy)
				<-gate // the round arrives meanwhile
			}
			_, err := sink.WriteAt(b, r.im.Offset(i))
			return err
		}, Repair{Table: r.coded, Slot: sink})
	}()
	<-ready
	send := sender(ctx, t, r.hub.Conn(), r.bt)
	sent := 0
	for k := range n {
		if i := (k + 1) % n; i != lost { // chunk 0 last
			b, _ := r.read(ctx, i)
			send(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: i, Data: b})
			sent++
		}
	}
	<-busy
	for _, b := range []uint32{1, 0} {
		for j, d := range blockParity(ctx, t, r.coded, r.read, b) {
			send(&schemas.ParityChunk{V: schemas.Version, Image: r.im.Digest, Block: b, Index: uint32(j), Data: d})
			sent++
		}
	}
	for range sent {
		select {
		case <-handled:
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.data, r.fx.img) {
		t.Fatal("wrong image")
	}
	if src.Skipped != 4 || src.Shed != 0 || src.Rebuilt != 1 || requests.Load() != 0 {
		t.Errorf("skipped %d, shed %d, rebuilt %d, requests %d; want 4, 0, 1, 0", src.Skipped, src.Shed, src.Rebuilt, requests.Load())
	}
}

// TestSlowRoundNoReask: parity that flows for longer than Idle (a round
// the publisher paces, a loaded broker delivering it late) does not make
// the device ask again: it rebuilds from it, having sent only its loss
// summary. Each case needs one rule of the fetch loop, and fails without
// it (the Idle timer fired in the middle of the round, and the device
// asked for what was on its way):
//   - announced, with parity for another block between the device's own
//     (dropped unqueued): the timer of a device in an announced round
//     waits for the broadcast stream to be quiet for Idle;
//   - not announced, the device's own parity 0.6 Idle apart: parity the
//     device uses re-arms the timer.
func TestSlowRoundNoReask(t *testing.T) {
	const idle = time.Second
	for _, tc := range []struct {
		name     string
		announce bool
		other    int           // block 1 parity chunks after block 0's first
		every    time.Duration // between two parity chunks
	}{
		{"announced, stream flowing", true, 3, idle / 2},
		{"unannounced, parity used", false, 0, 6 * idle / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r := newCodedRig(t, 41, "slowround")
			var requests atomic.Int64
			ready, sent := make(chan struct{}), make(chan struct{}, 4)
			conn := countConn{waveConn{Transport: r.hub.Conn(), chunks: r.bt.MQTT, ready: ready}, &requests, sent, nil}
			lost := map[uint32]bool{1: true, 2: true, 3: true}
			conn.Transport.(*testutil.MemConn).SetDrop(func(_ string, b []byte) bool {
				i, ok := schemas.ChunkIndexOf(b)
				return ok && lost[i]
			})
			src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-slowround",
				Idle: idle, ListenFirst: time.Hour, Quiet: time.Hour, SummaryBackoff: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			sink := newMemSink(len(r.fx.img))
			done := make(chan error, 1)
			go func() {
				done <- src.FetchRepair(ctx, r.im, AllChunks(int(r.coded.NumChunks())), func(i int, b []byte) error {
					_, err := sink.WriteAt(b, r.im.Offset(i))
					return err
				}, Repair{Table: r.coded, Slot: sink})
			}()
			<-ready
			send := sender(ctx, t, r.hub.Conn(), r.bt)
			sendWave(ctx, send, r.coded, r.im, r.read)
			select {
			case <-sent: // the loss summary
			case <-ctx.Done():
				t.Fatal("no loss summary")
			}
			if tc.announce {
				send(&schemas.RepairAnnounce{V: schemas.Version, Image: r.im.Digest, Wave: 1, Need: []schemas.BlockNeed{{Block: 0, Parity: 3}, {Block: 1, Parity: uint32(tc.other)}}})
			}
			par0 := blockParity(ctx, t, r.coded, r.read, 0)
			par1 := blockParity(ctx, t, r.coded, r.read, 1)
			round := []*schemas.ParityChunk{{Block: 0, Index: 0, Data: par0[0]}}
			for j := range tc.other {
				round = append(round, &schemas.ParityChunk{Block: 1, Index: uint32(j), Data: par1[j]})
			}
			round = append(round, &schemas.ParityChunk{Block: 0, Index: 1, Data: par0[1]}, &schemas.ParityChunk{Block: 0, Index: 2, Data: par0[2]})
			tk := time.NewTicker(tc.every)
			defer tk.Stop()
			for k, p := range round {
				if k > 0 {
					<-tk.C
				}
				p.V, p.Image = schemas.Version, r.im.Digest
				send(p)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sink.data, r.fx.img) {
				t.Fatal("wrong image")
			}
			if n := requests.Load(); n != 1 || src.Rebuilt != 3 {
				t.Errorf("%d requests, %d chunks rebuilt; want 1 (the summary) and 3", n, src.Rebuilt)
			}
		})
	}
}
