package publisher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// GET /api/v1/events: server-sent events.
//
// Each stream reads the event stream (events.go) from one point on, with
// an ordered consumer, and sends what it read coalesced: at most one
// "update" event every eventsFlush, holding each touched campaign's
// status (its exact counters, from the index) and the newest state of
// each device that changed, so that 10,000 devices changing state in a
// second make five browser updates, not 10,000. An update's id is the
// sequence of the last message it covers; a stream resumed with
// Last-Event-ID (or ?last_event_id=) goes on right after it, or starts
// with a "snapshot" event when the stream no longer reaches back that
// far. Nothing is skipped: what an update leaves out of a device is only
// what a newer state of it replaced.
//
// Each stream sets its own write deadline before every write
// (http.ResponseController), so the server's write timeout for ordinary
// requests does not end it, while a client that stops reading is dropped
// after eventsWriteTimeout. It ends when its key is revoked (at once,
// through the key bucket's watch), when its session ends (checked every
// eventsRecheck), or when the client leaves.

// Tunables of event streams.
const (
	eventsFlush        = 200 * time.Millisecond
	eventsWriteTimeout = 10 * time.Second
	eventsRecheck      = 15 * time.Second
	// eventsMaxDevices bounds the devices of one update event; more go in
	// the following ones (only the last of which carries the id).
	eventsMaxDevices = 2000
	// eventsStatusRepeat is how long after a campaign's last event its
	// status is still compared at every flush and sent when it changed
	// (the index may apply a write just after the event stream has it).
	eventsStatusRepeat = 5 * time.Second
)

// EventBatch is the data of "update" and "snapshot" events.
type EventBatch struct {
	// Campaigns are the statuses of the campaigns concerned.
	Campaigns []Status `json:"campaigns"`
	// Devices are the newest states of devices that changed (updates
	// only).
	Devices []DeviceState `json:"devices,omitempty"`
}

// pending is what a stream read and has not sent yet. Guarded by mu.
type pending struct {
	mu      sync.Mutex
	seq     uint64                  // last sequence read
	camps   map[string]bool         // campaigns touched
	devs    map[string]*DeviceState // by devKey
	order   []string                // devKey in first-touch order
	wake    chan struct{}
	readErr error
}

func (q *pending) add(ev event, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq = ev.seq
	if ok {
		q.camps[ev.campaign] = true
		if ev.dev != nil {
			k := devKey(ev.dev.Campaign, ev.dev.Device)
			if _, seen := q.devs[k]; !seen {
				q.order = append(q.order, k)
			}
			q.devs[k] = ev.dev
		}
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns and clears what is pending.
func (q *pending) take() (seq uint64, camps map[string]bool, devs []DeviceState, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	seq, camps, err = q.seq, q.camps, q.readErr
	devs = make([]DeviceState, 0, len(q.order))
	for _, k := range q.order {
		devs = append(devs, *q.devs[k])
	}
	q.camps, q.devs, q.order = map[string]bool{}, map[string]*DeviceState{}, nil
	return seq, camps, devs, err
}

// serveEvents is GET /api/v1/events[?campaign=ID].
func (p *Publisher) serveEvents(w http.ResponseWriter, r *http.Request) {
	who, cookie, err := p.eventAuth(r)
	if err != nil {
		p.writeErr(w, r, err)
		return
	}
	campaign := r.URL.Query().Get("campaign")
	if campaign != "" {
		if _, err := p.Campaign(r.Context(), campaign); err != nil {
			p.writeErr(w, r, err)
			return
		}
	}
	var last uint64
	if s := r.Header.Get("Last-Event-ID"); s != "" || r.URL.Query().Get("last_event_id") != "" {
		if s == "" {
			s = r.URL.Query().Get("last_event_id")
		}
		if last, err = strconv.ParseUint(s, 10, 64); err != nil {
			p.writeErr(w, r, fmt.Errorf("%w: Last-Event-ID %q is not an event id", ErrInvalid, s))
			return
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	info, err := p.live.events.Info(ctx)
	if err != nil {
		p.writeErr(w, r, fmt.Errorf("publisher: event stream: %w", err))
		return
	}
	snapshot := last == 0 || last+1 < info.State.FirstSeq || last > info.State.LastSeq
	start := last + 1
	if snapshot {
		start = info.State.LastSeq + 1
	}
	cons, err := p.cfg.JetStream.OrderedConsumer(ctx, info.Config.Name, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		p.writeErr(w, r, fmt.Errorf("publisher: event stream: %w", err))
		return
	}
	p.met.apiRequests.WithLabelValues("http", "200").Inc()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	es := &eventStream{p: p, w: w, rc: http.NewResponseController(w), campaign: campaign, sent: map[string]string{}, touched: map[string]time.Time{}}
	if snapshot {
		if err := es.snapshot(info.State.LastSeq); err != nil {
			return
		}
	} else if err := es.comment("resumed after " + strconv.FormatUint(last, 10)); err != nil {
		return
	}

	q := &pending{camps: map[string]bool{}, devs: map[string]*DeviceState{}, wake: make(chan struct{}, 1)}
	it, err := cons.Messages()
	if err != nil {
		return
	}
	defer it.Stop()
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				q.mu.Lock()
				q.readErr = err
				q.mu.Unlock()
				cancel()
				return
			}
			ev, ok := p.live.decodeEvent(m)
			if ok && campaign != "" && ev.campaign != campaign {
				ok = false
			}
			q.add(ev, ok)
		}
	}()

	revoked := p.live.revs.done(who.KeyID)
	flush := time.NewTicker(eventsFlush)
	defer flush.Stop()
	recheck := time.NewTicker(eventsRecheck)
	defer recheck.Stop()
	var sentSeq uint64 = start - 1
	for {
		select {
		case <-ctx.Done():
			return
		case <-revoked:
			es.end("revoked", "the API key of this stream was revoked")
			return
		case <-recheck.C:
			if err := p.recheckAuth(r, cookie); err != nil {
				es.end("unauthorized", err.Error())
				return
			}
			if err := es.comment("ping"); err != nil {
				return
			}
		case <-flush.C:
			seq, camps, devs, rerr := q.take()
			if rerr != nil {
				return
			}
			if err := es.update(seq, sentSeq, camps, devs); err != nil {
				return
			}
			sentSeq = max(sentSeq, seq)
		}
	}
}

// eventAuth authenticates an event stream request by bearer key or
// session cookie (read scope). cookie is the session id, when by cookie.
func (p *Publisher) eventAuth(r *http.Request) (Principal, string, error) {
	if r.Header.Get("Authorization") != "" {
		who, err := p.bearer(r, ScopeRead)
		return who, "", err
	}
	who, _, ok, err := p.cookieAuth(r)
	if !ok {
		who, err := p.bearer(r, ScopeRead) // the "missing Authorization" error
		return who, "", err
	}
	if err != nil {
		return Principal{}, "", err
	}
	c, _ := r.Cookie(CookieName(SessionCookie, r))
	return who, c.Value, nil
}

// recheckAuth checks that a stream's key (or session) still holds.
func (p *Publisher) recheckAuth(r *http.Request, cookie string) error {
	if cookie != "" {
		_, _, err := p.SessionOf(r.Context(), cookie)
		return err
	}
	_, err := p.bearer(r, ScopeRead)
	return err
}

// writeErr writes err as the JSON error answer serveAPI gives.
func (p *Publisher) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		p.log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	p.met.apiRequests.WithLabelValues("http", strconv.Itoa(status)).Inc()
	writeJSON(w, status, ErrorReply{Error: err.Error()})
}

// eventStream writes one client's events.
type eventStream struct {
	p        *Publisher
	w        http.ResponseWriter
	rc       *http.ResponseController
	campaign string
	// sent is the JSON of each campaign's status as last sent; touched
	// when each campaign last had an event.
	sent    map[string]string
	touched map[string]time.Time
	buf     bytes.Buffer
}

// write sends one event (or comment) with its own write deadline.
func (es *eventStream) write(b []byte) error {
	if err := es.rc.SetWriteDeadline(time.Now().Add(eventsWriteTimeout)); err != nil && err != http.ErrNotSupported {
		return err
	}
	if _, err := es.w.Write(b); err != nil {
		return err
	}
	return es.rc.Flush()
}

func (es *eventStream) comment(s string) error { return es.write([]byte(": " + s + "\n\n")) }

// event sends event kind with data as JSON, and id when not 0.
func (es *eventStream) event(kind string, id uint64, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	es.buf.Reset()
	if id != 0 {
		fmt.Fprintf(&es.buf, "id: %d\n", id)
	}
	fmt.Fprintf(&es.buf, "event: %s\ndata: %s\n\n", kind, b)
	return es.write(es.buf.Bytes())
}

// end sends an "end" event saying why the stream ends.
func (es *eventStream) end(code, msg string) {
	_ = es.event("end", 0, map[string]string{"code": code, "error": msg})
}

// statuses returns the current statuses of the campaigns: the stream's
// campaign, or all of them when ids is nil and the stream has none.
func (es *eventStream) statuses(ids map[string]bool) []Status {
	p := es.p
	var out []Status
	if ids == nil {
		ids = map[string]bool{}
		if es.campaign != "" {
			ids[es.campaign] = true
		} else {
			for _, id := range p.idx.campaignIDs() {
				ids[id] = true
			}
		}
	}
	for id := range ids {
		if c, ok := p.idx.campaign(id); ok {
			out = append(out, p.status(&c))
		}
	}
	return out
}

// snapshot sends the current statuses as event "snapshot" with id seq.
func (es *eventStream) snapshot(seq uint64) error {
	ss := es.statuses(nil)
	for _, s := range ss {
		b, _ := json.Marshal(s)
		es.sent[s.ID] = string(b)
	}
	return es.event("snapshot", seq, EventBatch{Campaigns: nonNil(ss)})
}

// update sends what was read since the last flush: the statuses of the
// campaigns it touched and of those touched within eventsStatusRepeat
// whose status changed since last sent, and the devices. seq is the last
// sequence read (sent as the id when past sentSeq).
func (es *eventStream) update(seq, sentSeq uint64, camps map[string]bool, devs []DeviceState) error {
	now := time.Now()
	for id := range camps {
		es.touched[id] = now
	}
	ids := map[string]bool{}
	for id, t := range es.touched {
		if now.Sub(t) > eventsStatusRepeat {
			delete(es.touched, id)
			continue
		}
		ids[id] = true
	}
	var changed []Status
	for _, s := range es.statuses(ids) {
		b, _ := json.Marshal(s)
		if es.sent[s.ID] != string(b) || camps[s.ID] {
			es.sent[s.ID] = string(b)
			changed = append(changed, s)
		}
	}
	if len(changed) == 0 && len(devs) == 0 && seq <= sentSeq {
		return nil
	}
	for len(devs) > eventsMaxDevices {
		if err := es.event("update", 0, EventBatch{Campaigns: []Status{}, Devices: devs[:eventsMaxDevices]}); err != nil {
			return err
		}
		devs = devs[eventsMaxDevices:]
	}
	id := seq
	if seq <= sentSeq {
		id = 0
	}
	return es.event("update", id, EventBatch{Campaigns: nonNil(changed), Devices: devs})
}
