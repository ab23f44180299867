package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// With CodedRepair, an uploaded image gets a coded chunk table; its wave
// goes in carousel order (blocks interleaved) and the repair of what
// devices lost is parity only: per block as many fresh parity chunks as
// the device lacking most lacks, from which every device rebuilds its
// own losses. Nothing is sent by unicast, no chunk is re-broadcast. The
// parity is made by the wave as it sends the chunks, not read back.
func TestCodedRepair(t *testing.T) {
	const n = 20
	e := newEnv(t)
	p, _ := e.start(func(c *Config) {
		c.RepairWindow, c.WaveHold, c.ChunkSize, c.CodedRepair = 20*time.Millisecond, -1, 1024, true
		// Small blocks: a decode under -race costs K^3 (the default
		// K = 128 takes about 0.5 s a block there).
		c.CodedBlock, c.CodedParity = 32, 16
	})
	data, table := uploadTable(t, e, p, 300*1024) // 300 chunks: 9 blocks of 32, one of 12
	if !table.Coded() || table.Block != 32 || table.ParityPerBlock != 16 || table.NumBlocks() != 10 {
		t.Fatalf("uploaded table: block %d, parity %d, %d blocks", table.Block, table.ParityPerBlock, table.NumBlocks())
	}
	digest := hex.EncodeToString(table.Image)
	enrol(t, e, p, table, devNames(n)...)
	// A listener that loses nothing records the wave's order.
	var mu sync.Mutex
	var order []uint32
	ct, _ := e.cfg.Topics.Chunks(digest)
	conn := e.hub.Conn()
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Subscribe(context.Background(), ct, func(_ context.Context, m broker.Message) {
		var c schemas.Chunk
		if schemas.IsChunk(m.Payload) && schemas.Decode(m.Payload, &c) == nil {
			mu.Lock()
			order = append(order, c.Index)
			mu.Unlock()
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	loss := &lossModel{rate: 0.1}
	var devs []*downloader
	for i := range n {
		devs = append(devs, newDownloader(t, e.hub, e.cfg.Topics, devName(i), table, loss))
	}
	loss.active.Store(true)
	if err := p.Wave(context.Background(), digest); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() string { return "wave delivery" }, e.hub.Idle)
	loss.active.Store(false)
	waitFor(t, 10*time.Second, func() string { return "the wave's store reads" }, func() bool { return p.st.images.readsInFlight.Load() == 0 })
	waveReads := p.st.images.readMsgs.Load()
	mu.Lock()
	if want := blockcode.Order(table); !slices.Equal(order, want) {
		t.Errorf("wave order %v..., want blocks interleaved %v...", order[:min(6, len(order))], want[:6])
	}
	mu.Unlock()
	for _, d := range devs {
		if !d.complete() {
			d.request(t)
		}
	}
	waitFor(t, 30*time.Second, func() string { return "repair" }, allComplete(devs))
	rebuilt := 0
	for _, d := range devs {
		if !bytes.Equal(d.data, data) || d.bad != 0 || d.badParity != 0 {
			t.Fatalf("%s: wrong image (%d bad chunks, %d bad parity)", d.id, d.bad, d.badParity)
		}
		rebuilt += d.rebuilt
	}
	if rebuilt == 0 {
		t.Fatal("no chunk rebuilt from parity: 10% loss lost nothing?")
	}
	// The wave made the parity as it sent the chunks: the repair
	// rounds read nothing back from the store.
	if r := p.st.images.readMsgs.Load() - waveReads; r != 0 {
		t.Errorf("repair rounds read %d chunks back from the store; want the parity the wave made", r)
	}
	if u := p.dl.egress.Unicast.Load(); u != 0 {
		t.Errorf("%d bytes sent by unicast; want parity only", u)
	}
	checkEgressMetrics(t, p, "wave", "wave_table", "wave_end", "parity")
	if r := counterValue(p.met.chunkBytes.WithLabelValues("repair")); r != 0 {
		t.Errorf("%.0f bytes of chunks re-broadcast; want parity only", r)
	}
	// Parity per block: as many as the device lacking most lacked.
	p.dl.waveMu.Lock()
	spent := slices.Clone(p.dl.waves[digest].spent)
	p.dl.waveMu.Unlock()
	t.Logf("%d chunks rebuilt from parity; parity chunks sent per block %v; repair %d B = %.3f x image",
		rebuilt, spent, p.dl.egress.Repair.Load(), float64(p.dl.egress.Repair.Load())/float64(len(data)))
	for b, s := range spent {
		if s == 0 || s > table.ParityPerBlock {
			t.Errorf("block %d: %d parity chunks sent", b, s)
		}
	}
}

// TestParityLogCrossed: a requester's losses are discounted by the parity
// of rounds that ended since its batch began (or just before), which its
// request crossed, a round that answered it included, but not by rounds
// older than that, nor by rounds whose end marker is at or below the
// floor (the last marker it heard, ChunkRequest.Seen, or the last round
// already counted for it).
func TestParityLogCrossed(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var l parityLog
	sym := func(blocks ...uint32) []blockcode.Symbol {
		var out []blockcode.Symbol
		for _, b := range blocks {
			out = append(out, blockcode.Symbol{Block: b})
		}
		return out
	}
	l.add(t0, 2, sym(0, 0, 1))                       // end marker 2 (wave 1 ended as 1)
	l.add(t0.Add(2*time.Second), 4, sym(0, 2, 2, 2)) // marker 4 (a wave's was 3)
	for _, tc := range []struct {
		since time.Time
		floor uint32
		want  []int
		top   uint32
	}{
		{t0.Add(-time.Second), 0, []int{3, 1, 3}, 4}, // crossed both rounds
		{t0, 0, []int{3, 1, 3}, 4},                   // the first ended as the batch began
		{t0.Add(time.Second), 0, []int{1, 0, 3}, 4},  // the first is older
		{t0.Add(3 * time.Second), 0, []int{0, 0, 0}, 0},
		{t0.Add(-time.Second), 1, []int{3, 1, 3}, 4}, // heard only the wave's marker
		{t0.Add(-time.Second), 2, []int{1, 0, 3}, 4}, // heard the first round's
		{t0.Add(-time.Second), 3, []int{1, 0, 3}, 4},
		{t0.Add(-time.Second), 4, []int{0, 0, 0}, 0}, // heard both: answered in full
		{t0.Add(-time.Second), 9, []int{0, 0, 0}, 0},
		{t0.Add(time.Second), 1, []int{1, 0, 3}, 4}, // the first is older anyway
	} {
		got, top := l.crossed(tc.since, tc.floor, 3)
		if !slices.Equal(got, tc.want) || top != tc.top {
			t.Errorf("since %v, floor %d: crossed %v up to marker %d, want %v up to %d", tc.since.Sub(t0), tc.floor, got, top, tc.want, tc.top)
		}
	}
	// Rounds older than parityLogKeep are forgotten as new ones come.
	l.add(t0.Add(parityLogKeep+time.Second), 5, sym(1))
	if len(l) != 2 {
		t.Errorf("%d rounds kept, want the last two", len(l))
	}
}
