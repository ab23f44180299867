package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/jsensure"
)

// The event stream: one ordered source for everything a live view shows.
//
// The JetStream stream <ns>_events sources the campaign bucket
// (KV_<ns>_campaigns) and the per-device campaign state bucket
// (KV_<ns>_campdev, and its other partitions KV_<ns>_campdev_p<i>, see
// partition.go): the server copies every write of either into it, in
// one order, without the publisher writing anything more on its hot
// paths. An event's id is its sequence in that stream, so a client that
// comes back with the id of the last event it saw (Last-Event-ID) gets
// exactly what came after, or, when the stream no longer holds that far
// back, a snapshot first (serveEvents). The stream keeps at most
// eventsPerSubject writes of each key, which makes it, filtered on one
// device, that device's report history, bounded per device and campaign
// (DeviceHistory).
//
// The server sources a bucket's write some milliseconds after it is made;
// a key written again before that (the buckets keep one value per key)
// reaches the event stream with its newer value only. So a live view
// never misses a device's latest state, but the history may lack a state
// that lasted only milliseconds.

// Bounds of the event stream.
const (
	// eventsPerSubject is the history kept of each campaign record and
	// each (campaign, device) state: DeviceHistory's depth.
	eventsPerSubject = 32
	// eventsMaxMsgs bounds the whole stream; Last-Event-ID older than its
	// first message gets a snapshot.
	eventsMaxMsgs = 2_000_000
	// eventsMaxAge bounds how long an event is kept.
	eventsMaxAge = 7 * 24 * time.Hour
)

// liveState is what the live views need: the event stream, console
// sessions and revocations.
type liveState struct {
	events   jetstream.Stream
	sessions jetstream.KeyValue
	campSubj string   // "$KV.<ns>_campaigns."
	devSubjs []string // "$KV.<bucket>." of each partition of the per-device state
	revs     revocations
}

// openLive opens (creating when missing) the event stream and the session
// bucket, and starts the watch of API key revocations.
func (p *Publisher) openLive(ctx context.Context) error {
	ns := p.cfg.Namespace
	l := &liveState{campSubj: "$KV." + ns + "_campaigns."}
	sources := []*jetstream.StreamSource{{Name: "KV_" + ns + "_campaigns"}}
	for i := range p.st.campdev.kvs {
		l.devSubjs = append(l.devSubjs, "$KV."+partitionBucket(ns, i)+".")
		sources = append(sources, &jetstream.StreamSource{Name: "KV_" + partitionBucket(ns, i)})
	}
	var err error
	l.events, err = jsensure.Stream(ctx, p.cfg.JetStream, jetstream.StreamConfig{
		Name:              ns + "_events",
		Description:       "firmcast live events: campaign and device state writes, in one order",
		Sources:           sources,
		Storage:           jetstream.FileStorage,
		Replicas:          p.cfg.Replicas,
		MaxMsgsPerSubject: eventsPerSubject,
		MaxMsgs:           eventsMaxMsgs,
		MaxAge:            eventsMaxAge,
		Discard:           jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("publisher: event stream: %w", err)
	}
	l.sessions, err = jsensure.KeyValue(ctx, p.cfg.JetStream, jetstream.KeyValueConfig{
		Bucket: ns + "_sessions", Description: "firmcast console sessions (ids hashed)", History: 1,
		Storage: jetstream.FileStorage, Replicas: p.cfg.Replicas, TTL: SessionLifetime,
	})
	if err != nil {
		return fmt.Errorf("publisher: kv sessions: %w", err)
	}
	if p.cfg.Replicas > 1 {
		l.sessions = newLeaderReadKV(p.cfg.JetStream, l.sessions)
	}
	l.revs.m = map[string]chan struct{}{}
	p.live = l
	ready := make(chan struct{})
	if err := p.watch(ctx, p.st.keys, func(e jetstream.KeyValueEntry) {
		var k apiKeyRecord
		if json.Unmarshal(e.Value(), &k) == nil && k.Revoked != nil {
			l.revs.revoke(k.ID)
		}
	}, ready); err != nil {
		return err
	}
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// revocations tells open event streams that their key was revoked.
type revocations struct {
	mu sync.Mutex
	m  map[string]chan struct{} // key id -> closed once revoked
}

// done returns a channel closed once key id is revoked.
func (r *revocations) done(id string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.m[id]
	if !ok {
		c = make(chan struct{})
		r.m[id] = c
	}
	return c
}

func (r *revocations) revoke(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.m[id]
	if !ok {
		c = make(chan struct{})
		r.m[id] = c
	}
	select {
	case <-c:
	default:
		close(c)
	}
}

// event is one write the event stream carries, decoded.
type event struct {
	seq      uint64
	campaign string       // the campaign it is about
	c        *Campaign    // a campaign record write
	dev      *DeviceState // a device state write
}

// devSubject reports whether subj is a write of a per-device state.
func (l *liveState) devSubject(subj string) bool {
	for _, s := range l.devSubjs {
		if strings.HasPrefix(subj, s) {
			return true
		}
	}
	return false
}

// decodeEvent decodes a message of the event stream; ok is false for a
// delete, or a message that is neither kind.
func (l *liveState) decodeEvent(m jetstream.Msg) (event, bool) {
	md, err := m.Metadata()
	if err != nil {
		return event{}, false
	}
	ev := event{seq: md.Sequence.Stream}
	if op := m.Headers().Get("KV-Operation"); op != "" {
		return ev, false
	}
	subj := m.Subject()
	switch {
	case strings.HasPrefix(subj, l.campSubj):
		var c Campaign
		if json.Unmarshal(m.Data(), &c) != nil {
			return ev, false
		}
		ev.campaign, ev.c = c.ID, &c
	case l.devSubject(subj):
		var st DeviceState
		if json.Unmarshal(m.Data(), &st) != nil {
			return ev, false
		}
		ev.campaign, ev.dev = st.Campaign, &st
	default:
		return ev, false
	}
	return ev, true
}

// MaxHistory bounds DeviceHistory's answer.
const MaxHistory = 500

// DeviceHistory returns what device id reported, as the state each
// report left it in, oldest first: the last eventsPerSubject states of
// each campaign it took part in, at most limit (1..MaxHistory, the
// newest). Errors: ErrNotFound, ErrInvalid.
func (p *Publisher) DeviceHistory(ctx context.Context, id string, limit int) ([]DeviceState, error) {
	if limit < 1 || limit > MaxHistory {
		return nil, fmt.Errorf("%w: limit %d, want 1..%d", ErrInvalid, limit, MaxHistory)
	}
	if _, err := p.Device(ctx, id); err != nil {
		return nil, err
	}
	l := p.live
	cctx, cancel := context.WithTimeout(ctx, kvBudget)
	defer cancel()
	cons, err := p.cfg.JetStream.OrderedConsumer(cctx, l.events.CachedInfo().Config.Name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{l.devSubjs[devicePartition(id, len(l.devSubjs))] + "*." + id},
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: device history: %w", err)
	}
	info, err := cons.Info(cctx)
	if err != nil {
		return nil, fmt.Errorf("publisher: device history: %w", err)
	}
	out := []DeviceState{}
	for left := info.NumPending; left > 0; {
		batch, err := cons.Fetch(int(min(left, 256)), jetstream.FetchMaxWait(kvOpTimeout))
		if err != nil {
			return nil, fmt.Errorf("publisher: device history: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if ev, ok := l.decodeEvent(m); ok && ev.dev != nil {
				out = append(out, *ev.dev)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("publisher: device history: %w", err)
		}
		if n == 0 {
			break
		}
		left -= uint64(n)
	}
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}
