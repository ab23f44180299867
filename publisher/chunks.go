package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// egressCounters counts chunk bytes (encoded messages) handed to the
// transport; Publisher.Egress reads them.
type egressCounters struct {
	// Wave: broadcast waves (with the chunk table copies broadcast in
	// them). Repair: chunks broadcast again because many devices asked.
	// Unicast: chunks and tables sent to one requester; Table: the part
	// of Unicast that is chunk tables.
	Wave, Repair, Unicast, Table atomic.Int64
}

// tableEvery is the distance, in chunks, between the chunk table copies
// a wave broadcasts (from its first chunk on), so that a device that
// starts listening within a wave finds a copy soon.
const tableEvery = 128

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
func (dl *delivery) send(ctx context.Context, t schemas.Topic, b []byte, ctr *atomic.Int64, kind string) error {
	if dl.pace.lim != nil {
		if err := dl.pace.lim.WaitN(ctx, len(b)); err != nil {
			return err
		}
	}
	select {
	case dl.pace.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-dl.pace.slots }()
	if err := dl.cfg.Transport.Publish(ctx, t, b, broker.PublishOptions{Family: broker.FamilyChunk}); err != nil {
		return err
	}
	ctr.Add(int64(len(b)))
	dl.met.chunkBytes.WithLabelValues(kind).Add(float64(len(b)))
	return nil
}

// encodeChunk reads chunk i of d from the store and encodes it as a
// chunk message.
func (dl *delivery) encodeChunk(ctx context.Context, d *imageData, i int) ([]byte, error) {
	b, err := dl.images.readChunk(ctx, d, i)
	if err != nil {
		if ctx.Err() == nil {
			dl.log.Warn("chunk not sent", "image", d.info.Digest, "chunk", i, "err", err)
		}
		return nil, err
	}
	return encodeChunkData(d, i, b)
}

func encodeChunkData(d *imageData, i int, b []byte) ([]byte, error) {
	return schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: d.digest, Index: uint32(i), Data: b})
}

// waveReadAhead is a wave's read-ahead from the store, in bytes: an
// image up to this size is read whole as its wave starts (the reads in
// flight at once: chunkReader.eager), before the broker is busy fanning
// the wave out. Read 1 MiB ahead as the wave went (64 direct gets in
// flight, each waiting behind the fan-out of the chunks before it: at
// 500 devices on NATS, up to a second), the reads held a wave of 8 MiB
// to about 1 MB/s and took 0.9 to 2.2 s of its 8 to 11 s
// (docs/BENCHMARKS.md). A larger image is read that far ahead, and never
// more than waveReads chunks.
const (
	waveReadAhead = 32 << 20
	waveReads     = 1024
)

// maybeWave starts a broadcast wave of c's image when one is due and the
// devices it is for listen. Called by the leader's tick.
//
// A wave is due when BroadcastMin devices are downloading and none ran
// within WaveInterval; after the first wave of the image, only when
// BroadcastMin devices asked for its chunk table since the last wave
// started (devices that joined since: the others complete by repair).
// A due wave is held until every device of c is past its notice (none
// pending), every downloading one has been sent the chunk table (it
// subscribes to the broadcast topic right after), and WaveSettle passed
// since the last table went out, so that all of them listen from chunk 0;
// but never longer than WaveHold. While a wave is held, chunk requests
// are left to it.
func (dl *delivery) maybeWave(ctx context.Context, c *Campaign) {
	if !dl.imageWaveWanted(c) {
		return
	}
	counts, _ := dl.camps.counts(c.ID)
	now := dl.cfg.Clock.Now()
	dl.waveMu.Lock()
	w := dl.waves[c.Image]
	if int(counts[countDownloading]) < dl.cfg.BroadcastMin {
		if w != nil && int(counts[countPending]+counts[countDownloading]) < dl.cfg.BroadcastMin {
			w.due = time.Time{} // no wave is coming
		}
		dl.waveMu.Unlock()
		return
	}
	if w == nil {
		w = newWaveState()
		dl.waves[c.Image] = w
	}
	if w.running || (!w.started.IsZero() && now.Sub(w.started) < dl.cfg.WaveInterval) {
		dl.waveMu.Unlock()
		return
	}
	// With wave gathering on (WaveHold > 0), a later wave is only for
	// devices that joined since the last one (the others, who heard it,
	// finish by repair); without it, waves repeat every WaveInterval while
	// devices download.
	// A wave that failed (a store read or a publish that kept timing out
	// under load) is sent again, for everyone, once WaveInterval passed.
	if dl.cfg.WaveHold > 0 && !w.started.IsZero() && !w.failed && w.joinedSince(w.started) < dl.cfg.BroadcastMin {
		dl.waveMu.Unlock()
		return
	}
	if w.due.IsZero() {
		w.due = now
	}
	held := now.Sub(w.due) < dl.cfg.WaveHold
	if held && (counts[countPending] > 0 || now.Sub(w.lastTable) < dl.cfg.WaveSettle || !dl.gathered(c, w)) {
		dl.armRecheck(w, now)
		dl.waveMu.Unlock()
		return
	}
	w.running, w.started, w.due, w.failed = true, now, time.Time{}, false
	w.readyWant = int(counts[countDownloading])
	w.next.Store(0) // requests from here on are left to the wave
	dl.waveMu.Unlock()
	dl.wg.Add(1)
	go func() {
		defer dl.wg.Done()
		err := dl.wave(ctx, c.Image)
		w.next.Store(math.MaxInt64)
		failed := err != nil && ctx.Err() == nil
		dl.waveMu.Lock()
		w.running = false
		w.failed = failed
		dl.waveMu.Unlock()
		if failed {
			dl.met.wavesFailed.Inc()
			dl.log.Warn("broadcast wave failed; it is sent again after the wave interval", "image", c.Image, "err", err, "interval", dl.cfg.WaveInterval)
		}
	}()
}

// armRecheck has the leader's loop look at w's held wave again when its
// hold may be over: WaveSettle after the last chunk table went out (the
// devices listen by then), at least WaveSettle/2 from now, and at the
// latest when WaveHold ends. At the next TickInterval instead (1s by
// default), a fleet notified and listening waited up to a second for
// its wave: at 500 devices that was 0.6 s of a 12 s delivery. One
// re-check is armed per wave at a time; a tick that finds the wave
// still held arms the next. Called with waveMu held.
func (dl *delivery) armRecheck(w *waveState, now time.Time) {
	if dl.recheck == nil || w.recheck {
		return
	}
	d := max(w.lastTable.Add(dl.cfg.WaveSettle).Sub(now), dl.cfg.WaveSettle/2, minRecheck)
	d = min(d, max(w.due.Add(dl.cfg.WaveHold).Sub(now), 0))
	w.recheck = true
	time.AfterFunc(d, func() {
		dl.waveMu.Lock()
		w.recheck = false
		dl.waveMu.Unlock()
		dl.recheck()
	})
}

// minRecheck is the shortest wait before a held wave is looked at again.
const minRecheck = 20 * time.Millisecond

// gathered reports whether every device of c downloading has been sent
// the chunk table of w's image. When no device asked for a table (devices
// that resume, or take it from another source) it holds. Called with
// waveMu held.
func (dl *delivery) gathered(c *Campaign, w *waveState) bool {
	if len(w.tables) == 0 {
		return true
	}
	for _, e := range dl.camps.devs(c.ID) {
		if bucket(e.st.State) != countDownloading {
			continue
		}
		if _, ok := w.tables[e.st.Device]; !ok {
			return false
		}
	}
	return true
}

// waveState is the broadcast state of one image. Its fields are guarded
// by delivery.waveMu, except next.
type waveState struct {
	running bool
	failed  bool // the last wave ended with an error: send it again
	// readyWant is how many devices the running wave is for (downloading
	// as it started); while readyCh is set (Config.WaveReady, the wave's
	// first table copy sent, its first chunk not yet), ready holds those
	// that reported since, and readyCh is closed once all of them did.
	readyWant int
	ready     map[string]struct{}
	readyCh   chan struct{}
	started   time.Time // the last wave's start, by Config.Clock
	// due is when a wave was found due and held to gather devices; zero
	// when none is held. held: the first request of the image started a
	// hold already.
	due  time.Time
	held bool
	// recheck: a re-check of the held wave is armed (armRecheck).
	recheck bool
	// tables holds when the chunk table was first sent to each requester
	// (a device notified in a campaign of the image, see
	// handleChunkRequest, so it holds at most the campaigns' targets),
	// and lastTable when one was last sent (Config.Clock).
	tables    map[string]time.Time
	lastTable time.Time
	// casts counts the chunk table copies waves broadcast, and
	// castAtJoin holds casts when each device listening on the broadcast
	// topic asked first (see tableByWave): a device that asks again
	// after a copy went out missed every copy, and is answered by
	// unicast.
	casts      int
	castAtJoin map[string]int
	// castTimes and plainCastTimes hold when each copy went out
	// (monotonic): castTimes[k] is copy k+1's.
	castTimes, plainCastTimes []time.Time
	// plain is the encoding of a coded image's plain chunk table (see
	// tables.go), made on first use. plainWanted: a device of delivery
	// protocol 1 asked for the table to come by wave, so waves carry
	// copies of the plain table too (counted in plainCasts; castAtJoin
	// holds, for such a device, plainCasts when it asked first).
	plain       []byte
	plainWanted bool
	plainCasts  int
	// ended counts the waves of the image this instance sent to the end
	// (the number in their WaveEnd markers), and repair rounds' markers
	// too; waveMark is the last wave's own marker: while ended is still
	// waveMark, no round has gone since that wave (firstRoundNeed).
	ended, waveMark uint32
	// spent counts, per block of a coded image, the parity chunks this
	// instance broadcast (each repair round sends fresh ones).
	spent []uint32
	// parityLog holds the recent coded repair rounds (repairCoded), and
	// discounted, per requester, the end marker of the last round its
	// summaries were counted as crossed by: each round is counted once.
	parityLog  parityLog
	discounted map[string]uint32
	// sent holds, per chunk index, when it was last broadcast (wave or
	// repair), in the monotonic time repair windows are measured in.
	sent []time.Time
	// next is the position the wave in flight sends next, in the image's
	// carousel order (imageData.at; the chunk index for an image that is
	// not coded): chunks from it on are still coming by broadcast.
	// MaxInt64 when no wave is being sent.
	next atomic.Int64
	// end is where the pass in flight stops (exclusive, in carousel
	// order): the image's chunk count for a full pass, less for a pass
	// that only carries what devices that joined the previous one missed
	// (see Wave). MaxInt64 outside a wave.
	end atomic.Int64
	// joiners counts the devices that joined (see joined) while the pass
	// in flight was being sent, and joinTo is the carousel position up to
	// which the one that missed most of it missed: the next pass's end.
	joiners int
	joinTo  int64
	// pace is the rate control of the wave in flight (wavepace.go), nil
	// outside one or without Config.WavePace.
	pace *wavePace
	// passRate is the bytes per second the last pass of at least
	// minRatePass chunks went out at, paced by the echo and the
	// receivers: repair rounds go no faster (0: none measured yet).
	passRate float64
	// flowing is closed when this instance's wave of the image in flight
	// ends (its last pass's end marker sent); nil when none flows.
	// flowEnd is when the last one ended (monotonic; for the repair
	// batch's debug line).
	flowing chan struct{}
	flowEnd time.Time
}

// minRatePass is the fewest chunks a wave pass must carry for its rate to
// pace the repair rounds after it.
const minRatePass = 64

// roundBurst is how many parity chunks a repair round sends at once
// before its pace (roundPace times the last pass's rate) applies: what a
// device's receive buffer takes in a moment without falling behind.
const roundBurst = 8

// minRateBatch is the fewest requesters whose reports a repair round
// estimates the loss rate from (to add parity for its own loss).
const minRateBatch = 16

// roundPace is how much faster than the last wave pass a repair round
// may go: devices queue only the parity they lack (fetcher's useful
// filter), a round's share of it, so that they take it faster than a
// wave; and a round the devices wait for should not take as long as
// their idle timers. Three times: at 2 one NATS run of six with 5% loss
// took 2.53x the raw fan-out to staged; at 3 the six runs kept egress
// within 1.15 images on mosquitto and 1.28 on NATS (docs/BENCHMARKS.md).
const roundPace = 3

func newWaveState() *waveState {
	w := &waveState{}
	w.next.Store(math.MaxInt64)
	w.end.Store(math.MaxInt64)
	return w
}

// maxPasses bounds the passes of one wave: the full pass and the partial
// passes for devices that joined while the previous one flowed. Devices
// that join later complete by repair, or bring about a wave of their own
// (maybeWave).
const maxPasses = 4

// joined records that a device of an n-chunk image joined (it was first
// sent the chunk table, or first asked for it by wave) while a pass was
// in flight: it listens from about the pass's position on, so it missed
// what the pass sent before; a device that joins during a partial pass
// also lacks what that pass does not carry. Called with waveMu held.
func (w *waveState) joined(n int) {
	pos, end := w.next.Load(), w.end.Load()
	if pos == math.MaxInt64 {
		return // no pass in flight: the next wave, or repair, serves it
	}
	// The table comes with the wave's next copy (every tableEvery chunks)
	// or by unicast; the chunks before it are dropped (fetcher.Table).
	need := min(int64(n), pos+tableEvery)
	if end < int64(n) {
		need = int64(n)
	}
	w.joiners++
	w.joinTo = max(w.joinTo, need)
}

// span is a range [from, to) of carousel positions a wave still sends.
type span struct{ from, to int64 }

// has reports whether position pos is still coming.
func (s span) has(pos int64) bool { return pos >= s.from && pos < s.to }

// none reports whether nothing is coming.
func (s span) none() bool { return s.from >= s.to }

// joinedSince counts the requesters sent the table at or after t.
func (w *waveState) joinedSince(t time.Time) int {
	n := 0
	for _, at := range w.tables {
		if !at.Before(t) {
			n++
		}
	}
	return n
}

// broadcastAt records that chunk i of an n-chunk image was broadcast at t.
// Called with waveMu held.
func (w *waveState) broadcastAt(i, n int, t time.Time) {
	if len(w.sent) < n {
		w.sent = append(w.sent, make([]time.Time, n-len(w.sent))...)
	}
	w.sent[i] = t
}

// waveFor returns the wave state of digest, created when missing.
func (dl *delivery) waveFor(digest string) *waveState {
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	w := dl.waves[digest]
	if w == nil {
		w = newWaveState()
		dl.waves[digest] = w
	}
	return w
}

// waveAhead returns the positions (imageData.posOf) a wave of digest
// will still broadcast: from the pass in flight's next one to its end,
// every position while a wave is held (for at most WaveHold), or none
// when no wave is in flight or held. Requests for those chunks are
// answered by the wave, not by unicast or repair.
//
// The first request for the image of a running campaign that has no
// wave yet starts the hold (once per image): the leader may still be
// notifying the campaign's devices, and chunks sent now would only slow
// the notices down on the same connection and broker.
func (dl *delivery) waveAhead(digest string) span {
	now := dl.cfg.Clock.Now()
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	w := dl.waves[digest]
	if (w == nil || (w.started.IsZero() && !w.held)) && dl.waveComing(digest) {
		if w == nil {
			w = newWaveState()
			dl.waves[digest] = w
		}
		w.held = true
		if w.due.IsZero() {
			w.due = now
		}
	}
	if w == nil {
		return span{}
	}
	if !w.due.IsZero() && !w.running && now.Sub(w.due) < dl.cfg.WaveHold {
		return span{0, math.MaxInt64}
	}
	return span{w.next.Load(), w.end.Load()}
}

// waveComing reports whether a running campaign of digest has at least
// BroadcastMin devices notified or downloading, so that the leader will
// start a wave of it.
func (dl *delivery) waveComing(digest string) bool {
	for _, id := range dl.camps.campaignIDs() {
		c, ok := dl.camps.campaign(id)
		if !ok || c.Image != digest || c.State != CampaignRunning {
			continue
		}
		n, _ := dl.camps.counts(id)
		if int(n[countPending]+n[countDownloading]) >= dl.cfg.BroadcastMin {
			return true
		}
	}
	return false
}

// wave broadcasts every chunk of the image once on its chunk topic (QoS 0),
// paced, in carousel order: a coded image's blocks interleaved
// (blockcode.Order), so that a burst of losses spreads over its blocks;
// a marker (schemas.WaveEnd) ends it. When at least BroadcastMin devices
// joined while it flowed (they were sent the chunk table, or asked for
// it by wave, and listen from there on), the carousel goes round again
// from its start, as far as the one that joined last missed, with a
// marker of its own: a late joiner takes the wave where it is and
// completes from that pass, not from a second whole wave nor a unicast
// stream of its own; at most maxPasses passes. It blocks until the wave
// is sent or ctx ends. While it runs, requests for chunks the pass in
// flight has still to send are left to it.
func (dl *delivery) wave(ctx context.Context, digest string) error {
	d, err := dl.images.loadImage(ctx, digest)
	if err != nil {
		return err
	}
	t, err := dl.cfg.Topics.Chunks(digest)
	if err != nil {
		return err
	}
	w := dl.waveFor(digest)
	dl.waveMu.Lock()
	if w.started.IsZero() { // a wave asked for by hand
		w.started = dl.cfg.Clock.Now()
	}
	// Parity chunks of earlier waves are fresh to this wave's devices.
	w.spent = nil
	// Repair batches wait for the wave's end (flowing).
	fl := make(chan struct{})
	w.flowing = fl
	dl.waveMu.Unlock()
	defer func() {
		dl.waveMu.Lock()
		if w.flowing == fl {
			w.flowing = nil
		}
		w.flowEnd = time.Now()
		dl.waveMu.Unlock()
		close(fl)
	}()
	defer w.next.Store(math.MaxInt64)
	var ec *echo
	if dl.cfg.WaveEcho > 0 {
		var stop func()
		if ec, stop, err = dl.followEcho(ctx, t, d); err != nil {
			dl.log.Warn("wave without echo pacing", "image", digest, "err", err)
			ec = nil
		} else {
			defer stop()
		}
	}
	var wp *wavePace
	if dl.cfg.WavePace > 0 {
		wp = newWavePace(dl.cfg.WavePace, int(max(4*int64(d.info.ChunkSize), 64<<10)))
		wp.log = dl.log.With("image", digest)
		dl.waveMu.Lock()
		w.pace = wp
		dl.waveMu.Unlock()
		defer func() {
			dl.waveMu.Lock()
			w.pace = nil
			dl.waveMu.Unlock()
		}()
	}
	n := len(d.table.Hashes)
	// The wave makes the image's parity as it sends the chunks, for the
	// repair rounds after it.
	acc := dl.parity.stream(d)
	defer acc.finish()
	cr := dl.images.newChunkReader(ctx, d, min(readAheadChunks(waveReadAhead, d.info.ChunkSize), waveReads))
	cr.order = d.order // a coded image's blocks interleaved
	cr.eager = true
	defer cr.close()
	defer w.end.Store(math.MaxInt64)
	to := n
	for pass := 1; ; pass++ {
		dl.waveMu.Lock()
		w.joiners, w.joinTo = 0, 0
		if pass > 1 {
			// Devices that join from here on are this pass's.
			w.started = dl.cfg.Clock.Now()
		}
		dl.waveMu.Unlock()
		w.next.Store(0)
		w.end.Store(int64(to))
		t0, sent0 := time.Now(), dl.egress.Wave.Load()
		if err := dl.wavePass(ctx, t, d, w, cr, ec, wp, acc, to, pass == 1); err != nil {
			return err
		}
		dl.met.waves.Inc()
		dl.waveMu.Lock()
		joiners, joinTo := w.joiners, w.joinTo
		if secs := time.Since(t0).Seconds(); to >= minRatePass && secs > 0 {
			w.passRate = float64(dl.egress.Wave.Load()-sent0) / secs
		}
		dl.waveMu.Unlock()
		dl.log.Debug("wave pass sent", "image", digest, "pass", pass, "chunks", to, "seconds", time.Since(t0).Seconds(), "joiners", joiners)
		// Devices that joined while the pass flowed listen now: the next
		// pass carries, from the carousel's start, what the one that
		// joined last missed, instead of a whole wave for a few late
		// joiners (or each asking for it). Fewer than BroadcastMin
		// complete by repair.
		if pass >= maxPasses || joiners < max(dl.cfg.BroadcastMin, 1) || joinTo <= 0 {
			return nil
		}
		to = int(min(joinTo, int64(n)))
		if ec != nil {
			// The next pass's positions start again from 0: let the echo
			// of this one come back first.
			if err := ec.wait(ctx, int64(n-1)); err != nil {
				return err
			}
			ec.got.Store(-1)
		}
	}
}

// wavePass broadcasts positions [0, to) of d's carousel on t, with the
// chunk table copies, paced by ec and wp when set, then the marker that
// ends it. The first pass of a wave waits, after its first table copy,
// for the devices to take it (awaitReady).
func (dl *delivery) wavePass(ctx context.Context, t schemas.Topic, d *imageData, w *waveState, cr *chunkReader, ec *echo, wp *wavePace, acc *parityAcc, to int, first bool) error {
	n := d.chunks()
	digest := d.info.Digest
	// Where the pass spent its time, for the debug log, by index: the
	// echo, the store's reads, the pace, the sends, the table copies,
	// the parity coding and encoding, the marking as broadcast.
	var waited [7]time.Duration
	lap := func(k int, t0 time.Time) time.Time {
		now := time.Now()
		waited[k] += now.Sub(t0)
		return now
	}
	if dl.log.Enabled(ctx, slog.LevelDebug) {
		defer func() {
			dl.log.Debug("wave pass waits", "image", digest, "chunks", to, "echo_s", waited[0].Seconds(), "read_s", waited[1].Seconds(), "pace_s", waited[2].Seconds(), "send_s", waited[3].Seconds(), "table_s", waited[4].Seconds(), "code_s", waited[5].Seconds(), "mark_s", waited[6].Seconds())
		}()
	}
	for s := range to {
		i := d.at(s)
		t0 := time.Now()
		if s%tableEvery == 0 {
			if err := dl.castTable(ctx, t, d, w); err != nil {
				return fmt.Errorf("publisher: wave %s table: %w", digest, err)
			}
			if s == 0 && first {
				if err := dl.awaitReady(ctx, w, digest); err != nil {
					return err
				}
			}
		}
		t0 = lap(4, t0)
		if burst := dl.cfg.WaveBurst; ec != nil && s%burst == 0 {
			if err := ec.wait(ctx, int64(s+burst-1-dl.cfg.WaveEcho)); err != nil {
				return err
			}
		}
		t0 = lap(0, t0)
		w.next.Store(int64(s))
		data, err := cr.get(s)
		if err != nil {
			return fmt.Errorf("publisher: wave %s: %w", digest, err)
		}
		t0 = lap(1, t0)
		acc.add(i, data)
		b, err := encodeChunkData(d, i, data)
		if err != nil {
			return err
		}
		t0 = lap(5, t0)
		if wp != nil {
			if err := wp.wait(ctx, len(b)); err != nil {
				return err
			}
		}
		t0 = lap(2, t0)
		if err := dl.send(ctx, t, b, &dl.egress.Wave, "wave"); err != nil {
			return fmt.Errorf("publisher: wave %s chunk %d: %w", digest, i, err)
		}
		t0 = lap(3, t0)
		dl.waveMu.Lock()
		w.broadcastAt(i, n, time.Now())
		dl.waveMu.Unlock()
		lap(6, t0)
	}
	// The broker delivers a topic's messages in order: a chunk is on its
	// way until the pass's last one is, so all count as broadcast now.
	if dl.cfg.InTransit > 0 {
		dl.waveMu.Lock()
		now := time.Now()
		for s := range to {
			w.broadcastAt(d.at(s), n, now)
		}
		dl.waveMu.Unlock()
	}
	if err := dl.endWave(ctx, t, d, w, sentRanges(d, to)); err != nil {
		return fmt.Errorf("publisher: wave %s end marker: %w", digest, err)
	}
	return nil
}

// sentRanges returns the chunks at positions [0, to) of d's carousel as
// sorted, disjoint runs of chunk indexes, for a WaveEnd marker; when
// they would be more than schemas.MaxRanges, the one run that spans
// them.
func sentRanges(d *imageData, to int) []schemas.Range {
	idx := make([]int, 0, to)
	for s := range to {
		idx = append(idx, d.at(s))
	}
	slices.Sort(idx)
	var out []schemas.Range
	for _, i := range idx {
		if k := len(out) - 1; k >= 0 && int(out[k].First+out[k].Count) == i {
			out[k].Count++
			continue
		}
		out = append(out, schemas.Range{First: uint32(i), Count: 1})
	}
	if len(out) > schemas.MaxRanges {
		last := out[len(out)-1]
		out = []schemas.Range{{First: out[0].First, Count: last.First + last.Count - out[0].First}}
	}
	return out
}

// endWave broadcasts the marker that ends a wave of d on t, naming the
// chunks it carried: devices, quiet while the wave flows, send their loss
// summaries after it.
func (dl *delivery) endWave(ctx context.Context, t schemas.Topic, d *imageData, w *waveState, sent []schemas.Range) error {
	dl.waveMu.Lock()
	w.ended++
	seq := w.ended
	w.waveMark = seq
	dl.waveMu.Unlock()
	return dl.sendEnd(ctx, t, d, seq, sent)
}

// sendEnd broadcasts end marker seq of d on t (endWave; a repair round
// numbers its marker as it logs itself, see repairCoded).
func (dl *delivery) sendEnd(ctx context.Context, t schemas.Topic, d *imageData, seq uint32, sent []schemas.Range) error {
	b, err := schemas.Encode(&schemas.WaveEnd{V: schemas.Version, Image: d.digest, Wave: seq, Sent: sent})
	if err != nil {
		return err
	}
	return dl.send(ctx, t, b, &dl.egress.Wave, "wave_end")
}

// castTable broadcasts a copy of d's chunk table on the wave's topic t,
// and of its plain table too when d is coded and a device of delivery
// protocol 1 waits for a table by wave. Every wave carries copies (a few
// table sizes, under 1% of the image), whichever instance answered the
// devices' table requests.
func (dl *delivery) castTable(ctx context.Context, t schemas.Topic, d *imageData, w *waveState) error {
	if err := dl.send(ctx, t, d.tableBytes, &dl.egress.Wave, "wave_table"); err != nil {
		return err
	}
	dl.waveMu.Lock()
	w.casts++
	w.castTimes = append(w.castTimes, time.Now())
	plain := w.plainWanted && d.table.Coded()
	dl.waveMu.Unlock()
	if !plain {
		return nil
	}
	pb, err := dl.plainTableBytes(d)
	if err != nil {
		return err
	}
	if err := dl.send(ctx, t, pb, &dl.egress.Wave, "wave_table"); err != nil {
		return err
	}
	dl.waveMu.Lock()
	w.plainCasts++
	w.plainCastTimes = append(w.plainCastTimes, time.Now())
	dl.waveMu.Unlock()
	return nil
}

// awaitReady holds a wave's first chunk, after its first chunk table
// copy, until every device the wave is for (downloading as it started)
// reported since (observeReady), for at most Config.WaveReady. A device
// takes the table from the wave, then checks it, records it, picks its
// source and reports that decision before its fetch takes chunks: on a
// host simulating 500 devices that took them 0.4 to 0.7 s while the wave
// flowed. (Measured there, waiting for them did not lower the process's
// RSS peak, which still built in the wave's first seconds, and the
// staged time moved within the runs' spread: docs/BENCHMARKS.md.)
// Devices that never report (a publisher instance that sees a share of
// them, an agent gone) cost the wait's bound, once per wave. The count
// is taken once: a wave started by hand waits for nobody.
func (dl *delivery) awaitReady(ctx context.Context, w *waveState, digest string) error {
	if dl.cfg.WaveReady <= 0 {
		return nil
	}
	dl.waveMu.Lock()
	want := w.readyWant
	if want <= 0 {
		dl.waveMu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	w.ready, w.readyCh = make(map[string]struct{}, want), ch
	dl.waveMu.Unlock()
	start := time.Now()
	t := time.NewTimer(dl.cfg.WaveReady)
	defer t.Stop()
	var err error
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	dl.waveMu.Lock()
	got := len(w.ready)
	w.ready, w.readyCh, w.readyWant = nil, nil, 0
	dl.waveMu.Unlock()
	dl.log.Debug("wave ready", "image", digest, "devices", got, "want", want, "seconds", time.Since(start).Seconds())
	return err
}

// observeReady counts a downloading report of a device of a campaign
// whose image's wave waits for its devices (awaitReady). Called by the
// report handler, after the report's topic was checked against its
// device.
func (dl *delivery) observeReady(r *schemas.DeviceReport) {
	if dl.cfg.WaveReady <= 0 || r.State != schemas.StateDownloading || r.Campaign == "" {
		return
	}
	c, ok := dl.camps.campaign(r.Campaign)
	if !ok {
		return
	}
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	w := dl.waves[c.Image]
	if w == nil || w.readyCh == nil {
		return
	}
	w.ready[r.Device] = struct{}{}
	if len(w.ready) == w.readyWant {
		close(w.readyCh)
		w.readyCh = nil // awaitReady holds its own copy
	}
}

// answerTable answers the table request r: in the wave when the device
// listens on the broadcast topic and a wave is held or flowing (see
// tableByWave), otherwise by unicast.
func (dl *delivery) answerTable(ctx context.Context, digest string, d *imageData, r *schemas.ChunkRequest) error {
	if r.Listening && dl.tableByWave(digest, r.Requester, d.chunks(), d.table.Coded() && !speaksCoded(r.DeliveryProtocol())) {
		dl.met.chunkRequests.WithLabelValues("table-by-wave").Inc()
		return nil
	}
	return dl.sendTable(ctx, digest, d, r)
}

// tableByWave records that dev, listening on the broadcast topic, asked
// for the table of digest, and reports whether a wave will bring it: a
// wave is held or flowing, and no copy has been broadcast since dev
// first asked (a device asking again after one was missed every copy).
// Recorded like a table sent (waveState.tables), so the device counts
// as gathered for the wave. plain: dev takes the plain table of a coded
// image (delivery protocol 1), so waves carry copies of it from now on.
func (dl *delivery) tableByWave(digest, dev string, n int, plain bool) bool {
	ahead := dl.waveAhead(digest)
	now := dl.cfg.Clock.Now()
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	w := dl.waves[digest]
	if w == nil || (ahead.none() && !w.running) {
		return false // no wave coming
	}
	casts, times := w.casts, w.castTimes
	if plain {
		w.plainWanted = true
		casts, times = w.plainCasts, w.plainCastTimes
	}
	if at, ok := w.castAtJoin[dev]; ok && missedCopies(at, casts, times, time.Now(), tableCrossing(dl.cfg)) {
		return false
	}
	if w.tables == nil {
		w.tables = map[string]time.Time{}
	}
	if w.castAtJoin == nil {
		w.castAtJoin = map[string]int{}
	}
	if _, ok := w.tables[dev]; !ok {
		w.tables[dev] = now
		w.joined(n)
	}
	if _, ok := w.castAtJoin[dev]; !ok {
		w.castAtJoin[dev] = casts
	}
	w.lastTable = now
	return true
}

// missedCopies reports whether a device that asked for the table when
// at copies had been broadcast, asking again now that casts have (times:
// when each went out), missed every copy since: one went out, the first
// more than crossing ago, time enough to have reached it. A request that
// crossed a copy still on its way (a retry as the wave starts) is not.
func missedCopies(at, casts int, times []time.Time, now time.Time, crossing time.Duration) bool {
	return casts > at && at < len(times) && now.Sub(times[at]) > crossing
}

// seenCrossing is how far back a round whose end marker a requester has
// not heard (ChunkRequest.Seen) counts as still on its way to it: at 500
// devices on NATS, a round sent in 0.35 s reached devices behind in their
// queues 2 s later, and their summaries, sent before it reached them,
// drew a second round of the first one's size. A marker lost instead
// costs the requester one idle period: the round is counted once
// (waveState.discounted).
const seenCrossing = 10 * time.Second

// tableCrossing is how long after a table copy was broadcast a device
// asking for the table again may not have received it yet: the larger of
// Config.InTransit and a second.
func tableCrossing(c Config) time.Duration { return max(c.InTransit, time.Second) }

// echo follows a wave coming back on the broadcast chunk topic, which the
// publisher subscribes to while it sends: what came back the broker has
// handed to every subscriber, so the distance between what was sent and
// what came back is what the broker still holds (ack clocking).
type echo struct {
	got  atomic.Int64 // highest chunk index come back, -1 before any
	wake chan struct{}
	off  bool // pacing given up: nothing came back for echoStall
}

// echoStall is how long a wave waits for its echo to move before it goes
// on without pacing (a broker that does not echo, a lost subscription).
const echoStall = 2 * time.Second

func (dl *delivery) followEcho(ctx context.Context, t schemas.Topic, d *imageData) (*echo, func(), error) {
	ec := &echo{wake: make(chan struct{}, 1)}
	ec.got.Store(-1)
	// Inline: the handler only raises a counter, and the wave waits on
	// it; through the subscription's own queue and goroutine each echo
	// also waited for that goroutine to be scheduled (the bench's
	// process of 500 devices has a p99 scheduling latency of 0.34 to
	// 0.47 s, docs/BENCHMARKS.md).
	sub, err := dl.cfg.Transport.Subscribe(ctx, t, func(_ context.Context, m broker.Message) {
		var c schemas.Chunk
		if schemas.DecodeChunkView(m.Payload, &c) != nil || !bytes.Equal(c.Image, d.digest) || int(c.Index) >= d.chunks() {
			return
		}
		s := d.posOf(int(c.Index)) // the wave's position: chunks go in carousel order
		for {
			g := ec.got.Load()
			if s <= g || ec.got.CompareAndSwap(g, s) {
				break
			}
		}
		select {
		case ec.wake <- struct{}{}:
		default:
		}
	}, broker.SubscribeOptions{Family: broker.FamilyChunk, Inline: true})
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = sub.Unsubscribe(uctx)
	}
	return ec, stop, nil
}

// wait blocks until chunk k came back, ctx ends, or the echo stalls for
// echoStall (then it stops pacing for the rest of the wave).
func (ec *echo) wait(ctx context.Context, k int64) error {
	if ec.off || k < 0 {
		return nil
	}
	var stall *time.Timer
	for ec.got.Load() < k {
		if stall == nil {
			stall = time.NewTimer(echoStall)
			defer stall.Stop()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ec.wake:
			stall.Reset(echoStall) // Go 1.23 timers: no stale tick to drain
		case <-stall.C:
			ec.off = true
			return nil
		}
	}
	return nil
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

// repairBatch collects the chunk requests of one image during a repair
// window.
type repairBatch struct {
	reqs  map[string]*schemas.ChunkRequest // by requester: the latest
	timer bool
	// start is when the batch's first request was taken (monotonic):
	// chunks broadcast since then reach its requesters without a repair.
	start time.Time
	// waveEnd, when set, is when the wave the batch waited for ended
	// (see batch); at holds when each request was taken. The requests of
	// such a batch span the wave, so each crosses what was broadcast
	// after it was taken (the wave's rest for one taken mid-wave), not
	// after the batch's first.
	waveEnd time.Time
	at      map[string]time.Time
	// mid holds whether each request was taken while this instance's
	// wave of the image flowed (see midWave).
	mid map[string]bool
}

// midWave reports whether who's request r in the batch is to be left
// unanswered as one sent while this instance's last wave of the image
// flowed (w, under waveMu): the device had not heard the wave's end
// marker (r.Seen is earlier than w.waveMark), and the request came while
// the wave flowed (flagged as it came, in handleChunkRequest, not as a
// chunk server took it).
//
// A coded device (delivery protocol 2) asks mid-wave only after a pause
// in the wave, and names what it has not received by then; but on a
// loaded broker the wave's chunks reach a device seconds after they were
// sent (at N = 500 on mosquitto, 155 devices stalled for 4 s asked for
// 64 chunks each that the wave then brought them, and a repair round of
// 116 parity chunks answered them all). What the device really lost it
// names in the loss summary the end marker brings (its mid-wave request
// then outstanding, see fetcher), which replaces this request in the
// batch or comes in the next.
func (b *repairBatch) midWave(who string, r *schemas.ChunkRequest, w *waveState) bool {
	return b.mid[who] && r.Seen < w.waveMark
}

// since returns from when on a broadcast crossed who's request (less
// InTransit).
func (b *repairBatch) since(who string, inTransit time.Duration) time.Time {
	t := b.start
	if a, ok := b.at[who]; ok && !b.waveEnd.IsZero() {
		t = a
	}
	return t.Add(-inTransit)
}

func (dl *delivery) chunkServer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-dl.chunkQ:
			if dl.cfg.RepairWindow <= 0 {
				dl.serve(ctx, &q.r)
				continue
			}
			dl.batchTaken(ctx, q.r, q.flowing)
		}
	}
}

// replyTopic is the chunk reply topic of r's requester: the device the
// request's topic named (handleChunkRequest), never r.ReplyTo.
func (dl *delivery) replyTopic(r *schemas.ChunkRequest) (schemas.Topic, error) {
	return dl.cfg.Topics.ChunkReply(r.Requester)
}

func (dl *delivery) serve(ctx context.Context, r *schemas.ChunkRequest) {
	digest := hex.EncodeToString(r.Image)
	d, err := dl.images.loadImage(ctx, digest)
	if err != nil {
		dl.met.chunkRequests.WithLabelValues("unknown-image").Inc()
		return
	}
	if r.ChunkSize != d.info.ChunkSize {
		dl.met.chunkRequests.WithLabelValues("wrong-chunk-size").Inc()
		return
	}
	rt, err := dl.replyTopic(r)
	if err != nil {
		return
	}
	dl.met.chunkRequests.WithLabelValues("served").Inc()
	if r.WantTable && dl.answerTable(ctx, digest, d, r) != nil {
		return
	}
	ahead := dl.waveAhead(digest)
	wl := slices.DeleteFunc(wanted(r, len(d.table.Hashes)), func(i int) bool {
		return ahead.has(d.posOf(i)) // the wave in flight still sends it
	})
	for _, i := range dl.affordable(r, d, wl) {
		b, err := dl.encodeChunk(ctx, d, i)
		if err != nil {
			return
		}
		if err := dl.send(ctx, rt, b, &dl.egress.Unicast, "unicast"); err != nil {
			return
		}
	}
}

// sendTable sends the chunk table of r's delivery protocol (tableFor) to
// r's requester, within its budget, and records it: a device subscribes
// to the broadcast chunk topic right after. Only the first table a device
// is sent counts it as joined (see waveState.tables), so asking again
// cannot bring another wave about.
func (dl *delivery) sendTable(ctx context.Context, digest string, d *imageData, r *schemas.ChunkRequest) error {
	rt, err := dl.replyTopic(r)
	if err != nil {
		return err
	}
	tb, err := dl.tableFor(d, r.DeliveryProtocol())
	if err != nil {
		return err
	}
	if !dl.charge(r, d, len(tb)) {
		return errOverBudget
	}
	if err := dl.send(ctx, rt, tb, &dl.egress.Unicast, "table"); err != nil {
		return err
	}
	dl.egress.Table.Add(int64(len(tb)))
	w := dl.waveFor(digest)
	now := dl.cfg.Clock.Now()
	dl.waveMu.Lock()
	if w.tables == nil {
		w.tables = map[string]time.Time{}
	}
	if _, ok := w.tables[r.Requester]; !ok {
		w.tables[r.Requester] = now
		w.joined(d.chunks())
	}
	w.lastTable = now
	dl.waveMu.Unlock()
	return nil
}

// errOverBudget: the requester used up its byte budget (see charge).
var errOverBudget = errors.New("publisher: device over its chunk request budget")

// batch answers a table request at once (the device waits for it before
// it listens) and adds the chunks asked for to the image's repair batch,
// flushed RepairWindow after its first request.
func (dl *delivery) batch(ctx context.Context, r schemas.ChunkRequest) {
	dl.batchTaken(ctx, r, dl.flowing(hex.EncodeToString(r.Image)) != nil)
}

// batchTaken is batch for a request that came while this instance's
// wave of its image flowed, or not (flowing; see repairBatch.midWave).
func (dl *delivery) batchTaken(ctx context.Context, r schemas.ChunkRequest, flowing bool) {
	digest := hex.EncodeToString(r.Image)
	if r.WantTable {
		d, err := dl.images.loadImage(ctx, digest)
		if err != nil {
			dl.met.chunkRequests.WithLabelValues("unknown-image").Inc()
			return
		}
		if r.ChunkSize != d.info.ChunkSize {
			dl.met.chunkRequests.WithLabelValues("wrong-chunk-size").Inc()
			return
		}
		if dl.answerTable(ctx, digest, d, &r) != nil {
			return
		}
		r.WantTable = false
		if len(r.Bitmap) == 0 && len(r.Ranges) == 0 {
			dl.met.chunkRequests.WithLabelValues("served").Inc()
			return
		}
	}
	dl.repairMu.Lock()
	b := dl.repairs[digest]
	if b == nil {
		b = &repairBatch{reqs: map[string]*schemas.ChunkRequest{}, at: map[string]time.Time{}, mid: map[string]bool{}, start: time.Now()}
		dl.repairs[digest] = b
	}
	b.reqs[r.Requester] = &r
	b.at[r.Requester] = time.Now()
	b.mid[r.Requester] = flowing
	start := !b.timer
	b.timer = true
	dl.repairMu.Unlock()
	if !start {
		return
	}
	dl.wg.Add(1)
	go func() {
		defer dl.wg.Done()
		t := time.NewTimer(dl.cfg.RepairWindow)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A batch that began while this instance's wave of the image
		// flows waits for the wave's end, then RepairWindow more: its
		// requesters lost chunks the wave had passed (a device asks
		// mid-wave only for those, fetcher's WaveGap), and the loss
		// summaries the wave's end marker brings join the batch, so the
		// round after the wave answers them all. A round sent beside the
		// wave took its bandwidth, and every device kept its parity
		// until its blocks were complete.
		if fl := dl.flowing(digest); fl != nil {
			dl.repairMu.Lock()
			dl.met.chunkRequests.WithLabelValues("after-wave").Add(float64(len(b.reqs)))
			dl.repairMu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-fl:
			}
			dl.repairMu.Lock()
			b.waveEnd = time.Now()
			dl.repairMu.Unlock()
			t.Reset(dl.cfg.RepairWindow)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		// One round of an image at a time: requests that come while
		// the previous one is going out join this batch, and its needs
		// are read after that round is sent.
		fl := dl.flusher(digest)
		select {
		case fl <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-fl }()
		dl.repairMu.Lock()
		b := dl.repairs[digest]
		delete(dl.repairs, digest)
		dl.repairMu.Unlock()
		dl.flushRepair(ctx, digest, b)
	}()
}

// flowing returns the channel closed when this instance's wave of
// digest in flight ends, nil when none flows.
func (dl *delivery) flowing(digest string) chan struct{} {
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	if w := dl.waves[digest]; w != nil {
		return w.flowing
	}
	return nil
}

// flusher returns the one-slot semaphore that serialises the repair
// rounds of digest.
func (dl *delivery) flusher(digest string) chan struct{} {
	dl.repairMu.Lock()
	defer dl.repairMu.Unlock()
	if dl.flushing == nil {
		dl.flushing = map[string]chan struct{}{}
	}
	fl, ok := dl.flushing[digest]
	if !ok {
		fl = make(chan struct{}, 1)
		dl.flushing[digest] = fl
	}
	return fl
}

// flushRepair broadcasts the chunks at least RepairBroadcastMin requesters
// asked for and sends the others to each requester. Chunks a wave has
// still to send, and chunks broadcast since the batch began (the requests
// crossed them), are left out: they reach the requesters anyway, and what
// is lost is asked for again.
func (dl *delivery) flushRepair(ctx context.Context, digest string, b *repairBatch) {
	d, err := dl.images.loadImage(ctx, digest)
	if err != nil {
		dl.met.chunkRequests.WithLabelValues("unknown-image").Add(float64(len(b.reqs)))
		return
	}
	n := len(d.table.Hashes)
	askers := make(map[int]int)
	per := make(map[string][]int)
	ahead := dl.waveAhead(digest)
	w := dl.waveFor(digest)
	dl.waveMu.Lock()
	superseded := 0
	for who, r := range b.reqs {
		if r.ChunkSize != d.info.ChunkSize {
			continue
		}
		if speaksCoded(r.DeliveryProtocol()) && b.midWave(who, r, w) {
			superseded++
			continue
		}
		since := b.since(who, dl.cfg.InTransit)
		crossed := func(i int) bool { return i < len(w.sent) && w.sent[i].After(since) }
		per[who] = slices.DeleteFunc(wanted(r, n), func(i int) bool { return ahead.has(d.posOf(i)) || crossed(i) })
	}
	flowEnd, mark := w.flowEnd, w.waveMark
	dl.waveMu.Unlock()
	if superseded > 0 {
		dl.met.chunkRequests.WithLabelValues("mid-wave").Add(float64(superseded))
	}
	if dl.log.Enabled(ctx, slog.LevelDebug) && !flowEnd.IsZero() {
		// How the batch's requests stand to the wave's end: those
		// left as mid-wave, and those of devices that had not heard its
		// marker taken after it (late on their way, or the marker lost).
		var after []float64
		for who, r := range b.reqs {
			if at, ok := b.at[who]; ok && !b.mid[who] && r.Seen < mark && at.After(flowEnd) {
				after = append(after, at.Sub(flowEnd).Seconds())
			}
		}
		slices.Sort(after)
		dl.log.Debug("repair batch", "image", digest, "requests", len(b.reqs), "mid_wave", superseded, "unheard_after_end", len(after), "after_s", after[:min(len(after), 8)])
	}
	// What each requester is sent, by unicast or in a re-broadcast it
	// asked for, is taken from its budget; what does not fit is left out.
	for who, wl := range per {
		per[who] = dl.affordable(b.reqs[who], d, wl)
	}
	bt, _ := dl.cfg.Topics.Chunks(digest)
	if d.table.Coded() {
		// Parity repairs only the requesters that speak coded repair;
		// those of delivery protocol 1 (plain table, parity dropped
		// unread) are repaired by chunks below, in the same batch.
		coded := make(map[string][]int, len(per))
		for who, wl := range per {
			if speaksCoded(b.reqs[who].DeliveryProtocol()) {
				coded[who] = wl
			}
		}
		if len(coded) > 0 {
			// Parity rounds: those since the batch began, or, for a batch
			// that waited for a wave (no round of this image went out
			// beside it), since the wave ended.
			since := b.start
			if !b.waveEnd.IsZero() {
				since = b.waveEnd
			}
			if err := dl.repairCoded(ctx, d, w, bt, coded, b.reqs, since); err != nil {
				if ctx.Err() == nil {
					dl.log.Warn("coded repair", "image", digest, "err", err)
				}
				return
			}
			maps.Copy(per, coded)
		}
	}
	for _, wl := range per {
		for _, i := range wl {
			askers[i]++
		}
	}
	for i := 0; i < n; i++ {
		if askers[i] < dl.cfg.RepairBroadcastMin {
			continue
		}
		cb, err := dl.encodeChunk(ctx, d, i)
		if err != nil || dl.send(ctx, bt, cb, &dl.egress.Repair, "repair") != nil {
			return
		}
		dl.waveMu.Lock()
		w.broadcastAt(i, n, time.Now())
		dl.waveMu.Unlock()
	}
	// As for a wave: each chunk is on its way until the last one is.
	if dl.cfg.InTransit > 0 {
		dl.waveMu.Lock()
		end := time.Now()
		for i, k := range askers {
			if k >= dl.cfg.RepairBroadcastMin {
				w.broadcastAt(i, n, end)
			}
		}
		dl.waveMu.Unlock()
	}
	for who, wl := range per {
		r := b.reqs[who]
		rt, err := dl.replyTopic(r)
		if err != nil {
			continue
		}
		for _, i := range wl {
			if askers[i] >= dl.cfg.RepairBroadcastMin {
				continue
			}
			cb, err := dl.encodeChunk(ctx, d, i)
			if err != nil || dl.send(ctx, rt, cb, &dl.egress.Unicast, "unicast") != nil {
				return
			}
		}
	}
	dl.met.chunkRequests.WithLabelValues("served").Add(float64(len(per)))
}

// parityCacheBytes bounds the parity chunks a publisher keeps
// (parityCache): 64 MiB holds the parity of 256 MiB of image at the
// default K = 128, P = 32.
const parityCacheBytes = 64 << 20

// repairCoded is the coded part of a repair batch of the coded image d:
// per holds the chunks each requester lacks (and is charged for). It
// counts per block what each lacks and broadcasts, per block, as many
// fresh parity chunks as the requester lacking most in it lacks, while
// the block's committed parity lasts (blockcode.Round; blocks
// interleaved). A parity chunk repairs whichever chunks of its block a
// device lost, so one such round serves every requester that hears it.
// It leaves in per, for the uncoded repair, what the round's parity
// cannot rebuild for each requester: in a block whose parity is spent
// (or falls short this round), what it is owed beyond the fresh parity;
// and what it lacks beyond all of the block's parity. It returns an
// error when reading the image or sending fails; the parity indices
// handed out stay spent (the next round goes on from them).
//
// since is when the batch began (or the wave it waited for ended): the
// rounds that crossed a requester's summary are counted from there
// (parityLog.crossed).
func (dl *delivery) repairCoded(ctx context.Context, d *imageData, w *waveState, bt schemas.Topic, per map[string][]int, reqs map[string]*schemas.ChunkRequest, since time.Time) error {
	t := d.table
	nb := int(t.NumBlocks())
	need := make([]int, nb)
	// Parity broadcast since the batch began, or just before (still on
	// its way to devices behind in their queues), covers that many of a
	// requester's losses in its block: its summary crossed the round
	// (parityLog.crossed).
	//
	// A requester that names the last end marker it heard
	// (ChunkRequest.Seen) is crossed by the rounds whose marker came
	// after it, from seenCrossing back: it has not heard their end, so
	// they are still on their way to it (a device behind a loaded broker
	// took a round's parity seconds after it went), or their marker was
	// lost. One that names none is crossed by the rounds that ended
	// within tableCrossing of the batch. Either way a round is counted
	// once per requester (waveState.discounted): should the requester ask
	// again with nothing more heard, its marker was lost, and what the
	// round left it short of is answered.
	crossed := make(map[string][]int, len(per))
	dl.waveMu.Lock()
	if w.discounted == nil {
		w.discounted = map[string]uint32{}
	}
	for who := range per {
		r := reqs[who]
		from, floor := since.Add(-tableCrossing(dl.cfg)), w.discounted[who]
		if r.Seen > 0 {
			from, floor = since.Add(-seenCrossing), max(floor, r.Seen)
		}
		var top uint32
		crossed[who], top = w.parityLog.crossed(from, floor, nb)
		w.discounted[who] = max(w.discounted[who], top)
	}
	dl.waveMu.Unlock()
	reported := 0
	// lack holds, by requester, per block, the chunks it lacks (its
	// summary's count), and owed the count less the parity on its way
	// to it (crossed): what this round's parity is to cover.
	lack := make(map[string][]int, len(per))
	owed := make(map[string][]int, len(per))
	for who, wl := range per {
		l := make([]int, nb)
		reported += len(wl)
		for _, i := range wl {
			l[t.BlockOf(uint32(i))]++
		}
		o := make([]int, nb)
		cr := crossed[who]
		for b := range nb {
			o[b] = max(0, l[b]-cr[b])
			need[b] = max(need[b], o[b])
		}
		lack[who], owed[who] = l, o
	}
	if dl.log.Enabled(ctx, slog.LevelDebug) {
		// Each summary, with where in the carousel its losses lie: a
		// device that lacks a wave's first positions heard it late.
		for who, wl := range per {
			first, last := d.span(wl)
			var seen uint32
			if r := reqs[who]; r != nil {
				seen = r.Seen
			}
			dl.log.Debug("loss summary", "image", d.info.Digest, "device", who, "lack", lack[who], "owed", owed[who], "seen", seen, "first_pos", first, "last_pos", last)
		}
	}
	// The first round after a wave is sized for the fleet, not only for
	// the few that spoke first (firstRoundNeed), at the rate the
	// requesters whose losses are scattered over the carousel lost
	// chunks at (fleetLack).
	dl.waveMu.Lock()
	if silent := len(w.tables) - len(per); w.waveMark > 0 && w.ended == w.waveMark && len(per) >= firstRoundMin && silent > 0 {
		need = firstRoundNeed(t, need, lossRate(t, fleetLack(d, per, lack)), silent)
	}
	dl.waveMu.Unlock()
	// The round is lost at the rate the requesters lost chunks (their
	// reports' share of the image): sized exactly, it leaves the devices
	// whose need is near the neediest's short by the parity it lost, and
	// each of them costs a round trip more. Twice the expected loss of
	// the round's own parity goes with it. Only for a batch large enough
	// for the rate to mean something (minRateBatch requesters).
	if n := len(per) * int(t.NumChunks()); len(per) >= minRateBatch && n > 0 {
		lossRate := float64(reported) / float64(n)
		for b := range nb {
			if need[b] > 0 {
				need[b] += int(math.Ceil(2 * lossRate * float64(need[b])))
			}
		}
	}
	// Only fresh parity: the committed parity chunks a wave has not sent
	// yet (blockcode.Round). A device's summary counts the chunks it
	// lacks beyond the parity it holds, not which parity that is, so
	// parity sent again (oldest first, blockcode.RoundCycled before
	// 0ad6500) was often parity it held: at N = 500 with 5% loss on NATS,
	// devices that had shed a round took the same 4 to 6 chunks, round
	// after round, for over two minutes (docs/BENCHMARKS.md). Once a
	// block's parity is spent, a requester is sent the source chunks it
	// names instead.
	dl.waveMu.Lock()
	if len(w.spent) != nb {
		w.spent = make([]uint32, nb)
	}
	before := slices.Clone(w.spent)
	send, short := blockcode.Round(t, need, w.spent)
	fresh := make([]int, nb)
	for b := range nb {
		fresh[b] = int(w.spent[b] - before[b])
	}
	wave := max(w.ended, 1)
	dl.waveMu.Unlock()
	// What the round's parity cannot rebuild for a requester is sent to
	// it as source chunks, the first of those it names in the block:
	//   - what it is owed beyond the block's fresh parity in this round
	//     (a spent block: all it is owed);
	//   - what it lacks beyond all of the block's parity, whatever
	//     crossed its summary (taken off, the parity on its way made its
	//     need look covered: one device was sent parity for 273 rounds
	//     until its request budget ran out, docs/BENCHMARKS.md).
	// Chunks two or more requesters keep go by broadcast (flushRepair).
	p := int(t.ParityPerBlock)
	for who, wl := range per {
		keep := make([]int, nb)
		for b := range nb {
			keep[b] = max(owed[who][b]-fresh[b], lack[who][b]-p, 0)
		}
		per[who] = slices.DeleteFunc(wl, func(i int) bool {
			b := t.BlockOf(uint32(i))
			if keep[b] > 0 {
				keep[b]--
				return false
			}
			return true
		})
	}
	if dl.log.Enabled(ctx, slog.LevelDebug) {
		// The first few requesters by name: a round for one or two
		// devices is worth finding in their own logs.
		who := slices.Sorted(maps.Keys(per))
		dl.log.Debug("coded repair round", "image", d.info.Digest, "requesters", len(per), "parity", len(send), "short_blocks", countNonZero(short), "need", need, "first", who[:min(len(who), 3)])
	}
	if len(send) == 0 {
		return nil
	}
	// The announcement first: devices still in their summary back-off
	// hear it and those it covers stay quiet, so it does not wait for
	// the parity (from the cache, or coded from the image's chunks once:
	// up to a second under a fleet's load).
	if err := dl.announce(ctx, d, bt, wave, send); err != nil {
		return err
	}
	read := func(ctx context.Context, i uint32) ([]byte, error) { return dl.images.readChunk(ctx, d, int(i)) }
	t0 := time.Now()
	var coded time.Duration // getting the parity (cached, or coded now)
	defer func() {
		dl.log.Debug("coded repair round sent", "image", d.info.Digest, "parity", len(send), "seconds", time.Since(t0).Seconds(), "parity_s", coded.Seconds())
	}()
	msgs := map[uint32][][]byte{}
	for _, s := range send {
		if _, ok := msgs[s.Block]; ok {
			continue
		}
		m, err := dl.parity.block(ctx, d, s.Block, read)
		if err != nil {
			return err
		}
		msgs[s.Block] = m
	}
	coded = time.Since(t0)
	// At roundPace times the rate the last wave pass went out at (which
	// the echo and the designated receivers paced): a round sent at once
	// reached every device as one burst (500 x a 1 MiB round on NATS,
	// whose clients read on regardless), and the devices whose loops ran
	// last shed it whole and needed a round of their own.
	dl.waveMu.Lock()
	pace := w.passRate
	dl.waveMu.Unlock()
	var lim *rate.Limiter
	if pace > 0 {
		lim = rate.NewLimiter(rate.Limit(roundPace*pace), roundBurst*(int(t.ChunkSize)+chunkOverhead))
	}
	for _, s := range send { // in Round's interleaved order
		m := msgs[s.Block]
		if int(s.Index) >= len(m) {
			return fmt.Errorf("publisher: parity chunk %d of block %d: the block has %d", s.Index, s.Block, len(m))
		}
		if lim != nil {
			if err := lim.WaitN(ctx, min(len(m[s.Index]), lim.Burst())); err != nil {
				return err
			}
		}
		if err := dl.send(ctx, bt, m[s.Index], &dl.egress.Repair, "parity"); err != nil {
			return err
		}
	}
	// The round is logged with the number of its end marker: a device
	// that heard the marker names it (or a later one) in its next summary
	// (ChunkRequest.Seen), and the round is not counted as on its way
	// to it (parityLog.crossed).
	dl.waveMu.Lock()
	w.ended++
	seq := w.ended
	w.parityLog.add(time.Now(), seq, send)
	dl.waveMu.Unlock()
	// The round's end marker, naming the chunks of the blocks it
	// repaired: a device still short sends its summary after it (the
	// broker delivers the topic in order, so what of the round was not
	// lost came before the marker) instead of after a whole Idle.
	return dl.sendEnd(ctx, bt, d, seq, roundRanges(t, send))
}

// firstRoundMin is the fewest requesters whose summaries size the first
// repair round after a wave for the fleet (firstRoundNeed): one or two
// that lost a burst in a fleet that lost nothing else (N = 500 on
// mosquitto and NATS without loss) are no evidence of a rate the rest
// lost at, and sized for it their round took the run's repair to 0.05
// to 0.11 images, most of it parity no device used.
const firstRoundMin = 3

// firstRoundNeed sizes the first repair round after a wave. Its batch
// holds the summaries of the devices that spoke first (the summary
// back-off puts the neediest first, but which device hears the wave's
// end marker first counts as much on a loaded broker): at N = 500 with
// 5% loss on mosquitto, a round sized by the 11 first (at most 9 symbols
// in a block) left most of the fleet, whose neediest lacked about 15,
// uncovered by its announcement, and 357 more summaries came in three
// more rounds (docs/BENCHMARKS.md). So each block's need is raised to
// what the fleet's devices that have not spoken yet (fleet) would need,
// were they to lose chunks at rate (lossRate), independently: the count
// a block of its size exceeds, on such a device, with probability at
// most 1/(fleet x blocks) (a binomial quantile); but to no more than 1.5
// times the largest need any block has in the batch, so that a batch of
// a few devices that shed a burst, in a fleet that lost nothing else,
// does not send parity for 500.
func firstRoundNeed(t *schemas.ChunkTable, need []int, rate float64, fleet int) []int {
	nb := int(t.NumBlocks())
	most := 0
	for _, k := range need {
		most = max(most, k)
	}
	if most == 0 || rate <= 0 || fleet <= 0 || nb == 0 {
		return need
	}
	ceiling := (3*most + 1) / 2
	eps := 1 / float64(fleet*nb)
	out := slices.Clone(need)
	for b := range nb {
		_, count := t.BlockChunks(uint32(b))
		out[b] = max(need[b], min(binomialQuantile(int(count), rate, eps), ceiling))
	}
	return out
}

// fleetLack returns the entries of lack (by requester, per block) of the
// requesters in per (by requester, the chunks it lacks) whose losses are
// not one run of the carousel: a device whose receive path fell behind
// sheds the chunks that came meanwhile (fetcher's inbox), a run of
// carousel positions spread evenly over the interleaved blocks. Such a
// run tells of that device, not of the devices that have not spoken:
// at N = 500 on NATS without loss, 10 devices that had shed runs of 28
// to 64 chunks spoke first, and a first round sized for a fleet losing
// at their rate sent 24 parity chunks a block where the most any device
// lacked was 16 (egress 1.201 images, docs/BENCHMARKS.md).
func fleetLack(d *imageData, per map[string][]int, lack map[string][]int) map[string][]int {
	out := make(map[string][]int, len(lack))
	for who, l := range lack {
		if !oneRun(d, per[who]) {
			out[who] = l
		}
	}
	return out
}

// oneRun reports whether chunks (indices of d) are a shed run: at least
// as many as the image has blocks (a shorter run leaves some blocks
// without a loss, which lossRate's median block share already tells
// from even loss), with carousel positions within a run at most twice
// as long as their count.
func oneRun(d *imageData, chunks []int) bool {
	if len(chunks) < int(d.table.NumBlocks()) {
		return false
	}
	lo, hi := d.span(chunks)
	return hi-lo+1 <= 2*int64(len(chunks))
}

// lossRate estimates the rate a fleet loses chunks at from its
// requesters' summaries (lack: per requester, per block, the chunks it
// lacks): the median over the requesters of each one's median block's
// share lacked. A burst lost in one block (a broker's queue
// overflowing, a device that shed) is no evidence of a fleet-wide rate.
func lossRate(t *schemas.ChunkTable, lack map[string][]int) float64 {
	nb := int(t.NumBlocks())
	if nb == 0 || len(lack) == 0 {
		return 0
	}
	rates := make([]float64, 0, len(lack))
	share := make([]float64, nb)
	for _, l := range lack {
		for b := range nb {
			_, count := t.BlockChunks(uint32(b))
			share[b] = float64(l[b]) / float64(count)
		}
		slices.Sort(share)
		rates = append(rates, share[nb/2])
	}
	slices.Sort(rates)
	return rates[len(rates)/2]
}

// binomialQuantile returns the least m such that a Binomial(n, p) count
// exceeds m with probability at most eps.
func binomialQuantile(n int, p, eps float64) int {
	switch {
	case p <= 0:
		return 0
	case p >= 1:
		return n
	}
	lp, lq := math.Log(p), math.Log1p(-p)
	ln, _ := math.Lgamma(float64(n + 1))
	cdf := 0.0
	for m := 0; m < n; m++ {
		lk, _ := math.Lgamma(float64(m + 1))
		lnk, _ := math.Lgamma(float64(n - m + 1))
		cdf += math.Exp(ln - lk - lnk + float64(m)*lp + float64(n-m)*lq)
		if 1-cdf <= eps {
			return m
		}
	}
	return n
}

// roundRanges returns the chunks of the blocks a repair round sent parity
// for, as sorted, disjoint runs (the blocks' chunks are contiguous); more
// than schemas.MaxRanges: the one run that spans them.
func roundRanges(t *schemas.ChunkTable, send []blockcode.Symbol) []schemas.Range {
	blocks := map[uint32]bool{}
	for _, s := range send {
		blocks[s.Block] = true
	}
	var out []schemas.Range
	for _, b := range slices.Sorted(maps.Keys(blocks)) {
		first, count := t.BlockChunks(b)
		if k := len(out) - 1; k >= 0 && out[k].First+out[k].Count == first {
			out[k].Count += count
			continue
		}
		out = append(out, schemas.Range{First: first, Count: count})
	}
	if len(out) > schemas.MaxRanges {
		last := out[len(out)-1]
		out = []schemas.Range{{First: out[0].First, Count: last.First + last.Count - out[0].First}}
	}
	return out
}

// parityLog records the coded repair rounds of an image: when each went
// out and how many parity chunks it sent per block. Kept for
// parityLogKeep.
type parityLog []parityRound

type parityRound struct {
	at     time.Time // monotonic, when its last parity chunk was sent
	marker uint32    // the number of its end marker (WaveEnd.Wave)
	block  map[uint32]int
}

// parityLogKeep bounds how long a round is remembered.
const parityLogKeep = 30 * time.Second

func (l *parityLog) add(at time.Time, marker uint32, send []blockcode.Symbol) {
	r := parityRound{at: at, marker: marker, block: map[uint32]int{}}
	for _, s := range send {
		r.block[s.Block]++
	}
	keep := (*l)[:0]
	for _, o := range *l {
		if at.Sub(o.at) < parityLogKeep {
			keep = append(keep, o)
		}
	}
	*l = append(keep, r)
}

// crossed returns, per block of nb, the parity chunks of the rounds that
// crossed a request, and the highest end marker among them (0: none):
// the rounds that ended at or after since and whose end marker is above
// floor. repairCoded sets since and floor per requester: for one that
// names the last end marker it heard (ChunkRequest.Seen), floor is that
// marker (a round whose marker it heard reached it, or was lost, before
// it asked: its losses are in the request) and since reaches
// seenCrossing back; for one that names none (an agent from before the
// field), since reaches only tableCrossing back. A round that answered
// the requester itself counts: paced, and delivered late by a loaded
// broker, it was often still on its way when the requester asked again.
// floor is also at least the last round already counted for the
// requester, so that each round is counted once.
func (l parityLog) crossed(since time.Time, floor uint32, nb int) ([]int, uint32) {
	out := make([]int, nb)
	var top uint32
	for _, r := range l {
		if r.at.Before(since) || r.marker <= floor {
			continue
		}
		top = max(top, r.marker)
		for b, k := range r.block {
			if int(b) < nb {
				out[b] += k
			}
		}
	}
	return out, top
}

// announce broadcasts, before a coded repair round, what the round sends:
// per block, how many fresh parity chunks (schemas.RepairAnnounce). The
// round is flushed RepairWindow after the first loss summary of the
// batch, and devices send theirs after a back-off, spread exponentially,
// that lets the neediest speak first (fetcher.BrokerConfig.SummaryBackoff):
// a device that hears the announcement before its back-off ends, and
// whose need it covers, stays quiet. Devices cannot hear one another;
// this is how the publisher suppresses their summaries. It goes before
// the round's parity is read or coded.
func (dl *delivery) announce(ctx context.Context, d *imageData, bt schemas.Topic, wave uint32, send []blockcode.Symbol) error {
	per := map[uint32]uint32{}
	for _, s := range send {
		per[s.Block]++
	}
	a := schemas.RepairAnnounce{V: schemas.Version, Image: d.digest, Wave: wave, Need: make([]schemas.BlockNeed, 0, len(per))}
	for _, b := range slices.Sorted(maps.Keys(per)) {
		a.Need = append(a.Need, schemas.BlockNeed{Block: b, Parity: per[b]})
	}
	b, err := schemas.Encode(&a)
	if err != nil {
		return err
	}
	return dl.send(ctx, bt, b, &dl.egress.Repair, "announce")
}

// countNonZero counts the non-zero entries of v.
func countNonZero[T comparable](v []T) int {
	var zero T
	n := 0
	for _, x := range v {
		if x != zero {
			n++
		}
	}
	return n
}
