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
// requesters.mu.
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
func (dl *delivery) refuseRequest(why string) {
	dl.met.chunkRequests.WithLabelValues(why).Inc()
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
func (dl *delivery) handleChunkRequest(_ context.Context, m broker.Message) {
	var r schemas.ChunkRequest
	if err := schemas.Decode(m.Payload, &r); err != nil {
		dl.refuseRequest("malformed")
		return
	}
	dev, ok := dl.cfg.Topics.ChunkRequester(m.Topic)
	if !ok {
		dl.refuseRequest("wrong-topic")
		return
	}
	if r.Requester != dev {
		dl.refuseRequest("wrong-requester")
		return
	}
	rt, err := dl.cfg.Topics.ChunkReply(dev)
	if err != nil || (r.ReplyTo != rt.MQTT && r.ReplyTo != rt.NATS) {
		dl.refuseRequest("bad-reply-to")
		return
	}
	c, ok := dl.requestCampaign(hex.EncodeToString(r.Image), dev)
	if !ok {
		dl.refuseRequest("not-target")
		return
	}
	if why := dl.admit(c, dev); why != "" {
		dl.refuseRequest(why)
		return
	}
	r.Campaign = c
	// Whether this instance's wave of the image flows as the request
	// comes, not as a chunk server takes it (repairBatch.midWave).
	flowing := dl.flowing(hex.EncodeToString(r.Image)) != nil
	select {
	case dl.chunkQ <- queuedRequest{r: r, flowing: flowing}:
	default:
		dl.refuseRequest("dropped")
	}
}

// queuedRequest is an admitted request waiting for a chunk server;
// flowing: this instance's wave of its image flowed as it came.
type queuedRequest struct {
	r       schemas.ChunkRequest
	flowing bool
}

// requestCampaign returns the running or paused campaign of the image
// (hex digest; the campaign's image or one of its deltas) in which dev has been notified (its record is past
// queued), and false when there is none.
func (dl *delivery) requestCampaign(digest, dev string) (string, bool) {
	for _, id := range dl.camps.campaignIDs() {
		c, ok := dl.camps.campaign(id)
		if !ok || (c.Image != digest && !slices.Contains(c.Deltas, digest)) || (c.State != CampaignRunning && c.State != CampaignPaused) {
			continue
		}
		if dl.camps.notifiedIn(id, dev) {
			return id, true
		}
	}
	return "", false
}

// admit takes one request of dev in campaign from its rate and checks its
// byte budget; it returns "" when the request may be served, or why not.
func (dl *delivery) admit(campaign, dev string) string {
	dl.reqs.mu.Lock()
	defer dl.reqs.mu.Unlock()
	k := devKey(campaign, dev)
	a := dl.reqs.m[k]
	if a == nil {
		if dl.reqs.m == nil {
			dl.reqs.m = map[string]*requester{}
		}
		a = &requester{campaign: campaign, lim: rate.NewLimiter(rate.Limit(dl.cfg.DeviceRequestRate), dl.cfg.DeviceRequestBurst)}
		dl.reqs.m[k] = a
	}
	if a.budget > 0 && a.sent >= a.budget {
		dl.overBudget(a, dev)
		return "over-budget"
	}
	if !a.lim.Allow() {
		return "rate-limited"
	}
	return ""
}

// overBudget logs, once per account, that dev used up its budget.
// Called with reqs.mu held.
func (dl *delivery) overBudget(a *requester, dev string) {
	if !a.warned {
		a.warned = true
		dl.log.Warn("device used up its chunk request budget; its requests are refused for the rest of the campaign",
			"device", dev, "campaign", a.campaign, "bytes", a.sent)
	}
}

// budgetFor is the most bytes one device may be sent by request in one
// campaign of image d: DeviceImageBudget times the image and its table.
func (dl *delivery) budgetFor(d *imageData) int64 {
	f := float64(d.info.Size+int64(len(d.tableBytes))) * dl.cfg.DeviceImageBudget
	return int64(min(f, math.MaxInt64/2))
}

// charge takes n bytes from the budget of r's requester (r.Campaign and
// r.Requester, as set by handleChunkRequest) and reports whether they fit.
// Bytes that do not fit are not taken.
func (dl *delivery) charge(r *schemas.ChunkRequest, d *imageData, n int) bool {
	dl.reqs.mu.Lock()
	defer dl.reqs.mu.Unlock()
	a := dl.reqs.m[devKey(r.Campaign, r.Requester)]
	if a == nil {
		return false // its campaign ended meanwhile
	}
	// The largest image asked for sets it (a campaign's image, or a
	// smaller delta of it: a device whose delta failed takes the image).
	a.budget = max(a.budget, dl.budgetFor(d))
	if a.sent+int64(n) > a.budget {
		dl.overBudget(a, r.Requester)
		return false
	}
	a.sent += int64(n)
	return true
}

// affordable returns the prefix of chunk list wl that fits in the budget
// of r's requester, and takes its bytes from the budget.
func (dl *delivery) affordable(r *schemas.ChunkRequest, d *imageData, wl []int) []int {
	dl.reqs.mu.Lock()
	defer dl.reqs.mu.Unlock()
	a := dl.reqs.m[devKey(r.Campaign, r.Requester)]
	if a == nil {
		return nil
	}
	// The largest image asked for sets it (a campaign's image, or a
	// smaller delta of it: a device whose delta failed takes the image).
	a.budget = max(a.budget, dl.budgetFor(d))
	for k, i := range wl {
		n := int64(chunkLen(d.table, i)) + chunkOverhead
		if a.sent+n > a.budget {
			dl.overBudget(a, r.Requester)
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
func (dl *delivery) pruneRequesters() {
	dl.reqs.mu.Lock()
	defer dl.reqs.mu.Unlock()
	for k, a := range dl.reqs.m {
		if c, ok := dl.camps.campaign(a.campaign); !ok || (c.State != CampaignRunning && c.State != CampaignPaused) {
			delete(dl.reqs.m, k)
		}
	}
}
