package publisher

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

type lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

const leaseKey = "leader"

// acquireLease takes or renews the leader lease; it reports whether this
// instance is leader until the next tick, and whether it just became so
// (fresh: its notices are sent again, in case a previous leader persisted
// one it did not send). A lease this process held and takes back, no other
// instance having held it meanwhile (a tick whose lease read failed under
// load), is not fresh: before, every such tick made the next one send
// every in-progress device's notice again.
func (p *Publisher) acquireLease(ctx context.Context) (leader, fresh bool) {
	now := p.cfg.Clock.Now()
	want := lease{Holder: p.cfg.Instance, Until: now.Add(p.cfg.LeaseTTL)}
	var cur lease
	back := false
	rev, err := getJSON(ctx, p.st.lease, "lease", leaseKey, &cur)
	switch {
	case errors.Is(err, ErrNotFound):
		_, err = createJSON(ctx, p.st.lease, "lease", leaseKey, want)
	case err != nil:
	case cur.Holder != p.cfg.Instance && now.Before(cur.Until):
		p.leader = false
		return false, false
	default:
		back = cur.Holder == p.cfg.Instance && p.led
		_, err = updateJSON(ctx, p.st.lease, "lease", leaseKey, want, rev)
	}
	if err != nil {
		p.leader = false
		return false, false
	}
	fresh = !p.leader && !back
	p.leader, p.led = true, true
	return true, fresh
}

// releaseLease gives up the leader lease on a clean stop, so another
// instance takes over at its next tick instead of after LeaseTTL.
//
// The delete is conditional on the revision read: a renewal of the last
// tick, sent before Run was stopped but stored after the read (the KV's
// read and write are separate requests), makes it fail. The lease is then
// read again and the delete retried while this instance still holds it;
// before, such a stop left the lease to expire.
func (p *Publisher) releaseLease(ctx context.Context) {
	defer func() { p.leader = false }()
	var err error
	for range releaseTries {
		var cur lease
		var rev uint64
		rev, err = getJSON(ctx, p.st.lease, "lease", leaseKey, &cur)
		if err != nil || cur.Holder != p.cfg.Instance {
			return
		}
		dctx, cancel := opCtx(ctx)
		err = p.st.lease.Delete(dctx, leaseKey, jetstream.LastRevision(rev))
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		p.log.Warn("release leader lease", "err", err)
	}
}

// releaseTries bounds releaseLease's conditional deletes.
const releaseTries = 3

// tick runs one round of campaign work if this instance is leader. It is
// called from Run's loop only (never concurrently with itself).
func (p *Publisher) tick(ctx context.Context) {
	defer p.met.ticks.Inc()
	if p.cfg.Partitions > 1 {
		p.ownerPass(ctx)
	}
	leader, fresh := p.acquireLease(ctx)
	if !leader {
		return
	}
	for _, id := range p.idx.campaignIDs() {
		c, ok := p.idx.campaign(id)
		if !ok || c.State != CampaignRunning {
			continue
		}
		if fresh && p.cfg.Partitions == 1 {
			// A previous leader may have persisted "notified" and died
			// before publishing; notices are idempotent, so send again.
			// With partitions the owners notify, and a partition's new
			// owner sends its notices again (readyParts): the leader
			// sending every device's as well only doubled them.
			p.republish(ctx, &c, nil)
		}
		if err := p.step(ctx, &c); err != nil && ctx.Err() == nil {
			p.log.Warn("campaign step", "campaign", id, "err", err)
		}
	}
}

// A step sends a campaign's notices noticeWorkers at a time, and looks at
// the campaign's wave (maybeWave) after every noticeBatch of them. A
// notice is two round trips (its state in the KV, the retained publish),
// and a held wave waits for the last: at 500 devices on NATS, 32 at a
// time took 0.9 to 1.3 s, 128 take 0.4 to 0.7 s.
const (
	noticeWorkers = 128
	noticeBatch   = 128
)

// tally is what step judges a campaign's open phases on.
type tally struct {
	done        int  // devices of the open phase that succeeded
	devs        int  // device records (opened devices)
	active      int  // devices holding a download slot
	allTerminal bool // every record is in a terminal state
}

// devTally tallies devs for c.
func devTally(c *Campaign, devs []devEntry) tally {
	t := tally{devs: len(devs), allTerminal: true}
	for _, e := range devs {
		if !terminal(e.st.State) {
			t.allTerminal = false
		}
		if e.st.Phase == c.Phase && succeeded(e.st.State) {
			t.done++
		}
		if active(e.st.State) {
			t.active++
		}
	}
	return t
}

// step advances one running campaign. With a partitioned state the
// per-device work is the partition owners' (owner.go): step judges the
// sum of their count records.
func (p *Publisher) step(ctx context.Context, c *Campaign) error {
	now := p.cfg.Clock.Now()
	if c.Deadline != 0 && now.Unix() >= c.Deadline {
		return p.end(ctx, c, []string{CampaignRunning}, CampaignExpired, "deadline passed")
	}
	opened := c.PhaseEnds[c.Phase]
	var t tally
	if p.cfg.Partitions > 1 {
		t = p.partTally(c)
	} else {
		// Open the records of every device in the open phases.
		if err := p.openDevs(ctx, c, opened, now, nil); err != nil {
			return err
		}
		devs := p.idx.devs(c.ID)
		if err := p.checkDevs(ctx, c, devs, now); err != nil {
			return err
		}
		t = devTally(c, devs)
	}
	// Failure threshold: failures among the devices of the open phases.
	counts, _ := p.idx.counts(c.ID)
	fails := counts[countFailed] + counts[schemas.StateRolledBack.String()]
	if fails > 0 && fails*1000 >= uint64(c.FailPermille)*uint64(opened) {
		reason := fmt.Sprintf("failure threshold: %d of %d devices failed (threshold %d‰)", fails, opened, c.FailPermille)
		to := CampaignAborted
		if c.FailAction == FailPause {
			to = CampaignPaused
		}
		p.met.thresholdTrips.Inc()
		return p.end(ctx, c, []string{CampaignRunning}, to, reason)
	}
	// Advance when the open phase reached its success threshold.
	lo, hi := c.phaseRange(c.Phase)
	done := t.done
	need := ((hi-lo)*int(c.SuccessPermille) + 999) / 1000
	if c.Phase < len(c.PhaseEnds)-1 && done >= need {
		nc, err := p.transition(ctx, c.ID, []string{CampaignRunning}, CampaignRunning, "", func(x *Campaign) {
			if x.Phase == c.Phase {
				x.Phase++
			}
		})
		if err != nil {
			return err
		}
		p.met.phases.Inc()
		p.audit(ctx, System, "campaign.phase", c.ID, fmt.Sprintf("phase %d opened (%d%%)", nc.Phase, nc.Phases[nc.Phase]))
		*c = nc
		if p.cfg.Partitions > 1 {
			return nil // the owners open the phase's records at their next pass
		}
		return p.step(ctx, c)
	}
	if t.allTerminal && t.devs >= opened {
		// Every device of the open phases has ended, whatever the mix: the
		// last phase completes the campaign; an earlier one that did not
		// reach its success threshold can open nothing more, and ends it.
		if c.Phase == len(c.PhaseEnds)-1 {
			return p.end(ctx, c, []string{CampaignRunning}, CampaignCompleted, "")
		}
		reason := fmt.Sprintf("phase %d of %d ended below its success threshold: %d of %d devices confirmed or skipped, %d needed to open the next",
			c.Phase+1, len(c.PhaseEnds), done, hi-lo, need)
		return p.end(ctx, c, []string{CampaignRunning}, CampaignAborted, reason)
	}
	if p.cfg.Partitions == 1 {
		// Pacing: notify queued devices, in rollout order, while slots are free.
		if err := p.notifyQueued(ctx, c, opened, t.active); err != nil {
			return err
		}
	}
	p.dl.maybeWave(ctx, c)
	p.dl.maybeDeltaWaves(ctx, c)
	return nil
}

// notifyQueued notifies c's queued devices among the first opened
// targets, in rollout order, while fewer than MaxDownloading are active.
// Notices take a while each (a state write, a signature, a publish): they
// go out noticeWorkers at a time, and the wave is looked at after every
// noticeBatch of them, so that a wave held for the devices notified first
// starts when its hold ends, not once the last notice of a large fleet
// went out (the devices that took the table meanwhile would be left to
// ask for every chunk).
func (p *Publisher) notifyQueued(ctx context.Context, c *Campaign, opened, activeN int) error {
	var queued []DeviceState
	var revs []uint64
	for i := 0; i < opened && activeN < p.cfg.MaxDownloading; i++ {
		st, rev, ok := p.idx.dev(c.ID, c.Targets[i])
		if !ok || st.State != StateQueued {
			continue
		}
		queued, revs = append(queued, st), append(revs, rev)
		activeN++
	}
	for k := 0; k < len(queued); k += noticeBatch {
		var g errgroup.Group
		if c.Encrypted {
			// Its notices record the devices as the image key's
			// recipients (encrypt.go), one at a time.
			g.SetLimit(1)
		} else {
			g.SetLimit(noticeWorkers)
		}
		for j := k; j < min(k+noticeBatch, len(queued)); j++ {
			g.Go(func() error { return p.notify(ctx, c, queued[j], revs[j]) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
		if k+noticeBatch < len(queued) {
			p.dl.maybeWave(ctx, c)
		}
	}
	return nil
}

// openWorkers bounds the device records a step opens at once.
const openWorkers = 64

// openDevs opens the records of c's first opened targets that want
// accepts (nil: all) and the index does not hold, openWorkers at a
// time: each is a create in the KV, a round trip to its stream, and one
// after another they held a 500-device campaign's first notice back by
// 3.4 s on NATS (docs/BENCHMARKS.md). It returns the first error; the
// records opened meanwhile stay open (a later step skips them).
func (p *Publisher) openDevs(ctx context.Context, c *Campaign, opened int, now time.Time, want func(i int) bool) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(openWorkers)
	for i := 0; i < opened; i++ {
		if want != nil && !want(i) {
			continue
		}
		if _, _, ok := p.idx.dev(c.ID, c.Targets[i]); ok {
			continue
		}
		g.Go(func() error { return p.openDev(gctx, c, i, now) })
	}
	return g.Wait()
}

// openDev opens the record of c's i-th target (queued), which the index
// does not hold (openDevs looked); one another instance created first is
// read into the index instead.
func (p *Publisher) openDev(ctx context.Context, c *Campaign, i int, now time.Time) error {
	dev := c.Targets[i]
	st := DeviceState{Campaign: c.ID, Device: dev, Phase: c.phaseOf(i), State: StateQueued, Updated: now.UTC()}
	rev, err := createJSON(ctx, p.st.campdev.of(dev), "device state", devKey(c.ID, dev), st)
	if errors.Is(err, ErrExists) {
		var cur DeviceState
		if rev, err = getJSON(ctx, p.st.campdev.of(dev), "device state", devKey(c.ID, dev), &cur); err == nil {
			p.idx.putDev(cur, rev)
		}
		return nil
	}
	if err != nil {
		return err
	}
	p.idx.putDev(st, rev)
	return nil
}

// checkDevs times out devices that stopped making progress, or that have
// not finished within DeviceDeadline of their notice: a campaign never
// waits for a device forever, however busy its reports are (a device
// deferring an update for ever keeps reporting). Paused time counts
// towards neither. The others are reconciled.
func (p *Publisher) checkDevs(ctx context.Context, c *Campaign, devs []devEntry, now time.Time) error {
	for _, e := range devs {
		if e.st.State == StateQueued || terminal(e.st.State) {
			continue
		}
		last := latest(e.st.Progress, c.Resumed)
		var why string
		switch {
		case now.Sub(latest(e.st.Notified, c.Resumed)) >= p.cfg.DeviceDeadline:
			why = fmt.Sprintf("not finished %s after its notice", p.cfg.DeviceDeadline)
		case now.Sub(last) >= p.cfg.NoProgress:
			why = fmt.Sprintf("no progress for %s", p.cfg.NoProgress)
		default:
			p.reconcile(ctx, c, e, now)
			continue
		}
		if err := p.timeOut(ctx, e, why); err != nil {
			return err
		}
	}
	return nil
}

// reconcile re-sends the notice of a device that has been silent for
// Reconcile, at most once per Reconcile. Reports can be lost while no
// publisher listens (a failover) or when their write to JetStream fails;
// the device answers a repeated notice of an update it has finished with
// its outcome.
//
// Before it re-sends, it reads the device's state fresh from the KV: the
// index can lag a write made by another instance (a watch that missed it
// in a failover), and a device that has in fact moved on is not silent.
func (p *Publisher) reconcile(ctx context.Context, c *Campaign, e devEntry, now time.Time) {
	st := e.st
	last := st.Updated
	if st.Progress.After(last) {
		last = st.Progress
	}
	k := devKey(c.ID, st.Device)
	if sent, ok := p.resent[k]; ok && sent.After(last) {
		last = sent
	}
	if now.Sub(last) < p.cfg.Reconcile {
		return
	}
	if p.resent == nil {
		p.resent = make(map[string]time.Time)
	}
	p.resent[k] = now
	var cur DeviceState
	if rev, err := getJSON(ctx, p.st.campdev.of(st.Device), "device state", k, &cur); err == nil && rev > e.rev {
		p.idx.putDev(cur, rev)
		p.log.Debug("index caught up with a device's stored state", "campaign", c.ID, "device", st.Device, "state", cur.State)
		return
	}
	if err := p.publishNotice(ctx, c, st.Device); err != nil {
		p.log.Warn("reconcile notice", "campaign", c.ID, "device", st.Device, "err", err)
		return
	}
	p.log.Debug("notice sent again to a silent device", "campaign", c.ID, "device", st.Device)
}

// end moves a campaign to a final (or paused) state and clears notices.
func (p *Publisher) end(ctx context.Context, c *Campaign, from []string, to, reason string) error {
	nc, err := p.transition(ctx, c.ID, from, to, reason, nil)
	if err != nil {
		return err
	}
	p.audit(ctx, System, "campaign."+to, c.ID, reason)
	p.log.Info("campaign ended", "campaign", c.ID, "state", to, "reason", reason)
	p.clearNotices(ctx, &nc)
	for k := range p.resent {
		if strings.HasPrefix(k, c.ID+".") {
			delete(p.resent, k)
		}
	}
	*c = nc
	return nil
}

// latest returns the later of a and b.
func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// timeOut marks a device timed out, saying why.
func (p *Publisher) timeOut(ctx context.Context, e devEntry, why string) error {
	next := e.st
	next.State, next.Code, next.Text = StateTimedOut, schemas.CodeTimeout.String(), why
	next.Updated = p.cfg.Clock.Now().UTC()
	rev, err := updateJSON(ctx, p.st.campdev.of(e.st.Device), "device state", devKey(e.st.Campaign, e.st.Device), next, e.rev)
	if isConflict(err) {
		p.refreshDev(ctx, e.st.Campaign, e.st.Device) // a report came first; judged again next tick
		return nil
	}
	if err != nil {
		return err
	}
	p.idx.putDev(next, rev)
	p.clearNotice(ctx, e.st.Device)
	return nil
}

// notify marks a queued device notified (persisted first) and publishes
// its retained notice.
func (p *Publisher) notify(ctx context.Context, c *Campaign, st DeviceState, rev uint64) error {
	now := p.cfg.Clock.Now().UTC()
	next := st
	next.State, next.Notified, next.Progress, next.Updated = DevState(schemas.StateNotified), now, now, now
	nrev, err := updateJSON(ctx, p.st.campdev.of(st.Device), "device state", devKey(c.ID, st.Device), next, rev)
	if isConflict(err) {
		p.refreshDev(ctx, c.ID, st.Device) // another instance wrote it first
		return nil
	}
	if err != nil {
		return err
	}
	p.idx.putDev(next, nrev)
	return p.publishNotice(ctx, c, st.Device)
}

// refreshDev reads a device's campaign state fresh from the KV into the
// index, after a compare-and-set showed the index behind.
func (p *Publisher) refreshDev(ctx context.Context, campaign, device string) {
	var cur DeviceState
	rev, err := getJSON(ctx, p.st.campdev.of(device), "device state", devKey(campaign, device), &cur)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("refresh device state", "campaign", campaign, "device", device, "err", err)
		}
		return
	}
	p.idx.putDev(cur, rev)
}

// notice builds and signs device's notice of c.
func (p *Publisher) notice(ctx context.Context, c *Campaign, device string) ([]byte, error) {
	img, _ := hex.DecodeString(c.Image)
	n := &schemas.UpdateNotice{
		V: schemas.Version, Campaign: c.ID, Target: device, Envelope: c.Envelope,
		Sources:  []schemas.SourceHint{{Kind: "broker"}},
		Deadline: c.Deadline, Image: img, ChunkSize: c.ChunkSize, Retry: c.RetryFailed,
	}
	if p.cfg.StartWindow > 0 {
		n.StartWindowMS = uint32(p.cfg.StartWindow.Milliseconds())
	}
	if p.cfg.PublicURL != "" {
		n.Sources = append(n.Sources, schemas.SourceHint{Kind: "http", URI: p.imageURL(c.Image), Cost: 1})
	}
	if len(p.cfg.NoticeSigners) == 0 {
		return nil, fmt.Errorf("%w: no notice signing key", ErrNoSigner)
	}
	key, err := p.wrappedKeyFor(ctx, c, device)
	if err != nil {
		return nil, err
	}
	n.Key = key
	if err := suit.SignNotice(ctx, n, p.cfg.NoticeSigners...); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return schemas.Encode(n)
}

func (p *Publisher) publishNotice(ctx context.Context, c *Campaign, device string) error {
	b, err := p.notice(ctx, c, device)
	if err != nil {
		return fmt.Errorf("publisher: notice for %s: %w", device, err)
	}
	t, err := p.cfg.Topics.Notice(device)
	if err != nil {
		return err
	}
	if err := p.cfg.Transport.Publish(ctx, t, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		return fmt.Errorf("publisher: publish notice to %s: %w", device, err)
	}
	p.met.notices.Inc()
	return nil
}

// clearNotice removes a device's retained notice.
func (p *Publisher) clearNotice(ctx context.Context, device string) {
	t, err := p.cfg.Topics.Notice(device)
	if err != nil {
		return
	}
	if err := p.cfg.Transport.Publish(ctx, t, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		p.log.Warn("clear notice", "device", device, "err", err)
		return
	}
	p.met.noticesCleared.Inc()
}

// clearNotices clears the notice of every device of c that was notified.
func (p *Publisher) clearNotices(ctx context.Context, c *Campaign) {
	for _, e := range p.idx.devs(c.ID) {
		if e.st.State != StateQueued {
			p.clearNotice(ctx, e.st.Device)
		}
	}
}

// republish re-sends the notices of c's devices still in progress; when
// only is not nil, of the devices it picks alone.
func (p *Publisher) republish(ctx context.Context, c *Campaign, only func(dev string) bool) {
	for _, e := range p.idx.devs(c.ID) {
		if e.st.State != StateQueued && !terminal(e.st.State) && (only == nil || only(e.st.Device)) {
			if err := p.publishNotice(ctx, c, e.st.Device); err != nil {
				p.log.Warn("republish notice", "campaign", c.ID, "err", err)
			}
		}
	}
}

// watch feeds the index from a KV bucket until ctx ends. ready is closed
// once the initial values are in. If the watcher's channel closes before
// ctx ends (its consumer lost with a server), the watch is started again
// from the bucket's current values, which the index takes only where they
// are newer than what it holds.
func (p *Publisher) watch(ctx context.Context, kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry), ready chan<- struct{}) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("publisher: watch %s: %w", kv.Bucket(), err)
	}
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		for {
			p.follow(ctx, w, apply, &ready)
			w.Stop()
			for ctx.Err() == nil {
				p.log.Warn("KV watch ended; starting it again", "bucket", kv.Bucket())
				select {
				case <-ctx.Done():
				case <-time.After(p.cfg.TickInterval):
				}
				if w, err = kv.WatchAll(ctx); err == nil {
					break
				}
				if ctx.Err() == nil {
					p.log.Warn("restart KV watch", "bucket", kv.Bucket(), "err", err)
				}
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return nil
}

// follow applies a watcher's updates until its channel closes or ctx ends.
func (p *Publisher) follow(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry), ready *chan<- struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if *ready != nil {
					close(*ready)
					*ready = nil
				}
				continue
			}
			if e.Operation() == jetstream.KeyValuePut {
				apply(e)
			}
		}
	}
}

func (p *Publisher) startWatches(ctx context.Context) error {
	r1 := make(chan struct{})
	err := p.watch(ctx, p.st.campaigns, func(e jetstream.KeyValueEntry) {
		var c Campaign
		if json.Unmarshal(e.Value(), &c) == nil {
			p.idx.putCampaign(c, e.Revision())
		}
	}, r1)
	if err != nil {
		return err
	}
	ready := []chan struct{}{r1}
	if p.cfg.Partitions > 1 {
		// Each partition's devices are watched by its owner only
		// (owner.go); every instance follows the memberships and the
		// partitions' count records.
		r := make(chan struct{})
		ready = append(ready, r)
		if err := p.watch(ctx, p.st.lease, p.applyLeaseEntry, r); err != nil {
			return err
		}
	} else {
		r := make(chan struct{})
		ready = append(ready, r)
		if err := p.watch(ctx, p.st.campdev.kvs[0], p.applyDevEntry, r); err != nil {
			return err
		}
	}
	for _, r := range ready {
		select {
		case <-r:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// applyDevEntry takes a per-device state record from a watch.
func (p *Publisher) applyDevEntry(e jetstream.KeyValueEntry) {
	if camp, dev, ok := strings.Cut(e.Key(), "."); ok && p.idx.known(camp, dev, e.Revision()) {
		return // this instance wrote it and already holds it
	}
	var st DeviceState
	if json.Unmarshal(e.Value(), &st) == nil {
		p.idx.putDev(st, e.Revision())
	}
}
