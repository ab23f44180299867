package fetcher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// waveConn is an in-memory transport that signals when the broadcast chunk topic is
// subscribed, so a test can start its wave once the device listens.
type waveConn struct {
	broker.Transport
	chunks string
	ready  chan struct{}
}

func (c waveConn) Subscribe(ctx context.Context, f schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	sub, err := c.Transport.Subscribe(ctx, f, h, o)
	if err == nil && f.MQTT == c.chunks {
		close(c.ready)
	}
	return sub, err
}

// TestBrokerListensFirst: a device that starts while a wave is broadcast
// takes the wave and asks only for what the wave did not carry.
func TestBrokerListensFirst(t *testing.T) {
	fx := newFixture(t, 32*testChunk, testChunk, 7)
	n := 32
	for _, tc := range []struct {
		name string
		wave func(i int) bool // chunks the wave carries
	}{
		{"whole wave", func(int) bool { return true }},
		{"even chunks only", func(i int) bool { return i%2 == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub := testutil.NewMemHub()
			t.Cleanup(hub.Close)
			topics := schemas.MustTopics("listentest")
			bt, err := topics.Chunks(fx.im.Hex())
			if err != nil {
				t.Fatal(err)
			}
			cs := &testutil.ChunkServer{Transport: hub.Conn(), Topics: topics, Image: fx.img, Table: fx.table}
			if err := cs.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			conn := waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: make(chan struct{})}
			src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1",
				Idle: 2 * time.Second, ListenFirst: time.Second, Quiet: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			waveErr := make(chan error, 1)
			go func() {
				select {
				case <-conn.ready:
				case <-ctx.Done():
					waveErr <- ctx.Err()
					return
				}
				for i := 0; i < n; i++ {
					if !tc.wave(i) {
						continue
					}
					b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: fx.im.Digest, Index: uint32(i), Data: fx.img[i*testChunk : (i+1)*testChunk]})
					if err == nil {
						err = hub.Conn().Publish(ctx, bt, b, broker.PublishOptions{})
					}
					if err != nil {
						waveErr <- err
						return
					}
				}
				waveErr <- nil
			}()
			want := newBitmap(n)
			for i := 0; i < n; i++ {
				want.set(i)
			}
			got := map[int]bool{}
			err = src.Fetch(ctx, fx.im, Chunks{want}, func(i int, data []byte) error {
				got[i] = true
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := <-waveErr; err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("%d chunks delivered, want %d", len(got), n)
			}
			for i, k := range cs.Served() {
				if tc.wave(int(i)) {
					t.Errorf("chunk %d was broadcast and still served %d times by request", i, k)
				}
			}
			// A wave that lacks chunks asks twice: at its first pause for
			// those before its last chunk (the broker passed them), at the
			// second (no end marker came: the wave stopped) for the rest,
			// here the last chunk.
			wantReqs := 0
			for i := 0; i < n; i++ {
				if !tc.wave(i) {
					wantReqs = 2
				}
			}
			if src.Requests != wantReqs {
				t.Errorf("%d chunk requests, want %d", src.Requests, wantReqs)
			}
		})
	}
}

// TestBrokerSummaryAfterWaveEnd: a device asks nothing while a wave flows
// and, after the wave's end marker, sends one loss summary for all it
// lacks (beyond its Window), without waiting for the quiet period (here
// an hour: without the marker the fetch would not end in time).
func TestBrokerSummaryAfterWaveEnd(t *testing.T) {
	fx := newFixture(t, 32*testChunk, testChunk, 7)
	n := 32
	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics("summarytest")
	bt, err := topics.Chunks(fx.im.Hex())
	if err != nil {
		t.Fatal(err)
	}
	cs := &testutil.ChunkServer{Transport: hub.Conn(), Topics: topics, Image: fx.img, Table: fx.table}
	if err := cs.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn := waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: make(chan struct{})}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1", Window: 4, SummaryMax: 64,
		Idle: time.Hour, ListenFirst: time.Hour, Quiet: time.Hour, SummaryBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waveErr := make(chan error, 1)
	go func() {
		select {
		case <-conn.ready:
		case <-ctx.Done():
			waveErr <- ctx.Err()
			return
		}
		pub := hub.Conn()
		for i := 0; i < n; i += 2 { // the device loses the odd chunks
			b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: fx.im.Digest, Index: uint32(i), Data: fx.img[i*testChunk : (i+1)*testChunk]})
			if err == nil {
				err = pub.Publish(ctx, bt, b, broker.PublishOptions{})
			}
			if err != nil {
				waveErr <- err
				return
			}
		}
		if r, _, _ := cs.Counts(); r != 0 {
			waveErr <- fmt.Errorf("%d requests while the wave flowed", r)
			return
		}
		b, err := schemas.Encode(&schemas.WaveEnd{V: schemas.Version, Image: fx.im.Digest, Wave: 1, Sent: []schemas.Range{{First: 0, Count: uint32(n)}}})
		if err == nil {
			err = pub.Publish(ctx, bt, b, broker.PublishOptions{})
		}
		waveErr <- err
	}()
	want := newBitmap(n)
	for i := 0; i < n; i++ {
		want.set(i)
	}
	got := map[int]bool{}
	if err := src.Fetch(ctx, fx.im, Chunks{want}, func(i int, data []byte) error {
		got[i] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-waveErr; err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d chunks delivered, want %d", len(got), n)
	}
	if src.Requests != 1 {
		t.Errorf("%d chunk requests, want one loss summary", src.Requests)
	}
	for i, k := range cs.Served() {
		if i%2 == 0 || k != 1 {
			t.Errorf("chunk %d served %d times by request", i, k)
		}
	}
	if src.Dropped != 0 {
		t.Errorf("%d messages dropped (the marker is not a drop)", src.Dropped)
	}
}
