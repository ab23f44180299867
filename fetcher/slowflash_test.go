package fetcher

import (
	"bytes"
	"context"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestBrokerSlowFlashBoundedMemory: a device whose flash writes are 10x
// slower than the broadcast, on a real broker (a mosquitto or nats-server
// process of its own, so that the transport's queue is in the path and
// the broker's memory is not in the test's heap), completes from the
// carousel's waves, and its receive path holds a bounded amount of
// memory however far behind the flash falls: what does not fit is shed
// (counted) and taken from a later wave, never queued.
//
// Memory is measured without a clock: the receive buffer's own peak
// (PeakQueued, bounded by QueueBytes) and the live heap found by a forced
// GC (runtime/metrics /gc/heap/live:bytes), sampled every 8th flash
// write, against the live heap before the fetch (the image, the slot and
// the pre-encoded broadcast are held already). The bound is RSS growth under 2 MiB; the heap's peak
// growth is checked against it (the receive path's own bound is 1.25 MiB:
// QueueBytes and an eighth of it per subscription in the transport).
// Without these bounds (2e0a754: the buffer and the transport's 4 MiB
// chunk queue both filling behind the flash) the same test, then with a
// 2 MiB image at 4 MiB/s, grew by 6.4-6.7 MiB.
func TestBrokerSlowFlashBoundedMemory(t *testing.T) {
	for _, b := range []struct {
		name  string
		start func(t *testing.T) string
		rm    int // the device's MQTT Receive Maximum (0: the default)
	}{
		// The default paho queue (1024 messages): the buffer sheds.
		{"mosquitto", func(t *testing.T) string { return testutil.StartMosquitto(t, "").URL() }, 0},
		// A device's (broker.DeviceReceiveMaximum): the buffer waits
		// for room and the broker holds the rest.
		{"mosquitto-pushback", func(t *testing.T) string { return testutil.StartMosquitto(t, "").URL() }, broker.DeviceReceiveMaximum},
		{"nats", func(t *testing.T) string { return testutil.StartNATSProcess(t).URL() }, 0},
	} {
		t.Run(b.name, func(t *testing.T) { slowFlash(t, b.start(t), b.rm) })
	}
}

func slowFlash(t *testing.T, url string, rm int) {
	const chunk = 16 << 10
	const n = 64 // a 1 MiB image
	const bcastRate = 2 << 20
	const flashRate = bcastRate / 10
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fx := newFixture(t, n*chunk-100, chunk, 21)
	topics := testutil.UniqueTopics(t)
	dev := testutil.Dial(t, broker.Config{URL: url, Topics: topics, ClientID: "slowflash-dev", ReceiveMaximum: rm})
	pub := testutil.Dial(t, broker.Config{URL: url, Topics: topics, ClientID: "slowflash-pub"})
	bt, err := topics.Chunks(fx.im.Hex())
	if err != nil {
		t.Fatal(err)
	}
	cs := &testutil.ChunkServer{Transport: pub, Topics: topics, Image: fx.img, Table: fx.table}
	if err := cs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The carousel: the image, wave after wave at bcastRate, each ended
	// by its marker, until the device is done.
	msgs := make([][]byte, n)
	for i := range n {
		off := i * chunk
		msgs[i], err = schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: fx.im.Digest, Index: uint32(i), Data: fx.img[off:min(off+chunk, len(fx.img))]})
		if err != nil {
			t.Fatal(err)
		}
	}
	conn := waveConn{Transport: dev, chunks: bt.MQTT, ready: make(chan struct{})}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1",
		Idle: 3 * time.Second, MaxIdle: 10, ListenFirst: time.Second, Quiet: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waves := 0
	var wg sync.WaitGroup
	wctx, stopWaves := context.WithCancel(ctx)
	defer func() { stopWaves(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-conn.ready:
		case <-wctx.Done():
			return
		}
		lim := rate.NewLimiter(bcastRate, 2*chunk)
		for w := uint32(1); ; w++ {
			for _, b := range msgs {
				if lim.WaitN(wctx, chunk) != nil || pub.Publish(wctx, bt, b, broker.PublishOptions{Family: broker.FamilyChunk}) != nil {
					return
				}
			}
			end, _ := schemas.Encode(&schemas.WaveEnd{V: schemas.Version, Image: fx.im.Digest, Wave: w, Sent: []schemas.Range{{First: 0, Count: n}}})
			if pub.Publish(wctx, bt, end, broker.PublishOptions{Family: broker.FamilyChunk}) != nil {
				return
			}
			waves = int(w)
		}
	}()

	slot := newMemSink(len(fx.img))
	want := newBitmap(n)
	for i := range n {
		want.set(i)
	}
	flash := rate.NewLimiter(flashRate, chunk)
	// The live heap as the forced GC's mark found it (garbage allocated
	// since, by the transports, is not counted as HeapAlloc would).
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	heap := func() int64 {
		runtime.GC()
		metrics.Read(live)
		return int64(live[0].Value.Uint64())
	}
	base := heap()
	peak, writes := base, 0
	err = src.Fetch(ctx, fx.im, Chunks{want}, func(i int, data []byte) error {
		if err := fx.table.VerifyChunk(uint32(i), data); err != nil {
			return ErrBadChunk
		}
		if err := flash.WaitN(ctx, len(data)); err != nil { // the slow flash
			return ErrSink
		}
		if writes++; writes%8 == 0 {
			peak = max(peak, heap())
		}
		_, err := slot.WriteAt(data, fx.im.Offset(i))
		return err
	})
	stopWaves()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(slot.data, fx.img) {
		t.Fatal("the slot does not hold the image")
	}
	unicast := 0
	for _, k := range cs.Served() {
		unicast += k
	}
	growth := peak - base
	t.Logf("%d waves of %d chunks at %d KiB/s, flash %d KiB/s: %d chunks shed on arrival, %d waited for room, receive buffer peak %d KiB (bound %d KiB), live heap growth peak %d KiB; %d requests, %d chunks by unicast",
		waves, n, bcastRate>>10, flashRate>>10, src.Shed, src.Waited, src.PeakQueued>>10, src.cfg.QueueBytes>>10, growth>>10, src.Requests, unicast)
	switch {
	case rm > 0 && rm <= maxPushbackQueue:
		if src.Waited == 0 {
			t.Error("no chunk waited for room: the flash was not behind the broadcast, or the buffer did not push back")
		}
	case strings.HasPrefix(url, "nats"):
		// nats.go reports its backlog: chunks wait while it is under
		// maxBacklog, beyond it they are shed.
		if src.Waited == 0 || src.Shed == 0 {
			t.Errorf("%d shed, %d waited: want some waiting while the backlog was small, then shed", src.Shed, src.Waited)
		}
	case src.Waited != 0 || src.Shed == 0:
		t.Errorf("%d shed, %d waited: want chunks shed and none waiting (the transport queues too much to push back)", src.Shed, src.Waited)
	}
	if src.PeakQueued > src.cfg.QueueBytes {
		t.Errorf("receive buffer held %d bytes, bound %d", src.PeakQueued, src.cfg.QueueBytes)
	}
	if growth >= 2<<20 {
		t.Errorf("live heap grew by %d KiB behind the slow flash, want under 2 MiB", growth>>10)
	}
}
