package publisher

import (
	"context"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// reportWorkers is the number of goroutines applying reports; a device's
// reports always go to the same one, so they are applied in order.
const reportWorkers = 8

type inReport struct {
	r    schemas.DeviceReport
	recv time.Time
}

// handleReport is the transport handler of the shared report subscription.
// It checks the report against its topic and hands it to a worker.
func (p *Publisher) handleReport(ctx context.Context, m broker.Message) {
	var r schemas.DeviceReport
	if err := schemas.Decode(m.Payload, &r); err != nil {
		p.met.reports.WithLabelValues("malformed").Inc()
		return
	}
	if t, err := p.cfg.Topics.Report(r.Device); err != nil || (m.Topic != t.MQTT && m.Topic != t.NATS) {
		p.met.reports.WithLabelValues("wrong-topic").Inc()
		return
	}
	p.dl.observeProgress(&r) // in-wave feedback (wavepace.go)
	p.dl.observeReady(&r)    // a wave's devices took its table (awaitReady)
	if p.forward(&r, m.Payload) {
		return
	}
	p.queueReport(ctx, r)
}

// queueReport hands r to the worker of its device.
func (p *Publisher) queueReport(ctx context.Context, r schemas.DeviceReport) {
	h := fnv.New32a()
	h.Write([]byte(r.Device))
	select {
	case p.reportQ[h.Sum32()%reportWorkers] <- inReport{r: r, recv: p.cfg.Clock.Now()}:
	case <-ctx.Done():
	case <-p.stopped:
	}
}

// reportWorker applies reports from q. When it falls behind, it drains
// what is queued and writes only the newest report (highest counter) of
// each device and campaign: the older ones are superseded, since only a
// device's latest state is kept.
func (p *Publisher) reportWorker(ctx context.Context, q <-chan inReport) {
	type key struct{ dev, camp string }
	var batch []inReport
	newest := map[key]int{}
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-q:
			batch = append(batch[:0], in)
		drain:
			for len(batch) < cap(q) {
				select {
				case in := <-q:
					batch = append(batch, in)
				default:
					break drain
				}
			}
		}
		clear(newest)
		for i, in := range batch {
			k := key{in.r.Device, in.r.Campaign}
			if j, ok := newest[k]; !ok || batch[j].r.Counter < in.r.Counter {
				newest[k] = i
			}
		}
		for i := range batch {
			in := &batch[i]
			res := resSuperseded
			if newest[key{in.r.Device, in.r.Campaign}] == i {
				var err error
				res, err = p.applyReport(ctx, &in.r, in.recv)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					p.log.Warn("apply report", "device", in.r.Device, "campaign", in.r.Campaign, "err", err)
					res = resError
				}
			}
			p.met.reports.WithLabelValues(string(res)).Inc()
		}
	}
}

// reportResult is how a report was taken: the result label of
// firmcast_publisher_reports_total.
type reportResult string

const (
	resApplied reportResult = "applied"
	// Ignored reports.
	resNotTarget     reportResult = "not-target"
	resStale         reportResult = "stale"
	resImpossible    reportResult = "impossible"
	resNotNotified   reportResult = "not-notified"
	resFinal         reportResult = "final"
	resRepeated      reportResult = "repeated"
	resCampaignEnded reportResult = "campaign-ended"
	// resSecurityEvent: a device's report of a message it refused (logged,
	// never applied to any campaign or to the registry).
	resSecurityEvent reportResult = "security-event"
	// resSuperseded: a newer report of the device came in the same batch.
	resSuperseded reportResult = "superseded"
	// resError: applying failed (logged).
	resError reportResult = "error"
	// resForwarded: sent on to the owner of the device's partition
	// (owner.go), which counts it again as it takes it.
	resForwarded reportResult = "forwarded"
)

// applyReport updates the device's campaign state from a report, with
// compare-and-set on the stored revision. It returns how the report was
// taken: resApplied, or why it was ignored, or resSecurityEvent.
func (p *Publisher) applyReport(ctx context.Context, r *schemas.DeviceReport, recv time.Time) (reportResult, error) {
	if r.Security {
		p.log.Warn("device refused a message it could not authenticate or that was not for it",
			"device", r.Device, "code", r.Code, "text", r.Text)
		return resSecurityEvent, nil
	}
	if r.Campaign == "" {
		return p.applyIdleReport(ctx, r, recv)
	}
	c, ok := p.idx.campaign(r.Campaign)
	if !ok {
		return resNotTarget, nil
	}
	if c.ended() || c.State == CampaignCreated {
		p.idx.addIgnored(r.Campaign)
		return resCampaignEnded, nil
	}
	key := devKey(r.Campaign, r.Device)
	// The index may lag writes by other instances: a verdict to ignore is
	// only given on state read fresh from the KV.
	st, rev, cached := p.idx.dev(r.Campaign, r.Device)
	next := r.State
	lost := false // a compare-and-set lost: with partitions, read from the stream leader
	for range maxCASAttempts {
		if !cached {
			st = DeviceState{}
			get := getJSON
			if lost && p.cfg.Partitions > 1 {
				get = leaderGetJSON
			}
			var err error
			rev, err = get(ctx, p.st.campdev.of(r.Device), "device state", key, &st)
			if errors.Is(err, ErrNotFound) {
				p.idx.addIgnored(r.Campaign)
				return resNotTarget, nil
			}
			if err != nil {
				return "", err
			}
			// The index lagged (a watch that missed another instance's
			// write, a failover): what was read fresh is the truth.
			p.idx.putDev(st, rev)
		}
		why := resStale // order is judged by the device's counter first
		if r.Counter > st.Counter {
			why = judge(st.State, next)
		}
		if why != resApplied {
			if cached {
				cached = false
				continue
			}
			p.idx.addIgnored(r.Campaign)
			return why, nil
		}
		n := st
		n.State, n.Counter, n.BytesDone, n.BytesTotal, n.ActiveVersion = DevState(next), r.Counter, r.BytesDone, r.BytesTotal, r.ActiveVersion
		n.Code, n.Text = "", ""
		if r.Code != schemas.CodeNone {
			n.Code, n.Text = r.Code.String(), r.Text
		}
		n.Updated, n.Progress = recv.UTC(), recv.UTC()
		nrev, err := updateJSON(ctx, p.st.campdev.of(r.Device), "device state", key, n, rev)
		if isConflict(err) {
			cached, lost = false, true
			continue
		}
		if err != nil {
			return "", err
		}
		p.idx.putDev(n, nrev)
		if terminal(n.State) && !terminal(st.State) {
			p.clearNotice(ctx, r.Device)
			p.recordOutcome(ctx, r, recv)
		}
		return resApplied, nil
	}
	return "", ErrConflict
}

func reportView(r *schemas.DeviceReport, recv time.Time) *Report {
	v := &Report{
		Campaign: r.Campaign, State: r.State.String(), BytesDone: r.BytesDone, BytesTotal: r.BytesTotal,
		ActiveVersion: r.ActiveVersion, Counter: r.Counter, DeviceTime: r.Time, Received: recv.UTC(), Text: r.Text,
	}
	if r.Code != schemas.CodeNone {
		v.Code = r.Code.String()
	}
	return v
}

// recordOutcome writes a device's final report of a campaign, its active
// version and, when it confirmed the campaign's image (or skipped it,
// already running it), that image into the registry.
func (p *Publisher) recordOutcome(ctx context.Context, r *schemas.DeviceReport, recv time.Time) {
	image := ""
	if c, ok := p.idx.campaign(r.Campaign); ok && (r.State == schemas.StateConfirmed || r.State == schemas.StateSkipped) {
		image = c.Image
	}
	_, _, err := mutateJSON(ctx, p.st.devices, "device", r.Device, func(d *deviceRecord) error {
		if d.LastReport != nil && d.LastReport.Campaign == r.Campaign && d.LastReport.Counter >= r.Counter {
			return errNoChange
		}
		d.LastReport = reportView(r, recv)
		d.ActiveVersion = r.ActiveVersion
		if image != "" {
			d.Image = image
		}
		if len(r.ActiveDigest) != 0 {
			d.Image = hex.EncodeToString(r.ActiveDigest) // what it runs, as it says
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		p.log.Warn("record outcome", "device", r.Device, "err", err)
	}
}

// applyIdleReport records a report outside any campaign (a device saying
// what it runs) in the registry.
func (p *Publisher) applyIdleReport(ctx context.Context, r *schemas.DeviceReport, recv time.Time) (reportResult, error) {
	res := resApplied
	_, _, err := mutateJSON(ctx, p.st.devices, "device", r.Device, func(d *deviceRecord) error {
		if d.LastReport != nil && d.LastReport.Campaign == "" && d.LastReport.Counter >= r.Counter {
			res = resStale
			return errNoChange
		}
		d.LastReport = reportView(r, recv)
		d.ActiveVersion = r.ActiveVersion
		if len(r.ActiveDigest) != 0 {
			d.Image = hex.EncodeToString(r.ActiveDigest)
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return resNotTarget, nil
	}
	return res, err
}
