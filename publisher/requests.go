package publisher

import (
	"context"
	"encoding/hex"
	"math"
	"slices"
	"sync"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// Chunk requests and who may make them.
//
// A device publishes its chunk requests on its own request topic
// (schemas.Topics.ChunkRequestsFrom), the only one the broker's access
// policy lets it publish requests on (mochi's auth hook, the embedded
// NATS server's permissions, the generated mosquitto ACL): the topic a
// request arrives on is the authenticated requester. The publisher
// answers that device alone, on its own reply topic, and refuses a
// request whose fields name another requester or reply address. It
// serves only devices notified in a running or paused campaign of the
// requested image, each within a request rate (Config.DeviceRequestRate)
// and a byte budget per campaign (Config.DeviceImageBudget), so that a
// device can make the publisher send at most a bounded multiple of one
// image, and only to itself. Every piece of per-device state it keeps
// (rate limiters and budgets here, chunk-table records and repair
// batches in chunks.go) is keyed by such a device, and dropped with its
// campaign: it is bounded by the campaigns' targets.

// requester is one device's request account in one campaign. Guarded by
// Publisher.reqMu.
type requester struct {
	campaign string
	lim      *rate.Limiter
	// sent is the bytes this instance sent in answer to the device's
	// requests (chunks, tables, and re-broadcast chunks it asked for);
	// budget is its cap, set with the first answer (0 until then).
	sent, budget int64
	warned       bool
}

// requesters holds the request accounts, by devKey(campaign, device).
type requesters struct {
	mu sync.Mutex
	m  map[string]*requester
}

// refuseRequest counts a refused chunk request under why.
func (p *Publisher) refuseRequest(why string) {
	p.met.chunkRequests.WithLabelValues(why).Inc()
}

// handleChunkRequest is the handler of the shared chunk request
// subscription. The requester is the device the topic names (the broker
// lets a device publish only on its own), never what the request says: a
// request whose Requester or ReplyTo names anything else is refused, so a
// request cannot aim traffic at another device. A request from a device
// that is not a notified target of a running or paused campaign of the
// image, or over its rate or byte budget, is refused too. Accepted
// requests are queued for a chunk server, with Requester and Campaign set
// from what was checked.
func (p *Publisher) handleChunkRequest(_ context.Context, m broker.Message) {
	var r schemas.ChunkRequest
	if err := schemas.Decode(m.Payload, &r); err != nil {
		p.refuseRequest("malformed")
		return
	}
	dev, ok := p.cfg.Topics.ChunkRequester(m.Topic)
	if !ok {
		p.refuseRequest("wrong-topic")
		return
	}
	if r.Requester != dev {
		p.refuseRequest("wrong-requester")
		return
	}
	rt, err := p.cfg.Topics.ChunkReply(dev)
	if err != nil || (r.ReplyTo != rt.MQTT && r.ReplyTo != rt.NATS) {
		p.refuseRequest("bad-reply-to")
		return
	}
	c, ok := p.requestCampaign(hex.EncodeToString(r.Image), dev)
	if !ok {
		p.refuseRequest("not-target")
		return
	}
	if why := p.admit(c, dev); why != "" {
		p.refuseRequest(why)
		return
	}
	r.Campaign = c
	select {
	case p.chunkQ <- r:
	default:
		p.refuseRequest("dropped")
	}
}

// requestCampaign returns the running or paused campaign of the image
// (hex digest; the campaign's image or one of its deltas) in which dev has been notified (its record is past
// queued), and false when there is none.
func (p *Publisher) requestCampaign(digest, dev string) (string, bool) {
	for _, id := range p.idx.campaignIDs() {
		c, ok := p.idx.campaign(id)
		if !ok || (c.Image != digest && !slices.Contains(c.Deltas, digest)) || (c.State != CampaignRunning && c.State != CampaignPaused) {
			continue
		}
		if p.notifiedIn(id, dev) {
			return id, true
		}
	}
	return "", false
}

// admit takes one request of dev in campaign from its rate and checks its
// byte budget; it returns "" when the request may be served, or why not.
func (p *Publisher) admit(campaign, dev string) string {
	p.reqs.mu.Lock()
	defer p.reqs.mu.Unlock()
	k := devKey(campaign, dev)
	a := p.reqs.m[k]
	if a == nil {
		if p.reqs.m == nil {
			p.reqs.m = map[string]*requester{}
		}
		a = &requester{campaign: campaign, lim: rate.NewLimiter(rate.Limit(p.cfg.DeviceRequestRate), p.cfg.DeviceRequestBurst)}
		p.reqs.m[k] = a
	}
	if a.budget > 0 && a.sent >= a.budget {
		p.overBudget(a, dev)
		return "over-budget"
	}
	if !a.lim.Allow() {
		return "rate-limited"
	}
	return ""
}

// overBudget logs, once per account, that dev used up its budget.
// Called with reqs.mu held.
func (p *Publisher) overBudget(a *requester, dev string) {
	if !a.warned {
		a.warned = true
		p.log.Warn("device used up its chunk request budget; its requests are refused for the rest of the campaign",
			"device", dev, "campaign", a.campaign, "bytes", a.sent)
	}
}

// budgetFor is the most bytes one device may be sent by request in one
// campaign of image d: DeviceImageBudget times the image and its table.
func (p *Publisher) budgetFor(d *imageData) int64 {
	f := float64(d.info.Size+int64(len(d.tableBytes))) * p.cfg.DeviceImageBudget
	return int64(min(f, math.MaxInt64/2))
}

// charge takes n bytes from the budget of r's requester (r.Campaign and
// r.Requester, as set by handleChunkRequest) and reports whether they fit.
// Bytes that do not fit are not taken.
func (p *Publisher) charge(r *schemas.ChunkRequest, d *imageData, n int) bool {
	p.reqs.mu.Lock()
	defer p.reqs.mu.Unlock()
	a := p.reqs.m[devKey(r.Campaign, r.Requester)]
	if a == nil {
		return false // its campaign ended meanwhile
	}
	// The largest image asked for sets it (a campaign's image, or a
	// smaller delta of it: a device whose delta failed takes the image).
	a.budget = max(a.budget, p.budgetFor(d))
	if a.sent+int64(n) > a.budget {
		p.overBudget(a, r.Requester)
		return false
	}
	a.sent += int64(n)
	return true
}

// affordable returns the prefix of chunk list wl that fits in the budget
// of r's requester, and takes its bytes from the budget.
func (p *Publisher) affordable(r *schemas.ChunkRequest, d *imageData, wl []int) []int {
	p.reqs.mu.Lock()
	defer p.reqs.mu.Unlock()
	a := p.reqs.m[devKey(r.Campaign, r.Requester)]
	if a == nil {
		return nil
	}
	// The largest image asked for sets it (a campaign's image, or a
	// smaller delta of it: a device whose delta failed takes the image).
	a.budget = max(a.budget, p.budgetFor(d))
	for k, i := range wl {
		n := int64(chunkLen(d.table, i)) + chunkOverhead
		if a.sent+n > a.budget {
			p.overBudget(a, r.Requester)
			return wl[:k]
		}
		a.sent += n
	}
	return wl
}

// chunkOverhead is what a chunk message adds to its data (CBOR map, the
// image digest, the index), counted against budgets.
const chunkOverhead = 48

// pruneRequesters drops the request accounts of campaigns that are no
// longer running or paused.
func (p *Publisher) pruneRequesters() {
	p.reqs.mu.Lock()
	defer p.reqs.mu.Unlock()
	for k, a := range p.reqs.m {
		if c, ok := p.idx.campaign(a.campaign); !ok || (c.State != CampaignRunning && c.State != CampaignPaused) {
			delete(p.reqs.m, k)
		}
	}
}
