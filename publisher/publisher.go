package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// Publisher is one backend instance. Several may run against the same NATS.
// Its methods are safe for concurrent use.
type Publisher struct {
	cfg  Config
	log  *slog.Logger
	st   *stores
	met  *metrics
	gath prometheus.Gatherer
	idx  index

	cache imageCache
	ckeys contentKeys // encrypted payloads' content keys (enckeycache.go)
	// dl sends images' chunks: waves, requests, repair, pacing
	// (delivery.go).
	dl *delivery

	reportQ []chan inReport
	kickC   chan struct{}
	ready   chan struct{}
	stopped chan struct{}      // closed when Run's context ends
	done    chan struct{}      // closed when Run has returned
	running atomic.Bool        // Run (or Close) was called
	closing context.Context    // ended by Close
	shut    context.CancelFunc // ends closing
	bg      sync.WaitGroup     // the KV watches started by New

	leader bool // owned by the tick loop
	// led: this process has held the leader lease (tick loop only); see
	// acquireLease.
	led bool
	// own is this instance's share of a partitioned state (owner.go).
	own owner
	// resent holds when the leader last re-sent each device's notice
	// (key devKey); owned by the tick loop.
	resent map[string]time.Time

	live *liveState // event stream, console sessions, revocations (events.go)

	callOnce sync.Once
	callH    http.Handler // the handler NATS calls run through (natscall.go)

	wg sync.WaitGroup
}

// noticeStreamer is a transport that keeps retained notices in a stream
// the backend must create (broker.NATSTransport).
type noticeStreamer interface {
	NoticeStream(ctx context.Context) (jetstream.Stream, error)
}

// New opens (creating when missing) the JetStream buckets and streams of
// cfg.Namespace, and the retained-notice stream when cfg.Transport keeps
// one (NATS; devices wait for it and never create it), copies images
// stored by earlier versions into the image stream (migrateImages), loads
// campaign state into memory and keeps it current
// with KV watches that live as long as ctx or until Close. It does not
// subscribe to device traffic; call Run for that. Errors: ErrInvalid for a
// bad config, or the JetStream error.
func New(ctx context.Context, cfg Config) (_ *Publisher, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	closing, stop := context.WithCancel(context.Background())
	ctx, cancel := context.WithCancel(ctx) // the watches' life: New's ctx until Close
	context.AfterFunc(closing, cancel)
	defer func() {
		if err != nil {
			stop()
		}
	}()
	p := &Publisher{
		closing: closing, shut: stop,
		cfg: cfg, log: cfg.Logger.With("component", "publisher", "instance", cfg.Instance),
		idx:     index{camps: map[string]*campIndex{}, n: cfg.Partitions, hold: make([]bool, cfg.Partitions)},
		cache:   imageCache{byKey: map[string]*imageData{}},
		kickC:   make(chan struct{}, 1),
		ready:   make(chan struct{}),
		stopped: make(chan struct{}),
		done:    make(chan struct{}),
	}
	reg := cfg.Registerer
	p.gath = cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, p.gath = r, r
	}
	if p.met, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("publisher: metrics: %w", err)
	}
	p.dl = newDelivery(cfg, p.log, p.met, publisherHost{p})
	p.dl.recheck = p.kick
	if p.st, err = openStores(ctx, cfg.JetStream, cfg.Topics, cfg.Namespace, cfg.Replicas, cfg.Partitions); err != nil {
		return nil, err
	}
	if ns, ok := cfg.Transport.(noticeStreamer); ok {
		if _, err := ns.NoticeStream(ctx); err != nil {
			return nil, fmt.Errorf("publisher: %w", err)
		}
	}
	if err := p.st.images.register(reg); err != nil {
		return nil, fmt.Errorf("publisher: metrics: %w", err)
	}
	if err := p.migrateImages(ctx); err != nil {
		return nil, err
	}
	if err := p.migrateDeltaIndex(ctx); err != nil {
		return nil, err
	}
	if cfg.BootstrapKey != "" {
		if err := p.ensureBootstrapKey(ctx, cfg.BootstrapKey); err != nil {
			return nil, err
		}
	}
	if err := p.startWatches(ctx); err != nil {
		return nil, err
	}
	if err := p.openLive(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Run subscribes to reports, chunk requests and the NATS API (all shared
// between instances), and runs the leader's campaign loop every
// Config.TickInterval, until ctx ends or Close is called. It returns
// ctx's error (context.Canceled after Close), or the error of a failed
// subscription. It runs once per Publisher: a second
// call returns ErrRunning at once. On a clean stop it releases the leader
// lease so another instance takes over at once; Done is closed when it
// has returned and every goroutine it started has ended.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(p.closing, cancel)
	defer func() {
		stopOnClose()
		cancel()
		p.wg.Wait()
		p.dl.wait() // after the chunk servers and the tick loop: none starts more
		close(p.done)
	}()
	context.AfterFunc(ctx, func() { close(p.stopped) })
	p.reportQ = make([]chan inReport, reportWorkers)
	for i := range p.reportQ {
		p.reportQ[i] = make(chan inReport, 256)
		p.wg.Add(1)
		go func(q chan inReport) {
			defer p.wg.Done()
			p.reportWorker(ctx, q)
		}(p.reportQ[i])
	}
	for range 4 {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.dl.chunkServer(ctx)
		}()
	}
	var subs []broker.Subscription
	defer func() {
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer ucancel()
		for _, s := range subs {
			_ = s.Unsubscribe(uctx)
		}
	}()
	sub := func(t schemas.Topic, h broker.Handler, fam broker.Family) error {
		s, err := p.cfg.Transport.Subscribe(ctx, t, h, broker.SubscribeOptions{Family: fam, Shared: true})
		if err != nil {
			return fmt.Errorf("publisher: subscribe %s: %w", t.NATS, err)
		}
		subs = append(subs, s)
		return nil
	}
	if err := sub(p.cfg.Topics.ReportsAll(), p.handleReport, broker.FamilyReport); err != nil {
		return err
	}
	if err := sub(p.cfg.Topics.ChunkRequestsAll(), p.dl.handleChunkRequest, broker.FamilyChunkRequest); err != nil {
		return err
	}
	for _, op := range apiOps {
		t, err := p.cfg.Topics.API("campaign." + op)
		if err != nil {
			return err
		}
		if err := sub(t, p.handleAPI, broker.FamilyControl); err != nil {
			return err
		}
	}
	if t, err := p.cfg.Topics.API(callOp); err != nil {
		return err
	} else if err := sub(t, p.handleCall, broker.FamilyControl); err != nil {
		return err
	}
	close(p.ready)
	p.log.Info("publisher running", "namespace", p.cfg.Namespace, "root", p.cfg.Topics.Root())
	tk := time.NewTicker(p.cfg.TickInterval)
	defer tk.Stop()
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), kvOpTimeout)
		defer rcancel()
		p.releaseLease(rctx)
		p.releasePartitions(rctx)
	}()
	for {
		p.dl.pruneRequesters()
		p.tick(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C:
		case <-p.kickC:
		}
	}
}

// Done is closed once Run has returned and every goroutine it started
// has ended, or by Close when Run was never called.
func (p *Publisher) Done() <-chan struct{} { return p.done }

// Close stops Run as if its context had ended (it releases the leader
// lease and unsubscribes), ends the KV watches New started, and waits for
// all of that to finish, or for ctx to end (it then returns ctx's error;
// the goroutines still end on their own). A later Run returns ErrRunning.
// It does not close the Config's connections, which the caller owns. Safe
// to call more than once and concurrently with Run.
func (p *Publisher) Close(ctx context.Context) error {
	p.shut()
	if p.running.CompareAndSwap(false, true) {
		close(p.done) // Run never ran and now never will
	}
	stopped := make(chan struct{})
	go func() {
		<-p.done
		p.bg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Egress returns the chunk bytes (encoded messages) this instance has
// handed to the transport since New: broadcast waves, chunks broadcast
// again because many devices asked (repair), and chunks and tables sent
// to one requester (unicast). Safe for concurrent use.
func (p *Publisher) Egress() (wave, repair, unicast int64) {
	e := &p.dl.egress
	return e.Wave.Load(), e.Repair.Load(), e.Unicast.Load()
}

// Wave broadcasts every chunk of the image once on its chunk topic (QoS 0),
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
// flight has still to send are left to it (delivery.wave).
func (p *Publisher) Wave(ctx context.Context, digest string) error { return p.dl.wave(ctx, digest) }

// EgressTables returns the bytes of chunk tables sent to one requester,
// a part of Egress's unicast.
func (p *Publisher) EgressTables() int64 { return p.dl.egress.Table.Load() }

// Ready is closed once Run has subscribed to reports, chunk requests and
// the API, so that device traffic is being taken.
func (p *Publisher) Ready() <-chan struct{} { return p.ready }

// kick asks the loop for a tick soon (after a start or resume).
func (p *Publisher) kick() {
	select {
	case p.kickC <- struct{}{}:
	default:
	}
}
