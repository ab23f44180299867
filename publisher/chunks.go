package publisher

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// Egress counts chunk bytes (encoded messages) handed to the transport.
type Egress struct {
	// Wave: broadcast waves. Repair: chunks broadcast again because many
	// devices asked. Unicast: chunks and tables sent to one requester.
	Wave, Repair, Unicast atomic.Int64
}

// pacer bounds chunk egress: at most inflight messages handed to the
// transport at once, and an optional byte rate.
type pacer struct {
	slots chan struct{}
	lim   *rate.Limiter
}

func newPacer(cfg Config) *pacer {
	n := max(int(cfg.MaxInFlightBytes/int64(cfg.ChunkSize)), 1)
	pc := &pacer{slots: make(chan struct{}, n)}
	if cfg.MaxBytesPerSecond > 0 {
		burst := int(max(cfg.MaxInFlightBytes, int64(schemas.MaxChunkSize)+1024))
		pc.lim = rate.NewLimiter(rate.Limit(cfg.MaxBytesPerSecond), burst)
	}
	return pc
}

// send publishes one chunk-family message under the pacer's limits.
func (p *Publisher) send(ctx context.Context, t schemas.Topic, b []byte, ctr *atomic.Int64, kind string) error {
	if p.pace.lim != nil {
		if err := p.pace.lim.WaitN(ctx, len(b)); err != nil {
			return err
		}
	}
	select {
	case p.pace.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.pace.slots }()
	if err := p.cfg.Transport.Publish(ctx, t, b, broker.PublishOptions{Family: broker.FamilyChunk}); err != nil {
		return err
	}
	ctr.Add(int64(len(b)))
	p.met.chunkBytes.WithLabelValues(kind).Add(float64(len(b)))
	return nil
}

func encodeChunk(d *imageData, i int) ([]byte, error) {
	return schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: d.digest, Index: uint32(i), Data: d.chunk(i)})
}

// maybeWave starts a broadcast wave of c's image when enough devices are
// downloading it and none ran recently. Called by the leader's tick.
func (p *Publisher) maybeWave(ctx context.Context, c *Campaign) {
	counts, _ := p.idx.counts(c.ID)
	if int(counts["downloading"]) < p.cfg.BroadcastMin {
		return
	}
	now := p.cfg.Clock.Now()
	p.waveMu.Lock()
	w := p.waves[c.Image]
	if w != nil && (w.running || now.Sub(w.started) < p.cfg.WaveInterval) {
		p.waveMu.Unlock()
		return
	}
	nw := &waveState{running: true, started: now}
	nw.next.Store(math.MaxInt64)
	p.waves[c.Image] = nw
	p.waveMu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		err := p.Wave(ctx, c.Image)
		p.waveMu.Lock()
		p.waves[c.Image].running = false
		p.waveMu.Unlock()
		if err != nil && ctx.Err() == nil {
			p.log.Warn("broadcast wave", "image", c.Image, "err", err)
		}
	}()
}

type waveState struct {
	running bool
	started time.Time
	// next is the chunk index the wave in flight sends next: chunks from
	// it on are still coming by broadcast. MaxInt64 when no wave is being
	// sent.
	next atomic.Int64
}

// waveAhead returns the index from which the wave in flight of digest
// will still broadcast every chunk, or MaxInt64 when none is in flight.
// Requests for those chunks are answered by the wave, not by unicast.
func (p *Publisher) waveAhead(digest string) int64 {
	p.waveMu.Lock()
	defer p.waveMu.Unlock()
	if w := p.waves[digest]; w != nil {
		return w.next.Load()
	}
	return math.MaxInt64
}

// Wave broadcasts every chunk of the image once on its chunk topic (QoS 0),
// paced. It blocks until the wave is sent or ctx ends. While it runs,
// requests for chunks it has still to send are left to it.
func (p *Publisher) Wave(ctx context.Context, digest string) error {
	d, err := p.loadImage(ctx, digest)
	if err != nil {
		return err
	}
	t, err := p.cfg.Topics.Chunks(digest)
	if err != nil {
		return err
	}
	p.waveMu.Lock()
	w := p.waves[digest]
	if w == nil { // a wave asked for by hand
		w = &waveState{started: p.cfg.Clock.Now()}
		p.waves[digest] = w
	}
	p.waveMu.Unlock()
	defer w.next.Store(math.MaxInt64)
	for i := range d.table.Hashes {
		w.next.Store(int64(i))
		b, err := encodeChunk(d, i)
		if err != nil {
			return err
		}
		if err := p.send(ctx, t, b, &p.Egress.Wave, "wave"); err != nil {
			return fmt.Errorf("publisher: wave %s chunk %d: %w", digest, i, err)
		}
	}
	p.met.waves.Inc()
	return nil
}

// handleChunkRequest is the handler of the shared chunk request
// subscription: it checks the request and queues it for a server.
func (p *Publisher) handleChunkRequest(ctx context.Context, m broker.Message) {
	var r schemas.ChunkRequest
	if err := schemas.Decode(m.Payload, &r); err != nil {
		p.met.chunkRequests.WithLabelValues("malformed").Inc()
		return
	}
	digest := hex.EncodeToString(r.Image)
	t, err := p.cfg.Topics.ChunkRequests(digest)
	if err != nil || (m.Topic != t.MQTT && m.Topic != t.NATS) {
		p.met.chunkRequests.WithLabelValues("wrong-topic").Inc()
		return
	}
	// Chunks go only to the requester's own reply topic, so a request
	// cannot aim chunk traffic at someone else.
	rt, err := p.cfg.Topics.ChunkReply(r.Requester)
	if err != nil || (r.ReplyTo != rt.MQTT && r.ReplyTo != rt.NATS) {
		p.met.chunkRequests.WithLabelValues("bad-reply-to").Inc()
		return
	}
	select {
	case p.chunkQ <- r:
	default:
		p.met.chunkRequests.WithLabelValues("dropped").Inc()
	}
}

// wanted returns the chunk indexes a request asks for, bounded by n.
func wanted(r *schemas.ChunkRequest, n int) []int {
	var out []int
	if len(r.Bitmap) > 0 {
		for i := 0; i < n && i/8 < len(r.Bitmap); i++ {
			if r.Bitmap[i/8]&(1<<(i%8)) != 0 {
				out = append(out, i)
			}
		}
		return out
	}
	seen := make(map[int]bool)
	for _, rg := range r.Ranges {
		for i := int(rg.First); i < int(rg.First)+int(rg.Count) && i < n; i++ {
			if !seen[i] {
				seen[i] = true
				out = append(out, i)
			}
		}
	}
	return out
}

// repairBatch collects the requests of one image during a repair window.
type repairBatch struct {
	reqs  map[string]*schemas.ChunkRequest // by requester: the latest
	timer bool
}

func (p *Publisher) chunkServer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-p.chunkQ:
			if p.cfg.RepairWindow <= 0 {
				p.serve(ctx, &r)
				continue
			}
			p.batch(ctx, r)
		}
	}
}

func (p *Publisher) serve(ctx context.Context, r *schemas.ChunkRequest) {
	digest := hex.EncodeToString(r.Image)
	d, err := p.loadImage(ctx, digest)
	if err != nil {
		p.met.chunkRequests.WithLabelValues("unknown-image").Inc()
		return
	}
	if r.ChunkSize != d.info.ChunkSize {
		p.met.chunkRequests.WithLabelValues("wrong-chunk-size").Inc()
		return
	}
	p.met.chunkRequests.WithLabelValues("served").Inc()
	rt := schemas.Topic{MQTT: r.ReplyTo, NATS: r.ReplyTo}
	if r.WantTable {
		if err := p.send(ctx, rt, d.tableBytes, &p.Egress.Unicast, "table"); err != nil {
			return
		}
	}
	ahead := p.waveAhead(digest)
	for _, i := range wanted(r, len(d.table.Hashes)) {
		if int64(i) >= ahead {
			continue // the wave in flight still sends it
		}
		b, err := encodeChunk(d, i)
		if err != nil {
			return
		}
		if err := p.send(ctx, rt, b, &p.Egress.Unicast, "unicast"); err != nil {
			return
		}
	}
}

func (p *Publisher) batch(ctx context.Context, r schemas.ChunkRequest) {
	digest := hex.EncodeToString(r.Image)
	p.repairMu.Lock()
	b := p.repairs[digest]
	if b == nil {
		b = &repairBatch{reqs: map[string]*schemas.ChunkRequest{}}
		p.repairs[digest] = b
	}
	b.reqs[r.Requester] = &r
	start := !b.timer
	b.timer = true
	p.repairMu.Unlock()
	if !start {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTimer(p.cfg.RepairWindow)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.repairMu.Lock()
		b := p.repairs[digest]
		delete(p.repairs, digest)
		p.repairMu.Unlock()
		p.flushRepair(ctx, digest, b)
	}()
}

// flushRepair broadcasts the chunks at least RepairBroadcastMin requesters
// asked for and sends the others to each requester.
func (p *Publisher) flushRepair(ctx context.Context, digest string, b *repairBatch) {
	d, err := p.loadImage(ctx, digest)
	if err != nil {
		p.met.chunkRequests.WithLabelValues("unknown-image").Add(float64(len(b.reqs)))
		return
	}
	n := len(d.table.Hashes)
	askers := make(map[int]int)
	per := make(map[string][]int)
	// Chunks the wave in flight has still to send are left to it.
	ahead := p.waveAhead(digest)
	for who, r := range b.reqs {
		if r.ChunkSize != d.info.ChunkSize {
			continue
		}
		w := slices.DeleteFunc(wanted(r, n), func(i int) bool { return int64(i) >= ahead })
		per[who] = w
		for _, i := range w {
			askers[i]++
		}
	}
	bt, _ := p.cfg.Topics.Chunks(digest)
	for i := 0; i < n; i++ {
		if askers[i] < p.cfg.RepairBroadcastMin {
			continue
		}
		cb, err := encodeChunk(d, i)
		if err != nil || p.send(ctx, bt, cb, &p.Egress.Repair, "repair") != nil {
			return
		}
	}
	for who, w := range per {
		r := b.reqs[who]
		rt := schemas.Topic{MQTT: r.ReplyTo, NATS: r.ReplyTo}
		if r.WantTable {
			if p.send(ctx, rt, d.tableBytes, &p.Egress.Unicast, "table") != nil {
				return
			}
		}
		for _, i := range w {
			if askers[i] >= p.cfg.RepairBroadcastMin {
				continue
			}
			cb, err := encodeChunk(d, i)
			if err != nil || p.send(ctx, rt, cb, &p.Egress.Unicast, "unicast") != nil {
				return
			}
		}
	}
	p.met.chunkRequests.WithLabelValues("served").Add(float64(len(per)))
}
