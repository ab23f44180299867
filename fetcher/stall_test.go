package fetcher

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// reqConn hands each chunk request the device sends, as the chunk
// indices it names, to asked.
type reqConn struct {
	waveConn
	asked chan []int
}

func (c reqConn) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunkRequest {
		var r schemas.ChunkRequest
		if err := schemas.Decode(b, &r); err == nil && !r.WantTable {
			var idx []int
			for i := range 8 * len(r.Bitmap) {
				if r.Bitmap[i/8]&(1<<(i%8)) != 0 {
					idx = append(idx, i)
				}
			}
			c.asked <- idx
		}
	}
	return c.Transport.Publish(ctx, t, b, o)
}

// TestWaveStallAsksOnlyBehind: a wave that pauses for WaveGap is not over
// (on a loaded host the rest of it may still be queued at the broker for
// this device). The broker delivers the topic in order, so the device
// asks only for the chunks it lacks before the last one it took, in
// carousel order: here the one the wave lost. A second pause with no
// broadcast chunk in between ends the wave: then it asks for the rest.
// Each pause is checked in both places the timer asks from (the listening
// period a fetch starts in, and after it), for a plain image (carousel
// order is index order) and a coded one (blocks interleaved).
//
// Before, the first pause asked for every chunk missing, the wave's
// unsent half included: at N = 500 a few such devices started a repair
// round with nothing lost.
func TestWaveStallAsksOnlyBehind(t *testing.T) {
	for _, coded := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "coded"}[coded]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r := newCodedRig(t, 23, "stalltest"+name)
			n := int(r.coded.NumChunks())
			cs := &testutil.ChunkServer{Transport: r.hub.Conn(), Topics: r.topics, Image: r.fx.img, Table: r.fx.table}
			if err := cs.Start(ctx); err != nil {
				t.Fatal(err)
			}
			conn := reqConn{waveConn{Transport: r.hub.Conn(), chunks: r.bt.MQTT, ready: make(chan struct{})}, make(chan []int, 16)}
			// The pauses are what the test is about; WaveGap and Idle
			// only set how long each takes.
			const gap = 300 * time.Millisecond
			src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: r.topics, Device: "dev-stall",
				Idle: gap, ListenFirst: time.Hour, Quiet: gap, WaveGap: gap, MaxIdle: 1000})
			if err != nil {
				t.Fatal(err)
			}
			sink := newMemSink(len(r.fx.img))
			deliver := checkedWrite(r.coded, r.im, sink)
			done := make(chan error, 1)
			go func() {
				if coded {
					done <- src.FetchRepair(ctx, r.im, AllChunks(n), deliver, Repair{Table: r.coded, Slot: sink})
				} else {
					done <- src.Fetch(ctx, r.fx.im, AllChunks(n), deliver)
				}
			}()
			<-conn.ready
			order := blockcode.Order(r.fx.table)
			if coded {
				order = blockcode.Order(r.coded)
			}
			send := sender(ctx, t, r.hub.Conn(), r.bt)
			// sendPos broadcasts the chunks at carousel positions
			// [from, to), but the one at lost.
			sendPos := func(from, to, lost int) {
				for p := from; p < to; p++ {
					if p == lost {
						continue
					}
					b, _ := r.read(ctx, order[p])
					send(&schemas.Chunk{V: schemas.Version, Image: r.im.Digest, Index: order[p], Data: b})
				}
			}
			next := func(why string) []int {
				t.Helper()
				select {
				case a := <-conn.asked:
					slices.Sort(a)
					return a
				case err := <-done:
					t.Fatalf("%s: the fetch ended (%v) before asking", why, err)
				case <-ctx.Done():
					t.Fatalf("%s: no request", why)
				}
				return nil
			}
			want := func(why string, got []int, pos ...int) {
				t.Helper()
				var w []int
				for _, p := range pos {
					w = append(w, int(order[p]))
				}
				slices.Sort(w)
				if !slices.Equal(got, w) {
					t.Errorf("%s: asked for %v, want %v (carousel positions %v)", why, got, w, pos)
				}
			}
			// First half; position 5 lost; the wave pauses (listening).
			sendPos(0, 16, 5)
			want("first pause, listening", next("first pause"), 5)
			// The wave goes on; position 20 lost; it pauses again.
			sendPos(16, 24, 20)
			want("second pause", next("second pause"), 20)
			// Nothing more comes: the wave stopped.
			var rest []int
			for p := 24; p < n; p++ {
				rest = append(rest, p)
			}
			want("the wave stopped", next("the wave stopped"), rest...)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sink.data, r.fx.img) {
				t.Fatal("wrong image")
			}
		})
	}
}
