package publisher

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/schemas"
)

// Pacing a wave at the rate the fleet takes it.
//
// Chunks go out at QoS 0: a device that cannot take them as fast as the
// wave sends them loses what overflows its receive queue (or the
// broker's queue for it), and every loss is repair. The broker's own
// echo (Config.WaveEcho) only says that the broker handed a chunk to the
// publisher's connection, not that slow devices took it; loss summaries
// come once per wave, too late for it. While a wave flows, though, the
// devices that download it report their progress (schemas.DeviceReport,
// state downloading, stamped with the device's clock; deployed agents
// report every PersistEvery chunks, designated receivers every
// deviceagent ProgressInterval): the bytes a device verified between two
// of its reports, over at least wavePaceSpan of its time and from its
// first report with bytes (not the wait for the wave's first chunk), is
// the rate it takes chunks at. Every Config.WavePace the wave revises its
// rate from these (after NORM's current-limiting receiver, RFC 5740, over
// a few designated receivers): when their median rate is less than
// wavePaceBehind of what the wave sent (the lower of this revision's and
// the last one's send rates: the devices' rates lag), the wave's rate is set
// wavePaceOver above it (at most halved per revision); while they keep
// up, the rate is raised step by step, or at once to wavePaceOver above
// their median when that is higher, and lifted once it is well above
// what the wave sends. No reports (fewer than wavePaceMin recent rates):
// no limit from here.

const (
	// wavePaceMin is the fewest recent device rates a revision uses.
	wavePaceMin = 3
	// wavePaceBehind: the receivers fall behind when they take less than
	// this fraction of what the wave sent.
	wavePaceBehind = 0.7
	// wavePaceOver is how far above the slow devices' rate the wave is
	// set, so that their queues stay fed.
	wavePaceOver = 1.2
	// wavePaceRaise is the step by which a rate the devices keep up
	// with is raised at each revision.
	wavePaceRaise = 1.25
	// wavePaceCut is the most one revision lowers the rate by.
	wavePaceCut = 0.5
	// wavePaceSpan is the least device time a rate is taken over.
	wavePaceSpan = time.Second
	// wavePaceFloor is the lowest rate, in bytes per second, a wave is
	// set to (a device that stalls must not stop the wave).
	wavePaceFloor = 64 << 10
)

// wavePace is one wave's rate control. Safe for concurrent use: reports
// come in on the transport's handlers, the wave waits on it.
type wavePace struct {
	every time.Duration
	burst int
	log   *slog.Logger // debug: each revision; nil: none

	mu sync.Mutex
	// last is each device's previous progress report (device time, ms,
	// and bytes); rates its latest rate, in bytes per second, and when
	// it was taken (local monotonic time).
	last  map[string]progressSample
	rates map[string]rateSample
	// lim is the wave's rate, nil while unlimited; sent counts the bytes
	// the wave sent since the last revision, at rev.
	lim  *rate.Limiter
	sent int64
	rev  time.Time
	// before is what the wave sent per second over the revision before
	// (0: none yet).
	before float64
}

type progressSample struct {
	at    int64
	bytes uint64
}

type rateSample struct {
	bps float64
	at  time.Time
}

func newWavePace(every time.Duration, burst int) *wavePace {
	return &wavePace{every: every, burst: burst, last: map[string]progressSample{}, rates: map[string]rateSample{}, rev: time.Now()}
}

// observe takes a progress report of dev: at bytes verified at device time
// atMS (Unix ms).
func (wp *wavePace) observe(dev string, atMS int64, bytes uint64) {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	prev, ok := wp.last[dev]
	// A span starts at a report with bytes: one from before the wave
	// reached the device (it subscribed and waits for the first chunk)
	// would count that wait as a slow rate (measured: the first revision
	// of every wave at N = 500 cut it to half, rates of 0.4 MB/s taken
	// over the second before the wave against 0.9 MB/s after).
	if !ok || prev.bytes == 0 || bytes < prev.bytes || atMS < prev.at {
		wp.last[dev] = progressSample{atMS, bytes} // the start of its first span
		return
	}
	// A rate is taken over at least wavePaceSpan of the device's time:
	// what a device verified between two reports a moment apart is too
	// coarse (a few chunks) to pace by.
	if atMS-prev.at < wavePaceSpan.Milliseconds() {
		return
	}
	wp.last[dev] = progressSample{atMS, bytes}
	wp.rates[dev] = rateSample{bps: float64(bytes-prev.bytes) * 1000 / float64(atMS-prev.at), at: time.Now()}
}

// wait takes n bytes the wave is about to send, revises the rate when
// due, and blocks until the rate lets them go or ctx ends.
func (wp *wavePace) wait(ctx context.Context, n int) error {
	wp.mu.Lock()
	wp.sent += int64(n)
	if now := time.Now(); now.Sub(wp.rev) >= wp.every {
		wp.revise(now)
	}
	lim := wp.lim
	wp.mu.Unlock()
	if lim == nil {
		return nil
	}
	return lim.WaitN(ctx, min(n, wp.burst))
}

// limit returns the wave's rate in bytes per second, 0 while unlimited.
func (wp *wavePace) limit() float64 {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	if wp.lim == nil {
		return 0
	}
	return float64(wp.lim.Limit())
}

func (wp *wavePace) limitLocked() float64 {
	if wp.lim == nil {
		return 0
	}
	return float64(wp.lim.Limit())
}

// revise sets the wave's rate from the recent device rates. Called with
// mu held.
func (wp *wavePace) revise(now time.Time) {
	sent := float64(wp.sent) / now.Sub(wp.rev).Seconds()
	before := wp.before
	wp.sent, wp.rev, wp.before = 0, now, sent
	var rs []float64
	for dev, r := range wp.rates {
		if now.Sub(r.at) > 2*wp.every {
			delete(wp.rates, dev) // done, or silent: no longer a receiver to pace for
			continue
		}
		rs = append(rs, r.bps)
	}
	if len(rs) < wavePaceMin {
		return
	}
	slices.Sort(rs)
	if wp.log != nil {
		defer func() {
			wp.log.Debug("wave pace", "sent_bps", int64(sent), "receivers", len(rs), "median_bps", int64(rs[len(rs)/2]),
				"slowest_bps", int64(rs[0]), "limit_bps", int64(wp.limitLocked()))
		}()
	}
	// The designated receivers' median: a rate over a second is a few
	// chunks either way, and the lower ones are as often a device
	// descheduled for a moment as one that falls behind (measured: the
	// lower quartile held an 8 MiB wave to 50 s at N = 200).
	slow := rs[len(rs)/2]
	// A device's rate is taken over its last second or more, up to its
	// last report: it lags what the wave sent. Against the lower of the
	// last two revisions' rates, a wave that just sped up is not cut
	// for rates taken while it sent less (measured: a revision that
	// found 1.39 MB/s sent after 0.69 cut the wave to 0.75).
	cur := sent
	if before > 0 {
		cur = min(cur, before)
	}
	if wp.lim != nil {
		cur = min(cur, float64(wp.lim.Limit()))
	}
	switch {
	case slow < wavePaceBehind*cur:
		// At most halved per revision: one revision's reports may catch
		// the devices descheduled for a moment.
		wp.set(max(slow*wavePaceOver, cur*wavePaceCut, wavePaceFloor))
	case wp.lim != nil:
		// Raised a step, or at once to what the receivers showed they
		// take: a median above the limit is devices draining what they
		// had queued before it (measured: a first revision, with half
		// the receivers reporting, cut a wave to 0.43 MB/s; the next but
		// one found them at 1.38 MB/s, and raised a step a second the
		// wave stayed limited for 6 s of its 10).
		if up := max(float64(wp.lim.Limit())*wavePaceRaise, slow*wavePaceOver); up > 2*sent {
			wp.lim = nil // well above what the wave sends: no limit
		} else {
			wp.set(up)
		}
	}
}

func (wp *wavePace) set(bps float64) {
	if wp.lim == nil {
		wp.lim = rate.NewLimiter(rate.Limit(bps), wp.burst)
		return
	}
	wp.lim.SetLimit(rate.Limit(bps))
}

// observeProgress hands a device's download progress report to the pace
// of the wave in flight of its campaign's image, if any. Called by the
// report handler, after the report's topic was checked against its
// device.
func (dl *delivery) observeProgress(r *schemas.DeviceReport) {
	// Off (the default): no wave takes the lock for it on every report.
	if dl.cfg.WavePace == 0 || r.State != schemas.StateDownloading || r.BytesDone == 0 || r.Campaign == "" {
		return
	}
	c, ok := dl.camps.campaign(r.Campaign)
	if !ok {
		return
	}
	dl.waveMu.Lock()
	var wp *wavePace
	if w := dl.waves[c.Image]; w != nil {
		wp = w.pace
	}
	dl.waveMu.Unlock()
	if wp != nil {
		wp.observe(r.Device, r.Time, r.BytesDone)
	}
}
