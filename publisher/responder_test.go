package publisher

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// fleet is a set of in-test responder devices: each takes its notice,
// reports downloading, then either failed or staged and confirmed.
type fleet struct {
	t      testing.TB
	e      *testEnv
	topics schemas.Topics
	seq    atomic.Int64
	mu     sync.Mutex
	devs   map[string]*responder
}

type responder struct {
	f       *fleet
	id      string
	tr      broker.Transport
	repMu   *sync.Mutex // orders reports: counter and publish together
	fail    bool
	hold    bool // stop after "downloading" until release
	held    *schemas.UpdateNotice
	counter uint64
	version uint64
	done    map[string]bool // campaigns finished
	// notices counts non-empty notices received; firstNotice and
	// confirmed are fleet sequence numbers (0 = never).
	notices     int
	firstNotice int64
	confirmed   int64
}

func newFleet(e *testEnv) *fleet {
	return &fleet{t: e.t, e: e, topics: e.cfg.Topics, devs: map[string]*responder{}}
}

func (f *fleet) add(id string, fail, hold bool) *responder {
	f.t.Helper()
	r := f.prepare(id, fail, hold)
	if err := r.subscribe(context.Background()); err != nil {
		f.t.Fatalf("subscribe: %v", err)
	}
	return r
}

// prepare connects a responder without subscribing it to its notice (see
// subscribe).
func (f *fleet) prepare(id string, fail, hold bool) *responder {
	f.t.Helper()
	r := &responder{f: f, id: id, tr: f.e.dial(id, false), repMu: new(sync.Mutex), fail: fail, hold: hold, version: 1, done: map[string]bool{}}
	f.mu.Lock()
	f.devs[id] = r
	f.mu.Unlock()
	f.t.Cleanup(func() { r.tr.Close(context.Background()) })
	return r
}

// subscribe subscribes r to its notice, retained included. Safe to call
// from any goroutine.
func (r *responder) subscribe(ctx context.Context) error {
	nt, _ := r.f.topics.Notice(r.id)
	_, err := r.tr.Subscribe(ctx, nt, r.onNotice, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true})
	return err
}

func (r *responder) report(c string, st schemas.State, code schemas.ErrCode) {
	r.repMu.Lock()
	defer r.repMu.Unlock()
	r.counter++
	rep := &schemas.DeviceReport{V: schemas.Version, Device: r.id, Campaign: c, State: st, ActiveVersion: r.version, Code: code, Counter: r.counter, Time: 1}
	b, err := schemas.Encode(rep)
	if err != nil {
		panic(err)
	}
	t, _ := r.f.topics.Report(r.id)
	r.tr.Publish(context.Background(), t, b, broker.PublishOptions{Family: broker.FamilyReport})
}

func (r *responder) onNotice(_ context.Context, m broker.Message) {
	if len(m.Payload) == 0 {
		return
	}
	var n schemas.UpdateNotice
	if err := schemas.Decode(m.Payload, &n); err != nil {
		return
	}
	r.f.mu.Lock()
	r.notices++
	if r.firstNotice == 0 {
		r.firstNotice = r.f.seq.Add(1)
	}
	if r.done[n.Campaign] || r.held != nil {
		r.f.mu.Unlock()
		return
	}
	hold := r.hold
	if hold {
		r.held = &n
	}
	r.f.mu.Unlock()
	r.report(n.Campaign, schemas.StateDownloading, schemas.CodeNone)
	if hold {
		return
	}
	r.finish(&n)
}

func (r *responder) finish(n *schemas.UpdateNotice) {
	if r.fail {
		r.report(n.Campaign, schemas.StateFailed, schemas.CodeDigest)
	} else {
		r.report(n.Campaign, schemas.StateStaged, schemas.CodeNone)
		r.repMu.Lock()
		r.version = 2
		r.repMu.Unlock()
		// Take the sequence number before the report leaves, so that any
		// notice it causes is numbered after it.
		r.f.mu.Lock()
		r.confirmed = r.f.seq.Add(1)
		r.f.mu.Unlock()
		r.report(n.Campaign, schemas.StateConfirmed, schemas.CodeNone)
	}
	r.f.mu.Lock()
	r.done[n.Campaign] = true
	r.f.mu.Unlock()
}

// release lets every held device finish, and future ones not hold.
func (f *fleet) release() {
	f.mu.Lock()
	var held []*responder
	for _, r := range f.devs {
		r.hold = false
		if r.held != nil {
			held = append(held, r)
		}
	}
	f.mu.Unlock()
	for _, r := range held {
		// Reports go from the test goroutine; the responder's own handler
		// ignores notices while held is set, so there is no race on counter.
		r.finish(r.held)
		f.mu.Lock()
		r.held = nil
		f.mu.Unlock()
	}
}

func (f *fleet) get(id string) responder {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.devs[id]
}
