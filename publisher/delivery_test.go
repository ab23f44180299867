package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// These tests build a delivery directly, on a fake host (deliveryHost)
// and a transport that records what is published: no store, no broker.

// fakeHost is a deliveryHost over images and campaigns held in memory.
type fakeHost struct {
	images map[string]*imageData
	chunks map[string][][]byte // by digest, by chunk index
	camps  map[string]Campaign
	// notified holds devKey(campaign, device) of the notified devices.
	notified map[string]bool
	// bucketCounts, when set, is what counts returns for every campaign.
	bucketCounts map[string]uint64
}

func newFakeHost() *fakeHost {
	return &fakeHost{images: map[string]*imageData{}, chunks: map[string][][]byte{}, camps: map[string]Campaign{}, notified: map[string]bool{}}
}

func (h *fakeHost) loadImage(_ context.Context, digest string) (*imageData, error) {
	d, ok := h.images[digest]
	if !ok {
		return nil, fmt.Errorf("%w: image %s", ErrNotFound, digest)
	}
	return d, nil
}

func (h *fakeHost) readChunk(_ context.Context, d *imageData, i int) ([]byte, error) {
	cs := h.chunks[d.info.Digest]
	if i < 0 || i >= len(cs) {
		return nil, fmt.Errorf("%w: chunk %d of %d", ErrInvalid, i, len(cs))
	}
	return slices.Clone(cs[i]), nil
}

func (h *fakeHost) newChunkReader(ctx context.Context, d *imageData, ahead int) *chunkReader {
	return readChunksWith(ctx, d, ahead, h.readChunk, nil)
}

func (h *fakeHost) campaignIDs() []string { return slices.Collect(maps.Keys(h.camps)) }

func (h *fakeHost) campaign(id string) (Campaign, bool) {
	c, ok := h.camps[id]
	return c, ok
}

// counts: no device is counted pending or downloading, so that no wave
// is coming (waveComing) and requests are answered at once.
func (h *fakeHost) counts(string) (map[string]uint64, uint64) {
	if h.bucketCounts != nil {
		return maps.Clone(h.bucketCounts), 0
	}
	return map[string]uint64{}, 0
}

func (h *fakeHost) devs(string) []devEntry { return nil }

func (h *fakeHost) notifiedIn(campaign, dev string) bool { return h.notified[devKey(campaign, dev)] }

// addImage stores an image of size bytes in chunks of cs, coded in
// blocks of k source chunks and par parity chunks when k > 0.
func (h *fakeHost) addImage(t testing.TB, size int, cs uint32, k, par int) *imageData {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	table, err := schemas.BuildChunkTable(bytes.NewReader(data), cs)
	if err != nil {
		t.Fatal(err)
	}
	var chunks [][]byte
	for off := 0; off < size; off += int(cs) {
		chunks = append(chunks, data[off:min(off+int(cs), size)])
	}
	if k > 0 {
		read := func(_ context.Context, i uint32) ([]byte, error) { return chunks[i], nil }
		if table, err = blockcode.Commit(context.Background(), table, k, par, read); err != nil {
			t.Fatal(err)
		}
	}
	tb := mustEncode(t, table)
	tsum := sha256.Sum256(tb)
	digest := hex.EncodeToString(table.Image)
	info := Image{Digest: digest, Size: int64(size), ChunkSize: cs, Chunks: len(chunks), TableDigest: hex.EncodeToString(tsum[:])}
	d := newImageData(info, table.Image, table, tb)
	h.images[digest], h.chunks[digest] = d, chunks
	return d
}

// recTransport is a broker.Transport that records what is published.
type recTransport struct {
	mu   sync.Mutex
	msgs []recMsg
}

type recMsg struct {
	topic   string // NATS form
	payload []byte
}

func (r *recTransport) Publish(_ context.Context, t schemas.Topic, b []byte, _ broker.PublishOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, recMsg{t.NATS, slices.Clone(b)})
	return nil
}

func (r *recTransport) Subscribe(context.Context, schemas.Topic, broker.Handler, broker.SubscribeOptions) (broker.Subscription, error) {
	return nil, errors.New("recTransport: no subscriptions")
}

func (r *recTransport) Request(context.Context, schemas.Topic, []byte) ([]byte, error) {
	return nil, errors.New("recTransport: no requests")
}

func (r *recTransport) Reply(context.Context, broker.Message, []byte) error { return nil }
func (r *recTransport) Dialect() broker.Dialect                             { return broker.DialectNATS }
func (r *recTransport) ReceiveQueue() int                                   { return 0 }
func (r *recTransport) Close(context.Context) error                         { return nil }

// on returns the messages published on topic t, in order.
func (r *recTransport) on(t schemas.Topic) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, m := range r.msgs {
		if m.topic == t.NATS {
			out = append(out, m.payload)
		}
	}
	return out
}

// bytesOn returns the bytes published on topic t.
func (r *recTransport) bytesOn(t schemas.Topic) int64 {
	var n int64
	for _, b := range r.on(t) {
		n += int64(len(b))
	}
	return n
}

// noJetStream stands in for Config.JetStream, which withDefaults asks
// for and delivery never uses.
type noJetStream struct{ jetstream.JetStream }

// newTestDelivery returns a delivery on host and a recording transport,
// with the publisher's default config changed by mod.
func newTestDelivery(t testing.TB, host deliveryHost, mod func(*Config)) (*delivery, *recTransport) {
	t.Helper()
	tr := &recTransport{}
	cfg := Config{JetStream: noJetStream{}, Transport: tr, Clock: newFakeClock(), Logger: testLogger()}
	if mod != nil {
		mod(&cfg)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	met, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return newDelivery(cfg, cfg.Logger, met, host), tr
}

// request returns an admitted request of dev in campaign for chunks
// want of d (none: only what WantTable says), as handleChunkRequest
// queues it.
func request(t testing.TB, dl *delivery, campaign, dev string, d *imageData, proto int, want ...int) *schemas.ChunkRequest {
	t.Helper()
	if why := dl.admit(campaign, dev); why != "" {
		t.Fatalf("%s not admitted: %s", dev, why)
	}
	r := &schemas.ChunkRequest{V: schemas.Version, Image: d.digest, ChunkSize: d.info.ChunkSize, Requester: dev, Campaign: campaign, Protocol: uint8(proto)}
	for _, i := range want {
		r.Ranges = append(r.Ranges, schemas.Range{First: uint32(i), Count: 1})
	}
	return r
}

// TestDeliveryWave: a wave sends every chunk of the image once, in
// carousel order, with a table copy every tableEvery chunks, then one
// end marker naming them all.
func TestDeliveryWave(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		cs     uint32
		k, par int
	}{
		{"one chunk", 100, 256, 0, 0},
		{"last chunk short", 10*1024 + 17, 1024, 0, 0},
		{"three table copies", 300 * 256, 256, 0, 0},
		{"coded, blocks interleaved", 24 * 512, 512, 8, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost()
			d := h.addImage(t, tc.size, tc.cs, tc.k, tc.par)
			dl, tr := newTestDelivery(t, h, nil)
			if err := dl.wave(context.Background(), d.info.Digest); err != nil {
				t.Fatal(err)
			}
			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			msgs := tr.on(ct)
			n := d.chunks()
			var order []int
			tables := 0
			for k, b := range msgs[:len(msgs)-1] {
				if bytes.Equal(b, d.tableBytes) {
					if s := len(order); s%tableEvery != 0 {
						t.Errorf("message %d: a table copy after %d chunks", k, s)
					}
					tables++
					continue
				}
				var c schemas.Chunk
				if err := schemas.Decode(b, &c); err != nil {
					t.Fatalf("message %d: not a chunk nor the table: %v", k, err)
				}
				if want, _ := h.readChunk(context.Background(), d, int(c.Index)); !bytes.Equal(c.Data, want) {
					t.Errorf("chunk %d: wrong data", c.Index)
				}
				order = append(order, int(c.Index))
			}
			want := make([]int, n)
			for s := range n {
				want[s] = d.at(s)
			}
			if !slices.Equal(order, want) {
				t.Errorf("chunks sent %v, want each once in carousel order %v", order, want)
			}
			if want := (n + tableEvery - 1) / tableEvery; tables != want {
				t.Errorf("%d table copies, want %d", tables, want)
			}
			var end schemas.WaveEnd
			if err := schemas.Decode(msgs[len(msgs)-1], &end); err != nil {
				t.Fatalf("last message is not a wave end: %v", err)
			}
			if wantSent := []schemas.Range{{First: 0, Count: uint32(n)}}; end.Wave != 1 || !slices.Equal(end.Sent, wantSent) {
				t.Errorf("wave end %d sent %v, want wave 1 sent %v", end.Wave, end.Sent, wantSent)
			}
			if got := counterValue(dl.met.waves); got != 1 {
				t.Errorf("%v waves counted, want 1", got)
			}
			if a := dl.waveAhead(d.info.Digest); !a.none() {
				t.Errorf("after the wave, positions %v still coming", a)
			}
		})
	}
}

// campaignOf3 returns a fake host running campaign c1 of a 4-chunk
// image with 3 devices downloading, and a delivery on it with the
// config changed by mod.
func campaignOf3(t *testing.T, mod func(*Config)) (*fakeHost, *imageData, *delivery, *recTransport) {
	t.Helper()
	h := newFakeHost()
	d := h.addImage(t, 4*1024, 1024, 0, 0)
	h.camps["c1"] = Campaign{ID: "c1", Image: d.info.Digest, State: CampaignRunning}
	h.bucketCounts = map[string]uint64{countDownloading: 3}
	dl, tr := newTestDelivery(t, h, mod)
	return h, d, dl, tr
}

// A wave held for its devices is looked at again when its hold may be
// over (armRecheck), WaveSettle after the last chunk table or when
// WaveHold ends, whichever is first, not at the leader's next tick; the
// tick it brings starts the wave once the hold is over.
func TestDeliveryHeldWaveRechecked(t *testing.T) {
	for _, tc := range []struct {
		name         string
		settle, hold time.Duration
	}{
		{"settle", 30 * time.Millisecond, time.Hour},
		{"hold-end", time.Hour, 30 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, d, dl, tr := campaignOf3(t, func(c *Config) {
				c.BroadcastMin, c.WaveSettle, c.WaveHold, c.NoProgress = 2, tc.settle, tc.hold, 4*time.Hour
			})
			clock := dl.cfg.Clock.(*fakeClock)
			kicks := make(chan struct{}, 4)
			dl.recheck = func() { kicks <- struct{}{} }
			ctx, cancel := context.WithCancel(context.Background())
			defer func() { cancel(); dl.wait() }()
			w := dl.waveFor(d.info.Digest)
			dl.waveMu.Lock()
			w.lastTable = clock.Now() // a table just went out: held
			dl.waveMu.Unlock()
			c, _ := h.campaign("c1")
			dl.maybeWave(ctx, &c)
			select {
			case <-kicks:
			case <-time.After(10 * time.Second):
				t.Fatal("no re-check of the held wave")
			}
			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			if n := len(tr.on(ct)); n != 0 {
				t.Fatalf("%d messages sent while the wave was held", n)
			}
			clock.Advance(min(tc.settle, tc.hold))
			dl.maybeWave(ctx, &c) // the tick the re-check brought
			dl.wait()
			if got := counterValue(dl.met.waves); got != 1 {
				t.Fatalf("%v waves after the hold, want 1", got)
			}
		})
	}
}

// TestDeliveryWaveReady: with WaveReady, a wave's first chunk waits,
// after its first table copy, until every device downloading as it
// started reported downloading since (each counted once; other states do
// not count), or until WaveReady passed when one never does.
func TestDeliveryWaveReady(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ready time.Duration
		// last, if set, reports after a and b and releases the wave;
		// otherwise WaveReady does.
		last string
	}{
		{"all report", time.Hour, "c"},
		{"one never does", 3 * time.Second, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, d, dl, tr := campaignOf3(t, func(c *Config) {
				c.BroadcastMin, c.WaveHold, c.WaveReady = 2, -1, tc.ready
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer func() { cancel(); dl.wait() }()
			report := func(dev string, st schemas.State) {
				dl.observeReady(&schemas.DeviceReport{V: schemas.Version, Device: dev, Campaign: "c1", State: st})
			}
			c, _ := h.campaign("c1")
			dl.maybeWave(ctx, &c)
			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			w := dl.waveFor(d.info.Digest)
			waitFor(t, 10*time.Second, func() string { return "the wave never waited for its devices" }, func() bool {
				dl.waveMu.Lock()
				defer dl.waveMu.Unlock()
				return w.readyCh != nil
			})
			report("c", schemas.StateNotified) // not downloading: not counted
			for _, dev := range []string{"a", "b", "a"} {
				report(dev, schemas.StateDownloading)
			}
			if msgs := tr.on(ct); len(msgs) != 1 || !bytes.Equal(msgs[0], d.tableBytes) {
				t.Fatalf("%d messages sent while the wave waited, want its table copy alone", len(msgs))
			}
			if tc.last != "" {
				report(tc.last, schemas.StateDownloading)
			}
			dl.wait()
			if got := counterValue(dl.met.waves); got != 1 {
				t.Fatalf("%v waves, want 1", got)
			}
			if n, want := len(tr.on(ct)), 1+d.chunks()+1; n != want {
				t.Errorf("%d messages, want the table, %d chunks and the end marker", n, d.chunks())
			}
		})
	}
}

// wavedDelivery returns a delivery on a fake host holding an image of 24
// chunks of 512 bytes, coded in blocks of k with par parity chunks,
// after one wave of it, with its recording transport and the image's
// broadcast topic.
func wavedDelivery(ctx context.Context, t *testing.T, k, par int) (*imageData, *delivery, *recTransport, schemas.Topic) {
	t.Helper()
	h := newFakeHost()
	d := h.addImage(t, 24*512, 512, k, par)
	dl, tr := newTestDelivery(t, h, nil)
	if err := dl.wave(ctx, d.info.Digest); err != nil {
		t.Fatal(err)
	}
	ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
	return d, dl, tr, ct
}

// topicCounts returns the parity chunks published on ct and the number
// of the last end marker there.
func topicCounts(tr *recTransport, ct schemas.Topic) (parity int, marker uint32) {
	for _, m := range tr.on(ct) {
		var we schemas.WaveEnd
		switch {
		case schemas.IsParityChunk(m):
			parity++
		case !schemas.IsChunk(m) && schemas.Decode(m, &we) == nil:
			marker = we.Wave
		}
	}
	return parity, marker
}

// A requester that lacks more chunks of a block than the block has
// parity is sent chunks, not only parity: here its second ask names
// the marker before the first round, so that round's parity counts as
// on its way to it and its need looks like 2 symbols, which parity
// would cover; but with 6 of 8 chunks lost and 4 parity chunks in all,
// no parity it could be sent rebuilds the block.
func TestDeliveryBeyondParityGetsChunks(t *testing.T) {
	const k, par = 8, 4 // 24 chunks: block 0 is chunks 0-7
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, dl, tr, ct := wavedDelivery(ctx, t, k, par)
	marker := func() uint32 { _, m := topicCounts(tr, ct); return m }
	waveEnd := marker()
	lost := []int{0, 1, 2, 3, 4, 5}
	rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
	dl.batch(ctx, *request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, lost...))
	dl.wait()
	if marker() != waveEnd+1 {
		t.Fatalf("no round after the first ask")
	}
	u0 := len(tr.on(rt))
	again := request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, lost...)
	again.Seen = waveEnd // it has not heard the round's marker
	dl.batch(ctx, *again)
	dl.wait()
	if got, want := len(tr.on(rt))-u0, len(lost)-par; got < want {
		t.Errorf("second ask: %d chunks by unicast, want at least %d (what the parity cannot rebuild)", got, want)
	}
}

// A requester of a block whose committed parity a round has spent is
// sent the chunks it names, not that parity again: its summary counts the
// chunks it lacks beyond the parity it holds, not which parity that is,
// and parity sent again (oldest first) was often parity it held: devices
// took the same few chunks round after round until their request budget
// ran out.
func TestDeliverySpentBlockGetsChunks(t *testing.T) {
	const k, par = 8, 4 // 24 chunks: block 0 is chunks 0-7
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, dl, tr, ct := wavedDelivery(ctx, t, k, par)
	rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
	dl.batch(ctx, *request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, 0, 1, 2, 3))
	dl.wait()
	parity, round := topicCounts(tr, ct)
	if parity != par {
		t.Fatalf("first round: %d parity chunks, want the block's %d", parity, par)
	}
	// It held 2 of the round's parity chunks: 2 of its 4 chunks are still
	// to come, and it heard the round's end marker.
	again := request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, 2, 3)
	again.Seen = round
	u0 := len(tr.on(rt))
	dl.batch(ctx, *again)
	dl.wait()
	if p, _ := topicCounts(tr, ct); p != parity {
		t.Errorf("second ask: %d parity chunks sent again", p-parity)
	}
	var got []uint32
	for _, m := range tr.on(rt)[u0:] {
		var c schemas.Chunk
		if schemas.Decode(m, &c) == nil {
			got = append(got, c.Index)
		}
	}
	if !slices.Equal(got, []uint32{2, 3}) {
		t.Errorf("second ask: chunks %v by unicast, want [2 3]", got)
	}
}

// TestDeliveryCodedRepair: a repair batch of several requesters of a
// coded image is answered by one round: an announcement, per block as
// many fresh parity chunks as the neediest requester lacks in it, and
// an end marker naming the blocks' chunks; no chunk is sent.
func TestDeliveryCodedRepair(t *testing.T) {
	const k, par = 8, 4 // 24 chunks: blocks 0..2 are chunks 0-7, 8-15, 16-23
	for _, tc := range []struct {
		name string
		lack map[string][]int // by requester
		want []uint32         // parity chunks per block
	}{
		{"one requester", map[string][]int{"dev-a": {0}}, []uint32{1, 0, 0}},
		{"the neediest per block", map[string][]int{
			"dev-a": {0, 1},
			"dev-b": {2, 9},
			"dev-c": {16, 17, 18},
		}, []uint32{2, 1, 3}},
		{"overlapping losses", map[string][]int{
			"dev-a": {0, 1, 2, 3},
			"dev-b": {0, 1, 8},
			"dev-c": {3, 8, 9, 23},
		}, []uint32{4, 2, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost()
			d := h.addImage(t, 24*512, 512, k, par)
			dl, tr := newTestDelivery(t, h, nil)
			b := &repairBatch{reqs: map[string]*schemas.ChunkRequest{}}
			for who, lack := range tc.lack {
				b.reqs[who] = request(t, dl, "camp", who, d, schemas.ProtocolCoded, lack...)
			}
			dl.flushRepair(context.Background(), d.info.Digest, b)

			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			msgs := tr.on(ct)
			if len(msgs) < 2 {
				t.Fatalf("%d messages on the broadcast topic, want an announcement, parity and an end", len(msgs))
			}
			var ann schemas.RepairAnnounce
			if err := schemas.Decode(msgs[0], &ann); err != nil {
				t.Fatalf("first message is not an announcement: %v", err)
			}
			got := make([]uint32, d.table.NumBlocks())
			for _, m := range msgs[1 : len(msgs)-1] {
				var pc schemas.ParityChunk
				if err := schemas.Decode(m, &pc); err != nil {
					t.Fatalf("not a parity chunk: %v", err)
				}
				if pc.Index != got[pc.Block] {
					t.Errorf("block %d: parity %d sent, want fresh ones in order (%d)", pc.Block, pc.Index, got[pc.Block])
				}
				got[pc.Block]++
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("parity per block %v, want %v", got, tc.want)
			}
			announced := make([]uint32, len(got))
			for _, bn := range ann.Need {
				announced[bn.Block] = bn.Parity
			}
			if !slices.Equal(announced, tc.want) {
				t.Errorf("announced %v, want %v", announced, tc.want)
			}
			var end schemas.WaveEnd
			if err := schemas.Decode(msgs[len(msgs)-1], &end); err != nil {
				t.Fatalf("last message is not a round's end: %v", err)
			}
			var wantSent []schemas.Range
			for bl, n := range tc.want {
				if n > 0 {
					first, count := d.table.BlockChunks(uint32(bl))
					if j := len(wantSent) - 1; j >= 0 && wantSent[j].First+wantSent[j].Count == first {
						wantSent[j].Count += count
						continue
					}
					wantSent = append(wantSent, schemas.Range{First: first, Count: count})
				}
			}
			if !slices.Equal(end.Sent, wantSent) {
				t.Errorf("round's end names %v, want the repaired blocks' chunks %v", end.Sent, wantSent)
			}
			for who := range tc.lack {
				rt, _ := dl.cfg.Topics.ChunkReply(who)
				if n := len(tr.on(rt)); n != 0 {
					t.Errorf("%s sent %d messages by unicast, want parity only", who, n)
				}
			}
			if u := dl.egress.Unicast.Load(); u != 0 {
				t.Errorf("unicast egress %d, want 0", u)
			}
		})
	}
}

// TestDeliveryRequestAdmission: a chunk request is queued only from a
// device notified in a running or paused campaign of the image, asking
// on its own topic as itself, for a reply on its own topic.
func TestDeliveryRequestAdmission(t *testing.T) {
	for _, tc := range []struct {
		name      string
		camp      Campaign // the one campaign the host knows
		notified  bool     // dev is notified in it
		requester string   // what the request says (dev when empty)
		replyTo   string   // what the request says (dev's reply topic when empty)
		why       string   // the refusal counted; "" when queued
	}{
		{name: "notified, running", camp: Campaign{ID: "c1", State: CampaignRunning}, notified: true},
		{name: "notified, paused", camp: Campaign{ID: "c1", State: CampaignPaused}, notified: true},
		{name: "not notified", camp: Campaign{ID: "c1", State: CampaignRunning}, why: "not-target"},
		{name: "campaign completed", camp: Campaign{ID: "c1", State: CampaignCompleted}, notified: true, why: "not-target"},
		{name: "campaign of another image", camp: Campaign{ID: "c1", State: CampaignRunning, Image: "other"}, notified: true, why: "not-target"},
		{name: "names another requester", camp: Campaign{ID: "c1", State: CampaignRunning}, notified: true, requester: "dev-b", why: "wrong-requester"},
		{name: "reply elsewhere", camp: Campaign{ID: "c1", State: CampaignRunning}, notified: true, replyTo: "elsewhere", why: "bad-reply-to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const dev = "dev-a"
			h := newFakeHost()
			d := h.addImage(t, 4*256, 256, 0, 0)
			if tc.camp.Image == "" {
				tc.camp.Image = d.info.Digest
			}
			h.camps[tc.camp.ID] = tc.camp
			h.notified[devKey(tc.camp.ID, dev)] = tc.notified
			dl, _ := newTestDelivery(t, h, nil)
			from, _ := dl.cfg.Topics.ChunkRequestsFrom(dev)
			rt, _ := dl.cfg.Topics.ChunkReply(dev)
			r := schemas.ChunkRequest{V: schemas.Version, Image: d.digest, ChunkSize: 256, Requester: dev, ReplyTo: rt.NATS, WantTable: true}
			if tc.requester != "" {
				r.Requester = tc.requester
			}
			if tc.replyTo != "" {
				r.ReplyTo = tc.replyTo
			}
			dl.handleChunkRequest(context.Background(), broker.Message{Topic: from.NATS, Payload: mustEncode(t, &r)})
			if tc.why == "" {
				if len(dl.chunkQ) != 1 {
					t.Fatalf("request not queued")
				}
				if q := <-dl.chunkQ; q.r.Campaign != tc.camp.ID || q.r.Requester != dev {
					t.Errorf("queued as campaign %q requester %q, want %q %q", q.r.Campaign, q.r.Requester, tc.camp.ID, dev)
				}
				return
			}
			if len(dl.chunkQ) != 0 {
				t.Errorf("refused request queued")
			}
			if got := counterValue(dl.met.chunkRequests.WithLabelValues(tc.why)); got != 1 {
				t.Errorf("%v requests refused as %s, want 1", got, tc.why)
			}
		})
	}
}

// TestDeliveryByteBudget: what a device is sent by unicast in answer to
// its requests is capped at DeviceImageBudget times the image and its
// table, counted as each chunk's length and chunkOverhead, however often
// it asks.
func TestDeliveryByteBudget(t *testing.T) {
	const n, cs = 32, 256
	for _, tc := range []struct {
		name     string
		budget   float64
		requests int
	}{
		{"a quarter, one request", 0.25, 1},
		{"one image, asked thrice", 1, 3},
		{"four images, asked twice", 4, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost()
			d := h.addImage(t, n*cs, cs, 0, 0)
			dl, tr := newTestDelivery(t, h, func(c *Config) { c.DeviceImageBudget = tc.budget })
			all := make([]int, n)
			for i := range all {
				all[i] = i
			}
			for range tc.requests {
				r := request(t, dl, "camp", "dev-a", d, schemas.ProtocolPlain, all...)
				dl.serve(context.Background(), r)
			}
			budget := int64(float64(n*cs+len(d.tableBytes)) * tc.budget)
			want := min(int(budget/(cs+chunkOverhead)), tc.requests*n)
			rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
			if got := len(tr.on(rt)); got != want {
				t.Errorf("%d chunks sent, want %d (budget %d bytes)", got, want, budget)
			}
			dl.reqs.mu.Lock()
			sent := dl.reqs.m[devKey("camp", "dev-a")].sent
			dl.reqs.mu.Unlock()
			if sent > budget || sent != int64(want*(cs+chunkOverhead)) {
				t.Errorf("%d bytes charged, want %d within the budget %d", sent, want*(cs+chunkOverhead), budget)
			}
		})
	}
}

// TestDeliveryEgress: each way of sending is counted under its own
// egress counter, by the bytes handed to the transport, and
// Publisher.Egress and EgressTables read them.
func TestDeliveryEgress(t *testing.T) {
	type counts struct{ wave, repair, unicast, table int64 }
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, dl *delivery, d *imageData)
		// want returns the expected counters from what tr recorded.
		want func(dl *delivery, tr *recTransport, d *imageData) counts
	}{
		{"wave", func(t *testing.T, dl *delivery, d *imageData) {
			if err := dl.wave(context.Background(), d.info.Digest); err != nil {
				t.Fatal(err)
			}
		}, func(dl *delivery, tr *recTransport, d *imageData) counts {
			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			return counts{wave: tr.bytesOn(ct)}
		}},
		{"unicast chunks", func(t *testing.T, dl *delivery, d *imageData) {
			dl.serve(context.Background(), request(t, dl, "camp", "dev-a", d, schemas.ProtocolPlain, 1, 2, 3))
		}, func(dl *delivery, tr *recTransport, _ *imageData) counts {
			rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
			return counts{unicast: tr.bytesOn(rt)}
		}},
		{"table", func(t *testing.T, dl *delivery, d *imageData) {
			r := request(t, dl, "camp", "dev-a", d, schemas.ProtocolPlain)
			r.WantTable = true
			dl.serve(context.Background(), r)
		}, func(dl *delivery, tr *recTransport, d *imageData) counts {
			rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
			return counts{unicast: tr.bytesOn(rt), table: int64(len(d.tableBytes))}
		}},
		{"re-broadcast repair", func(t *testing.T, dl *delivery, d *imageData) {
			// Two requesters lack chunk 5 (RepairBroadcastMin): it is
			// broadcast again; chunk 6 only one lacks goes by unicast.
			b := &repairBatch{reqs: map[string]*schemas.ChunkRequest{
				"dev-a": request(t, dl, "camp", "dev-a", d, schemas.ProtocolPlain, 5, 6),
				"dev-b": request(t, dl, "camp", "dev-b", d, schemas.ProtocolPlain, 5),
			}}
			dl.flushRepair(context.Background(), d.info.Digest, b)
		}, func(dl *delivery, tr *recTransport, d *imageData) counts {
			ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
			rt, _ := dl.cfg.Topics.ChunkReply("dev-a")
			return counts{repair: tr.bytesOn(ct), unicast: tr.bytesOn(rt)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost()
			d := h.addImage(t, 8*256, 256, 0, 0)
			dl, tr := newTestDelivery(t, h, nil)
			tc.run(t, dl, d)
			want := tc.want(dl, tr, d)
			p := &Publisher{dl: dl}
			var got counts
			got.wave, got.repair, got.unicast = p.Egress()
			got.table = p.EgressTables()
			if got != want {
				t.Errorf("egress %+v, want %+v", got, want)
			}
			if got.wave+got.repair+got.unicast == 0 {
				t.Error("nothing sent")
			}
			var metric float64
			for _, kind := range []string{"wave", "wave_table", "wave_end", "repair", "unicast", "table"} {
				metric += counterValue(dl.met.chunkBytes.WithLabelValues(kind))
			}
			if sum := got.wave + got.repair + got.unicast; metric != float64(sum) {
				t.Errorf("chunk byte metrics %v, want the egress %d", metric, sum)
			}
		})
	}
}

// TestDeliveryRoundLossMargin: a round for a batch of at least
// minRateBatch requesters adds parity for its own loss, at twice the rate
// the batch reported losses (here 16 requesters lacking 1 chunk of 24
// each, 1/24: one more per block that needs any); a smaller batch gets
// exactly the neediest's need.
func TestDeliveryRoundLossMargin(t *testing.T) {
	for _, tc := range []struct {
		requesters int
		want       []uint32 // parity chunks per block
	}{
		{minRateBatch - 1, []uint32{1, 0, 0}},
		{minRateBatch, []uint32{2, 0, 0}},
	} {
		h := newFakeHost()
		d := h.addImage(t, 24*512, 512, 8, 4)
		dl, tr := newTestDelivery(t, h, nil)
		b := &repairBatch{reqs: map[string]*schemas.ChunkRequest{}}
		for k := range tc.requesters {
			who := fmt.Sprintf("dev-%02d", k)
			b.reqs[who] = request(t, dl, "camp", who, d, schemas.ProtocolCoded, k%8)
		}
		dl.flushRepair(context.Background(), d.info.Digest, b)
		ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
		got := make([]uint32, d.table.NumBlocks())
		for _, m := range tr.on(ct) {
			var pc schemas.ParityChunk
			if schemas.IsParityChunk(m) && schemas.Decode(m, &pc) == nil {
				got[pc.Block]++
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%d requesters: parity per block %v, want %v", tc.requesters, got, tc.want)
		}
	}
}

// gateTransport holds the publish of the wave's chunk after the first
// after ones until gate is closed, and closes reached when it does.
type gateTransport struct {
	*recTransport
	after   int
	n       atomic.Int64
	reached chan struct{}
	gate    chan struct{}
}

func (g *gateTransport) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if schemas.IsChunk(b) && g.n.Add(1) == int64(g.after)+1 {
		close(g.reached)
		<-g.gate
	}
	return g.recTransport.Publish(ctx, t, b, o)
}

// TestDeliveryRepairAfterWave: requests that come while the wave of their
// image flows are not answered beside the wave: the batch waits for the
// wave's end marker (a round beside the wave would take its bandwidth,
// and every device would hold its parity until its blocks were
// complete). Without the wait, the batch is flushed RepairWindow after
// the request, with the wave held mid-way here.
//
// After the wave, a coded device's mid-wave request is not answered at
// all (repairBatch.midWave): on a loaded broker the wave reaches a device
// seconds after it was sent, and what the device named mid-wave mostly
// came after. What it really lost it names in its loss summary after the
// end marker (ChunkRequest.Seen names the marker). dev-a, asking mid-wave
// for a chunk the wave had sent (block 0), and dev-b, for one it had
// still to send (block 0), get nothing; dev-e, whose summary names the
// wave's marker, is repaired (block 1), and so is dev-c, asking after
// the wave without having heard its marker (block 2: a device whose
// marker was lost asks after its idle period).
func TestDeliveryRepairAfterWave(t *testing.T) {
	const k, par = 8, 4
	h := newFakeHost()
	d := h.addImage(t, 24*512, 512, k, par)
	g := &gateTransport{after: 12, reached: make(chan struct{}), gate: make(chan struct{})}
	dl, tr := newTestDelivery(t, h, func(c *Config) {
		g.recTransport = c.Transport.(*recTransport)
		c.Transport = g
		c.RepairWindow = time.Second // dev-c and dev-e join the batch after the wave
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waved := make(chan error, 1)
	go func() { waved <- dl.wave(ctx, d.info.Digest) }()
	select {
	case <-g.reached:
	case <-ctx.Done():
		t.Fatal("the wave did not reach its 13th chunk")
	}
	// Positions 0 to 11 are sent; block of position p: p mod 3.
	dl.batch(ctx, *request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, d.at(0)))  // sent: block 0
	dl.batch(ctx, *request(t, dl, "camp", "dev-b", d, schemas.ProtocolCoded, d.at(21))) // still coming: block 0
	deferred := dl.met.chunkRequests.WithLabelValues("after-wave")
	for counterValue(deferred) == 0 {
		select {
		case <-ctx.Done():
			close(g.gate)
			t.Fatal("the batch did not wait for the wave")
		case <-time.After(time.Millisecond):
		}
	}
	ct, _ := dl.cfg.Topics.Chunks(d.info.Digest)
	for _, m := range tr.on(ct) {
		if schemas.IsRepairAnnounce(m) || schemas.IsParityChunk(m) {
			t.Fatal("a repair round went out beside the wave")
		}
	}
	close(g.gate)
	if err := <-waved; err != nil {
		t.Fatal(err)
	}
	dl.batch(ctx, *request(t, dl, "camp", "dev-c", d, schemas.ProtocolCoded, d.at(20))) // lost late in the wave, its marker too: block 2
	e := request(t, dl, "camp", "dev-e", d, schemas.ProtocolCoded, d.at(4))             // its summary after the marker: block 1
	e.Seen = 1
	dl.batch(ctx, *e)
	dl.wait() // the batch, flushed RepairWindow after the wave's end
	msgs := tr.on(ct)
	end, ann := -1, -1
	parity := make([]int, d.table.NumBlocks())
	for k, m := range msgs {
		switch {
		case schemas.IsRepairAnnounce(m):
			ann = k
		case schemas.IsParityChunk(m):
			blk, _ := schemas.ParityBlockOf(m)
			parity[blk]++
		case !schemas.IsChunk(m) && !bytes.Equal(m, d.tableBytes) && end < 0:
			end = k // the wave's end marker
		}
	}
	if end < 0 || ann < 0 || ann < end {
		t.Fatalf("wave end at message %d, repair announcement at %d: want the round after the wave", end, ann)
	}
	if want := []int{0, 1, 1}; !slices.Equal(parity, want) {
		t.Errorf("parity per block %v, want %v (dev-e's and dev-c's losses, not what dev-a and dev-b asked for mid-wave)", parity, want)
	}
	if n := counterValue(deferred); n != 2 {
		t.Errorf("%v requests counted after-wave, want 2 (dev-a's and dev-b's)", n)
	}
	if n := counterValue(dl.met.chunkRequests.WithLabelValues("mid-wave")); n != 2 {
		t.Errorf("%v requests left unanswered as mid-wave, want 2 (dev-a's and dev-b's)", n)
	}
}

// TestDeliveryRepairSeenThrough: a device that asks again after a repair
// round for it, its parity lost, is answered at once when its summary
// names the round's end marker (ChunkRequest.Seen): what the round sent
// reached it or was lost before it asked. Naming an earlier marker, the
// round counts as still on its way to it (parityLog.crossed), even
// seconds after it ended (a device behind a loaded broker), and nothing
// goes; but only once: asking again with nothing more heard (the marker
// was lost), it is answered. Naming no marker (an agent from before the
// field), the round counts as on its way only just after it ended.
func TestDeliveryRepairSeenThrough(t *testing.T) {
	const k, par = 8, 4
	for _, tc := range []struct {
		name   string
		aged   time.Duration // how long before the second ask the round ended
		seen   func(round uint32) uint32
		parity []int // parity chunks sent for each ask after the round
	}{
		{"no marker named", 0, func(uint32) uint32 { return 0 }, []int{0}},
		{"no marker named, round older", 3 * time.Second, func(uint32) uint32 { return 0 }, []int{1}},
		{"an earlier marker", 0, func(r uint32) uint32 { return r - 1 }, []int{0, 1}},
		{"an earlier marker, round older", 3 * time.Second, func(r uint32) uint32 { return r - 1 }, []int{0, 1}},
		{"an earlier marker, round too old", seenCrossing + time.Second, func(r uint32) uint32 { return r - 1 }, []int{1}},
		{"the round's marker", 0, func(r uint32) uint32 { return r }, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			d, dl, tr, ct := wavedDelivery(ctx, t, k, par)
			count := func() (int, uint32) { return topicCounts(tr, ct) }
			_, waveEnd := count()
			dl.batch(ctx, *request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, d.at(0)))
			dl.wait()
			p1, round := count()
			if p1 != 1 || round != waveEnd+1 {
				t.Fatalf("first round: %d parity chunks, end marker %d; want 1 and %d", p1, round, waveEnd+1)
			}
			dl.waveMu.Lock()
			for i := range dl.waves[d.info.Digest].parityLog {
				l := &dl.waves[d.info.Digest].parityLog[i]
				l.at = l.at.Add(-tc.aged)
			}
			dl.waveMu.Unlock()
			for n, want := range tc.parity {
				p0, _ := count()
				again := request(t, dl, "camp", "dev-a", d, schemas.ProtocolCoded, d.at(0))
				again.Seen = tc.seen(round)
				dl.batch(ctx, *again)
				dl.wait()
				if p, _ := count(); p-p0 != want {
					t.Errorf("ask %d after the round: %d parity chunks, want %d", n+1, p-p0, want)
				}
			}
		})
	}
}

// TestFirstRoundNeed: the first repair round after a wave is sized for
// the fleet at the requesters' loss rate (a binomial quantile), within
// 1.5 times the largest need the batch holds.
func TestFirstRoundNeed(t *testing.T) {
	for _, tc := range []struct {
		n        int
		p, eps   float64
		quantile int
	}{
		{128, 0.05, 1.0 / 2000, 16},
		{128, 0.05, 1.0 / 8, 9},
		{16, 0.05, 1.0 / 64, 3},
		{128, 0.004, 1.0 / 2000, 4},
		{128, 0.25, 1.0 / 2000, 49},
		{8, 0.5, 0.01, 7},
		{10, 0.0001, 0.5, 0},
		{10, 1, 0.5, 10},
		{10, 0, 0.5, 0},
	} {
		if got := binomialQuantile(tc.n, tc.p, tc.eps); got != tc.quantile {
			t.Errorf("binomialQuantile(%d, %v, %v) = %d, want %d", tc.n, tc.p, tc.eps, got, tc.quantile)
		}
	}
	ct := &schemas.ChunkTable{ImageSize: 500 * 256, ChunkSize: 256, Block: 128, ParityPerBlock: 32} // blocks of 128, 128, 128, 116
	for _, tc := range []struct {
		name  string
		need  []int
		rate  float64
		fleet int
		want  []int
	}{
		{"the first few lacked little", []int{4, 9, 5, 7}, 0.05, 500, []int{14, 14, 14, 14}},
		{"a fleet of one", []int{4, 9, 5, 7}, 0.05, 1, []int{8, 9, 8, 7}},
		{"the quantile under the batch's own need", []int{20, 3, 0, 2}, 0.05, 500, []int{20, 16, 16, 15}},
		{"a few shed a burst, the rest lost nothing", []int{2, 0, 0, 0}, 0.2, 500, []int{3, 3, 3, 3}},
		{"nothing lacked", []int{0, 0, 0, 0}, 0.05, 500, []int{0, 0, 0, 0}},
	} {
		if got := firstRoundNeed(ct, tc.need, tc.rate, tc.fleet); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// The rate is the requesters' median of their median block's share:
	// bursts in one block count for nothing.
	even := &schemas.ChunkTable{ImageSize: 512 * 256, ChunkSize: 256, Block: 128, ParityPerBlock: 32}
	for _, tc := range []struct {
		name string
		lack map[string][]int
		want float64
	}{
		{"even losses", map[string][]int{"a": {6, 7, 6, 6}, "b": {5, 6, 7, 6}, "c": {8, 6, 6, 5}}, 6.0 / 128},
		{"bursts", map[string][]int{"a": {48, 0, 0, 0}, "b": {0, 30, 0, 1}, "c": {40, 0, 0, 0}}, 0},
		{"one even among bursts", map[string][]int{"a": {48, 0, 0, 0}, "b": {7, 7, 7, 7}, "c": {0, 0, 20, 0}}, 0},
		{"none", nil, 0},
	} {
		if got := lossRate(even, tc.lack); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("lossRate, %s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestFleetLack: a requester whose losses are one run of the carousel
// (it shed what came while its receive path was behind: with blocks
// interleaved, the run is spread evenly over the blocks, so lossRate
// takes it for even loss) does not count in the rate the first round is
// sized for; scattered losses do, and so do runs far apart, runs
// shorter than the image's blocks (lossRate's median block share tells
// those apart already) and a requester that lacks nothing.
func TestFleetLack(t *testing.T) {
	ct := &schemas.ChunkTable{ImageSize: 512 * 256, ChunkSize: 256, Block: 128, ParityPerBlock: 32}
	ct.Hashes = make([]schemas.Digest, ct.NumChunks())
	d := newImageData(Image{}, nil, ct, nil)
	run := func(from, n int) []int { // the chunks the carousel sends at positions [from, from+n)
		var out []int
		for s := from; s < from+n; s++ {
			out = append(out, d.at(s))
		}
		return out
	}
	every := func(step int) []int {
		var out []int
		for s := 0; s < 512; s += step {
			out = append(out, d.at(s))
		}
		return out
	}
	holes := run(100, 60)
	holes = append(holes[:10:10], holes[20:]...) // a run with a gap: 50 chunks over 60 positions
	for _, tc := range []struct {
		name  string
		lacks []int
		count bool
	}{
		{"one run of 64 positions (shed)", run(200, 64), false},
		{"one run of 28 at the carousel's start", run(0, 28), false},
		{"one run with a gap", holes, false},
		{"a run of 4, one a block", run(300, 4), false},
		{"a run of 3, shorter than the blocks", run(300, 3), true},
		{"one chunk", run(7, 1), true},
		{"nothing lacked", nil, true},
		{"scattered, 1 in 20", every(20), true},
		{"two runs far apart", append(run(10, 8), run(400, 8)...), true},
	} {
		// Evenly over the blocks: what lossRate alone cannot tell apart.
		l := make([]int, ct.NumBlocks())
		for _, i := range tc.lacks {
			l[ct.BlockOf(uint32(i))]++
		}
		got := fleetLack(d, map[string][]int{"dev": tc.lacks}, map[string][]int{"dev": l})
		if _, ok := got["dev"]; ok != tc.count {
			t.Errorf("%s (per block %v): counted %v, want %v", tc.name, l, ok, tc.count)
		}
	}
}
