package publisher

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
)

// Partition ownership, with Config.Partitions > 1 (see partition.go for
// the layout). Each partition of the per-device state has one owner at a
// time, which holds the lease "part.<i>" in the lease bucket; only the
// owner keeps the partition's devices in its index (a KV watch of that
// bucket alone), so an instance's index holds its share of the fleet, not
// the whole of it. The owner does the per-device work of its partition's
// devices that the leader does for all of them when the state is not
// partitioned: opening their records as phases open, notices (paced, each
// partition its share of Config.MaxDownloading, in proportion to its
// devices), timeouts, reconciling,
// republishing after a takeover, clearing notices when a campaign ends or
// pauses. It also keeps one count record per campaign and partition
// ("count.<campaign>.<i>", partCount) current; the campaign leader judges
// thresholds, phases and completion on the sum of those small records,
// and every instance's CampaignStatus shows that sum.
//
// Who owns what: every instance running keeps a membership record
// ("member.<hex of Config.Instance>", renewed each tick, lasting
// LeaseTTL); partition i belongs to the i-th (modulo) of the live
// members in name order. An instance takes a partition it should own when
// its lease is free or expired, and gives up (deletes the lease of) one it
// holds but should no longer own, so a joining instance gets its share at
// once and a dead instance's partitions are taken over once its records
// expire. Every device write stays a compare-and-set on the device's
// record, so an instance that still acts on a partition it lost (a slow
// tick) is refused, never applied twice.
//
// Reports and chunk requests still reach any instance (the shared
// subscription). One that does not own the device's partition forwards
// the report, as received, to the partition's owner (core NATS, subject
// <root>.fwd.<ns>.<i>, beside the audit subject and never under the
// devices' topics), which applies it with the device's record in its
// index; when the partition has no live owner it applies the report
// itself, after reading the record from the KV (as any instance does when
// its index lags). A chunk request is admitted after one read of the
// device's record per campaign.

//
// What stays per instance with partitions: Status.Ignored counts the
// reports this instance ignored (it is not in the count records); and the
// leader's wave gathering (chunks.go) waits only for the downloading
// devices of the partitions it owns.

// partCount is one partition's tally of a campaign's devices, written by
// the partition's owner.
type partCount struct {
	// Counts are the Status.Counts of the partition's devices.
	Counts map[string]uint64 `json:"counts,omitempty"`
	// Devices is the number of device records (opened devices).
	Devices int `json:"devices"`
	// Terminal is how many of them are in a terminal state.
	Terminal int `json:"terminal"`
	// Active is how many hold a download slot.
	Active int `json:"active"`
	// Done is, by phase, how many succeeded (confirmed or skipped).
	Done []int `json:"done,omitempty"`
}

// owner is an instance's share of a partitioned state.
type owner struct {
	mu       sync.Mutex
	members  map[string]time.Time       // instance -> membership until (the lease bucket's watch)
	notified map[string]map[string]bool // campaign -> devices of other partitions seen notified
	held     map[int]*heldPart          // tick loop only
	holders  map[int]lease              // partition -> its lease as last seen (the lease bucket's watch)
	seen     map[string]string          // campaign -> state at the last owner pass; tick loop only
	// had: partitions this process has held (tick loop only): one it
	// takes back from its own lease (a renewal that failed under load)
	// had no other owner meanwhile, and no notice of it to send again.
	had map[int]bool
}

type heldPart struct {
	cancel context.CancelFunc // ends the partition's watch
	fwd    *nats.Subscription // reports forwarded to this owner
	ready  chan struct{}      // closed when the watch has the partition's records
	live   bool               // ready, and its notices republished (or none to republish)
	until  time.Time          // the lease as last renewed
}

func memberKey(instance string) string { return "member." + hex.EncodeToString([]byte(instance)) }
func partKey(i int) string             { return "part." + strconv.Itoa(i) }
func countKey(campaign string, i int) string {
	return "count." + campaign + "." + strconv.Itoa(i)
}

// applyLeaseEntry takes a membership or count record from the lease
// bucket's watch.
func (p *Publisher) applyLeaseEntry(e jetstream.KeyValueEntry) {
	k := e.Key()
	switch {
	case strings.HasPrefix(k, "member."):
		var l lease
		if json.Unmarshal(e.Value(), &l) == nil {
			p.own.mu.Lock()
			if p.own.members == nil {
				p.own.members = map[string]time.Time{}
			}
			p.own.members[l.Holder] = l.Until
			p.own.mu.Unlock()
		}
	case strings.HasPrefix(k, "part."):
		i, err := strconv.Atoi(k[len("part."):])
		var l lease
		if err == nil && json.Unmarshal(e.Value(), &l) == nil {
			p.own.mu.Lock()
			if p.own.holders == nil {
				p.own.holders = map[int]lease{}
			}
			p.own.holders[i] = l
			p.own.mu.Unlock()
		}
	case strings.HasPrefix(k, "count."):
		rest := k[len("count."):]
		dot := strings.LastIndexByte(rest, '.')
		i, err := strconv.Atoi(rest[dot+1:])
		if dot < 0 || err != nil {
			return
		}
		var pc partCount
		if json.Unmarshal(e.Value(), &pc) == nil {
			p.idx.putPart(rest[:dot], i, pc)
		}
	}
}

// putLeaseJSON stores v under key in the lease bucket, unconditionally.
func (p *Publisher) putLeaseJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	octx, cancel := opCtx(ctx)
	defer cancel()
	_, err = p.st.lease.Put(octx, key, b)
	return err
}

// ownPartitions renews this instance's membership and takes, keeps or
// gives up partition leases (see above). Tick loop only.
func (p *Publisher) ownPartitions(ctx context.Context) {
	now := p.cfg.Clock.Now()
	me := p.cfg.Instance
	until := now.Add(p.cfg.LeaseTTL)
	if err := p.putLeaseJSON(ctx, memberKey(me), lease{Holder: me, Until: until}); err != nil && ctx.Err() == nil {
		p.log.Warn("renew membership", "err", err)
	}
	p.own.mu.Lock()
	if p.own.members == nil {
		p.own.members = map[string]time.Time{}
	}
	p.own.members[me] = until
	var live []string
	for m, u := range p.own.members {
		if now.Before(u) {
			live = append(live, m)
		}
	}
	p.own.mu.Unlock()
	slices.Sort(live)
	if p.own.held == nil {
		p.own.held = map[int]*heldPart{}
	}
	for i := range p.cfg.Partitions {
		want := live[i%len(live)] == me
		mine, ours := p.partLease(ctx, i, want, now)
		hp := p.own.held[i]
		switch {
		case mine && hp == nil:
			p.gainPartition(ctx, i, now, ours && p.own.had[i])
		case mine:
			hp.until = now.Add(p.cfg.LeaseTTL)
		case hp != nil:
			p.losePartition(i)
		}
	}
}

// partLease takes, renews or releases partition i's lease and reports
// whether this instance holds it until the next tick, and whether the
// lease it renewed was this instance's already (ours).
func (p *Publisher) partLease(ctx context.Context, i int, want bool, now time.Time) (mine, ours bool) {
	me := p.cfg.Instance
	next := lease{Holder: me, Until: now.Add(p.cfg.LeaseTTL)}
	var cur lease
	rev, err := getJSON(ctx, p.st.lease, "partition lease", partKey(i), &cur)
	switch {
	case errors.Is(err, ErrNotFound):
		if !want {
			return false, false
		}
		_, err = createJSON(ctx, p.st.lease, "partition lease", partKey(i), next)
		return err == nil, false
	case err != nil: // cannot tell: keep it while the lease lasts
		hp := p.own.held[i]
		return hp != nil && now.Before(hp.until), false
	case cur.Holder == me && !want:
		p.dropPartLease(ctx, i, rev, now)
		return false, false
	case cur.Holder == me || want && !now.Before(cur.Until):
		_, err = updateJSON(ctx, p.st.lease, "partition lease", partKey(i), next, rev)
		return err == nil, cur.Holder == me
	}
	return false, false
}

// dropPartLease gives up partition i's lease held at revision rev: it is
// first marked ended (so that the others stop forwarding reports here: the
// lease watch takes puts only), then deleted.
func (p *Publisher) dropPartLease(ctx context.Context, i int, rev uint64, now time.Time) {
	nrev, err := updateJSON(ctx, p.st.lease, "partition lease", partKey(i), lease{Holder: p.cfg.Instance, Until: now}, rev)
	if err != nil {
		p.log.Warn("release partition lease", "partition", i, "err", err)
		return
	}
	dctx, cancel := opCtx(ctx)
	defer cancel()
	if err := p.st.lease.Delete(dctx, partKey(i), jetstream.LastRevision(nrev)); err != nil {
		p.log.Warn("release partition lease", "partition", i, "err", err)
	}
}

// fwdSubject is the subject of reports forwarded to partition i's owner.
func (p *Publisher) fwdSubject(i int) string {
	return strings.ReplaceAll(p.cfg.Topics.Root(), "/", ".") + ".fwd." + p.cfg.Namespace + "." + strconv.Itoa(i)
}

// forward sends r (payload as received) to the owner of its device's
// partition when another live instance owns it, and reports whether it
// did.
func (p *Publisher) forward(r *schemas.DeviceReport, payload []byte) bool {
	if p.cfg.Partitions <= 1 {
		return false
	}
	i := devicePartition(r.Device, p.cfg.Partitions)
	if p.idx.holdsPart(i) {
		return false
	}
	p.own.mu.Lock()
	h, ok := p.own.holders[i]
	p.own.mu.Unlock()
	if !ok || h.Holder == p.cfg.Instance || !p.cfg.Clock.Now().Before(h.Until) {
		return false
	}
	if err := p.cfg.JetStream.Conn().Publish(p.fwdSubject(i), payload); err != nil {
		return false
	}
	p.met.reports.WithLabelValues(string(resForwarded)).Inc()
	return true
}

// handleForwarded takes a report another instance forwarded (it checked
// the report against its topic).
func (p *Publisher) handleForwarded(m *nats.Msg) {
	var r schemas.DeviceReport
	if err := schemas.Decode(m.Data, &r); err != nil {
		p.met.reports.WithLabelValues("malformed").Inc()
		return
	}
	p.queueReport(p.closing, r)
}

// gainPartition starts keeping partition i's devices: a watch of its
// bucket feeds the index. back: this process held it last (its lease was
// this instance's, and this process had it), so no other owner may have
// persisted a notice it did not send: none is sent again (readyParts).
func (p *Publisher) gainPartition(ctx context.Context, i int, now time.Time, back bool) {
	p.idx.setHold(i, true)
	wctx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	if err := p.watch(wctx, p.st.campdev.kvs[i], p.applyDevEntry, ready); err != nil {
		cancel()
		p.idx.setHold(i, false)
		p.log.Warn("watch partition", "partition", i, "err", err)
		return
	}
	sub, err := p.cfg.JetStream.Conn().Subscribe(p.fwdSubject(i), p.handleForwarded)
	if err != nil {
		p.log.Warn("subscribe to forwarded reports", "partition", i, "err", err)
	}
	p.own.held[i] = &heldPart{cancel: cancel, ready: ready, fwd: sub, until: now.Add(p.cfg.LeaseTTL), live: back}
	if p.own.had == nil {
		p.own.had = map[int]bool{}
	}
	p.own.had[i] = true
	p.log.Info("partition taken", "partition", i, "back", back)
}

// losePartition stops keeping partition i's devices.
func (p *Publisher) losePartition(i int) {
	if hp := p.own.held[i]; hp != nil {
		hp.cancel()
		if hp.fwd != nil {
			_ = hp.fwd.Unsubscribe()
		}
		delete(p.own.held, i)
	}
	p.idx.setHold(i, false)
	p.log.Info("partition given up", "partition", i)
}

// releasePartitions gives up every partition on a clean stop, and ends
// the membership, so the others take over at their next tick.
func (p *Publisher) releasePartitions(ctx context.Context) {
	if p.cfg.Partitions <= 1 {
		return
	}
	me := p.cfg.Instance
	// Every partition's lease is read, not only those held: a renewal cut
	// short (the tick's context ended) may have been stored while this
	// instance already counted the partition lost.
	for i := range p.cfg.Partitions {
		var cur lease
		rev, err := getJSON(ctx, p.st.lease, "partition lease", partKey(i), &cur)
		if err == nil && cur.Holder == me {
			p.dropPartLease(ctx, i, rev, p.cfg.Clock.Now())
		}
		if p.own.held[i] != nil {
			p.losePartition(i)
		}
	}
	_ = p.putLeaseJSON(ctx, memberKey(me), lease{Holder: me, Until: p.cfg.Clock.Now()})
}

// readyParts returns, by partition, whether this instance holds it with
// its records loaded; a partition just loaded has its in-progress notices
// sent again first (its previous owner may have persisted "notified" and
// died before publishing): those of its own devices only, not every
// device's each time one of the partitions comes in (with three
// partitions taken one tick apart, a device was sent its notice three
// times).
func (p *Publisher) readyParts(ctx context.Context) []bool {
	ready := make([]bool, p.cfg.Partitions)
	var fresh []bool
	for i, hp := range p.own.held {
		select {
		case <-hp.ready:
		default:
			continue
		}
		ready[i] = true
		if !hp.live {
			hp.live = true
			if fresh == nil {
				fresh = make([]bool, p.cfg.Partitions)
			}
			fresh[i] = true
		}
	}
	if fresh != nil {
		n := p.cfg.Partitions
		for _, id := range p.idx.campaignIDs() {
			if c, ok := p.idx.campaign(id); ok && c.State == CampaignRunning {
				p.republish(ctx, &c, func(dev string) bool { return fresh[devicePartition(dev, n)] })
			}
		}
	}
	return ready
}

// ownerPass does this instance's per-device work on the partitions it
// owns, for every campaign, and writes their count records. Tick loop
// only.
func (p *Publisher) ownerPass(ctx context.Context) {
	p.ownPartitions(ctx)
	ready := p.readyParts(ctx)
	if p.own.seen == nil {
		p.own.seen = map[string]string{}
	}
	for _, id := range p.idx.campaignIDs() {
		c, ok := p.idx.campaign(id)
		if !ok {
			continue
		}
		prev, seen := p.own.seen[id]
		p.own.seen[id] = c.State
		moved := seen && prev != c.State
		switch {
		case moved && prev == CampaignRunning:
			p.clearNotices(ctx, &c) // ended or paused elsewhere
			p.own.mu.Lock()
			delete(p.own.notified, id)
			p.own.mu.Unlock()
		case moved && prev == CampaignPaused && c.State == CampaignRunning:
			p.republish(ctx, &c, nil)
		}
		if c.State == CampaignRunning {
			if err := p.stepOwned(ctx, &c, ready); err != nil && ctx.Err() == nil {
				p.log.Warn("campaign step (partitions)", "campaign", id, "err", err)
			}
		}
		if c.State == CampaignRunning || c.State == CampaignPaused || moved {
			p.writeCounts(ctx, &c, ready)
		}
	}
}

// stepOwned is the per-device part of step for the devices of the ready
// partitions this instance owns.
func (p *Publisher) stepOwned(ctx context.Context, c *Campaign, ready []bool) error {
	now := p.cfg.Clock.Now()
	if c.Phase < 0 {
		return nil
	}
	n := p.cfg.Partitions
	opened := c.PhaseEnds[c.Phase]
	if err := p.openDevs(ctx, c, opened, now, func(i int) bool { return ready[devicePartition(c.Targets[i], n)] }); err != nil {
		return err
	}
	if err := p.checkDevs(ctx, c, p.idx.devs(c.ID), now); err != nil {
		return err
	}
	if opened == 0 {
		return nil
	}
	// Pacing: each partition notifies its share of MaxDownloading, in
	// proportion to its devices among the opened ones.
	share := make([]int, n)
	for i := 0; i < opened; i++ {
		share[devicePartition(c.Targets[i], n)]++
	}
	for i := range share {
		share[i] = (p.cfg.MaxDownloading*share[i] + opened - 1) / opened
	}
	activeN := make([]int, n)
	for _, e := range p.idx.devs(c.ID) {
		if active(e.st.State) {
			activeN[devicePartition(e.st.Device, n)]++
		}
	}
	for i := 0; i < opened; i++ {
		dev := c.Targets[i]
		pi := devicePartition(dev, n)
		if !ready[pi] || activeN[pi] >= share[pi] {
			continue
		}
		st, rev, ok := p.idx.dev(c.ID, dev)
		if !ok || st.State != StateQueued {
			continue
		}
		if err := p.notify(ctx, c, st, rev); err != nil {
			return err
		}
		activeN[pi]++
	}
	return nil
}

// writeCounts writes the count record of c of every ready partition
// whose tally changed since its last record.
func (p *Publisher) writeCounts(ctx context.Context, c *Campaign, ready []bool) {
	n := p.cfg.Partitions
	pcs := make([]partCount, n)
	for i := range pcs {
		pcs[i] = partCount{Counts: map[string]uint64{}, Done: make([]int, len(c.PhaseEnds))}
	}
	for _, e := range p.idx.devs(c.ID) {
		pc := &pcs[devicePartition(e.st.Device, n)]
		for _, k := range countKeys(e.st) {
			pc.Counts[k]++
		}
		pc.Devices++
		if terminal(e.st.State) {
			pc.Terminal++
		}
		if active(e.st.State) {
			pc.Active++
		}
		if succeeded(e.st.State) && e.st.Phase >= 0 && e.st.Phase < len(pc.Done) {
			pc.Done[e.st.Phase]++
		}
	}
	for i, r := range ready {
		if !r {
			continue
		}
		b, _ := json.Marshal(pcs[i])
		if old, ok := p.idx.part(c.ID, i); ok {
			if ob, _ := json.Marshal(old); string(ob) == string(b) {
				continue
			}
		}
		if err := p.putLeaseJSON(ctx, countKey(c.ID, i), pcs[i]); err != nil {
			if ctx.Err() == nil {
				p.log.Warn("write partition counts", "campaign", c.ID, "partition", i, "err", err)
			}
			continue
		}
		p.idx.putPart(c.ID, i, pcs[i])
	}
}

// partTally sums c's count records (partitioned state): the leader's
// view of the devices of the open phases.
func (p *Publisher) partTally(c *Campaign) tally {
	var t tally
	terminalN := 0
	for i := range p.cfg.Partitions {
		pc, ok := p.idx.part(c.ID, i)
		if !ok {
			continue
		}
		t.devs += pc.Devices
		terminalN += pc.Terminal
		t.active += pc.Active
		if c.Phase >= 0 && c.Phase < len(pc.Done) {
			t.done += pc.Done[c.Phase]
		}
	}
	t.allTerminal = terminalN == t.devs
	return t
}

// notifiedIn reports whether dev has been notified in campaign (its
// record is past queued). A device of a partition this instance does
// not own is read from the KV, once per campaign.
func (p *Publisher) notifiedIn(campaign, dev string) bool {
	if st, _, ok := p.idx.dev(campaign, dev); ok {
		return st.State != StateQueued
	}
	if p.cfg.Partitions <= 1 || p.idx.holdsDevice(dev) {
		return false
	}
	p.own.mu.Lock()
	seen := p.own.notified[campaign][dev]
	p.own.mu.Unlock()
	if seen {
		return true
	}
	ctx, cancel := opCtx(p.closing)
	defer cancel()
	var st DeviceState
	if _, err := getJSON(ctx, p.st.campdev.of(dev), "device state", devKey(campaign, dev), &st); err != nil || st.State == StateQueued {
		return false
	}
	p.own.mu.Lock()
	if p.own.notified == nil {
		p.own.notified = map[string]map[string]bool{}
	}
	if p.own.notified[campaign] == nil {
		p.own.notified[campaign] = map[string]bool{}
	}
	p.own.notified[campaign][dev] = true
	p.own.mu.Unlock()
	return true
}

// campaignDevs returns every device record of campaign: the index's,
// and with a partitioned state those of the partitions this instance
// does not own, read from their buckets.
func (p *Publisher) campaignDevs(ctx context.Context, campaign string) ([]devEntry, error) {
	out := p.idx.devs(campaign)
	if p.cfg.Partitions <= 1 {
		return out, nil
	}
	for i, kv := range p.st.campdev.kvs {
		if p.idx.holdsPart(i) {
			continue
		}
		w, err := kv.Watch(ctx, campaign+".>", jetstream.IgnoreDeletes())
		if err != nil {
			return nil, err
		}
		err = func() error {
			defer w.Stop()
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case e, ok := <-w.Updates():
					if !ok || e == nil {
						return nil
					}
					var st DeviceState
					if json.Unmarshal(e.Value(), &st) == nil {
						out = append(out, devEntry{st: st, rev: e.Revision()})
					}
				}
			}
		}()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
