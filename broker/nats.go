package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
)

// NATSTransport is a Transport over NATS (nats.go): core publish/subscribe,
// queue groups for shared subscriptions, and request/reply with the
// inbox under the topic root. NATS has no retained messages, so retained
// notices live in a JetStream stream (NoticeStream) that keeps the last
// message per notice subject, created by the backend only:
//
//   - Publish with Retain writes to the stream (a JetStream publish,
//     acknowledged); Retain with an empty payload purges that subject.
//   - Subscribe with Retained to one notice subject (what a device does)
//     makes a core subscription, then reads the subject's last message by
//     a direct get that names the subject in the API subject
//     ($JS.API.DIRECT.GET.<stream>.<subject>), and reads it again after
//     every reconnection: no JetStream consumer, no stream info, nothing
//     a device's permissions must open beyond its own notice. While the
//     stream is missing (the backend has not created it yet), the read is
//     retried with back-off for as long as the subscription lives.
//   - Subscribe with Retained to the notice wildcard (backend tools) reads
//     the stream through an ordered consumer delivering the last message
//     per subject, then live ones.
//
// Retain is therefore accepted only on notice subjects (root.v1.dev.*.notice).
// A plain publish to a notice subject is also captured by the stream.
//
// Only features present in both Debian's NATS 2.9.10 and the embedded
// 2.15 are used: a single filter subject per consumer, MaxMsgsPerSubject,
// subject purge, direct get with the subject in the API subject.
//
// While the connection is down, nats.go buffers publishes (up to 8 MiB)
// and sends them on reconnection; Publish then returns nil without the
// broker's acknowledgement. It is safe for concurrent use.
type NATSTransport struct {
	ep     endpoint
	nc     *nats.Conn
	js     jetstream.JetStream
	ctx    context.Context
	cancel context.CancelFunc
	stream string

	// nsMu guards ns, the notice stream once this (backend) transport
	// has made sure it exists (NoticeStream).
	nsMu sync.Mutex
	ns   jetstream.Stream

	mu     sync.Mutex
	subs   map[*natsSub]struct{}
	onUp   map[int]func()
	nextUp int
	closed bool
}

type natsSub struct {
	t    *NATSTransport
	sub  *nats.Subscription
	cc   jetstream.ConsumeContext
	d    *dispatcher
	once sync.Once
	// last reads the retained notice of a one-subject retained
	// subscription (nats_notice.go); nil otherwise.
	last *lastNotice
}

func dialNATS(ctx context.Context, ep endpoint) (*NATSTransport, error) {
	inbox, err := inboxTopic(ep.Topics, ep.ClientID)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	life, cancel := context.WithCancel(context.Background())
	t := &NATSTransport{ep: ep, ctx: life, cancel: cancel, stream: NoticeStreamName(ep.Topics), subs: map[*natsSub]struct{}{}, onUp: map[int]func(){}}
	opts := []nats.Option{
		nats.Name(ep.ClientID),
		nats.CustomInboxPrefix(inbox.NATS),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(func(n int) time.Duration { return backoff(n, ep.ReconnectMax) }),
		nats.Timeout(ep.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				ep.Logger.Info("nats connection lost; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			ep.Logger.Debug("nats reconnected")
			t.reconnected()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			ep.Logger.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	if ep.InOrder {
		opts = append(opts, nats.DontRandomize())
	}
	if ep.Username != "" || ep.Password != "" {
		opts = append(opts, nats.UserInfo(ep.Username, ep.Password))
	}
	if ep.tls {
		if ep.TLS != nil {
			opts = append(opts, nats.Secure(ep.TLS))
		} else {
			opts = append(opts, nats.Secure())
		}
	}
	type res struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := nats.Connect(ep.serverList(), opts...)
		ch <- res{nc, err}
	}()
	var r res
	select {
	case r = <-ch:
	case <-ctx.Done():
		cancel()
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("broker: nats connect %s: %w", ep.url, ctx.Err())
	}
	if r.err != nil {
		cancel()
		if errors.Is(r.err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(r.err.Error()), "authorization") {
			return nil, fmt.Errorf("%w: nats %s: %v", ErrNotAuthorized, ep.url, r.err)
		}
		return nil, fmt.Errorf("broker: nats connect %s: %w", ep.url, r.err)
	}
	t.nc = r.nc
	js, err := jetstream.New(r.nc)
	if err != nil {
		r.nc.Close()
		cancel()
		return nil, fmt.Errorf("broker: nats jetstream: %w", err)
	}
	t.js = js
	return t, nil
}

// Dialect returns DialectNATS.
func (t *NATSTransport) Dialect() Dialect { return DialectNATS }

// ReceiveQueue implements Transport: 0, nats.go reads on whatever the
// handlers do (into each subscription's pending buffer).
func (t *NATSTransport) ReceiveQueue() int { return 0 }

// JetStream returns the JetStream handle of the connection, for the
// backend's streams and key-value stores.
func (t *NATSTransport) JetStream() jetstream.JetStream { return t.js }

func (t *NATSTransport) isNotice(subject string) bool {
	return natsMatch(t.ep.Topics.NoticesAll().NATS, subject)
}

// Publish implements Publisher. Chunks are fire-and-forget; other families
// are flushed so that the broker has them when Publish returns, and a
// publish the server's permissions deny returns ErrNotAuthorized. Retain
// works on notice subjects only (see NATSTransport).
func (t *NATSTransport) Publish(ctx context.Context, topic schemas.Topic, payload []byte, opts PublishOptions) error {
	if t.isClosed() {
		return ErrClosed
	}
	subj := topic.NATS
	if subj == "" {
		return fmt.Errorf("broker: publish: empty nats subject")
	}
	if opts.Retain {
		if !t.isNotice(subj) {
			return fmt.Errorf("broker: retain on %s: NATS keeps retained messages for notice subjects only", subj)
		}
		return t.publishRetained(ctx, subj, payload)
	}
	if err := t.nc.Publish(subj, payload); err != nil {
		return t.connErr("publish "+subj, err)
	}
	if opts.Family == FamilyChunk || t.nc.IsReconnecting() {
		return nil
	}
	fctx, cancel := withDefaultDeadline(ctx, t.ep.ConnectTimeout)
	defer cancel()
	if err := t.nc.FlushWithContext(fctx); err != nil && !t.nc.IsReconnecting() {
		return t.connErr("publish "+subj, err)
	}
	// The server answers a denied publish with an asynchronous -ERR, which
	// arrives before the flush's PONG.
	if err := t.nc.LastError(); err != nil && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), `Publish to "`+subj+`"`) {
		return fmt.Errorf("%w: publish to %s", ErrNotAuthorized, subj)
	}
	return nil
}

func (t *NATSTransport) connErr(what string, err error) error {
	if errors.Is(err, nats.ErrConnectionClosed) && t.isClosed() {
		return ErrClosed
	}
	if errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("%w: %s: %v", ErrNotAuthorized, what, err)
	}
	return fmt.Errorf("broker: %s: %w", what, err)
}

func (t *NATSTransport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Subscribe implements Subscriber. Shared subscriptions join the queue
// group schemas.SharedGroup. Retained subscriptions read the notice stream
// (filter must be a notice subject, read by direct get, or the notice
// wildcard, read by an ordered consumer; see NATSTransport). A permission
// violation reported by the server while subscribing, or for the direct
// get, returns ErrNotAuthorized.
func (t *NATSTransport) Subscribe(ctx context.Context, filter schemas.Topic, h Handler, opts SubscribeOptions) (Subscription, error) {
	subj := filter.NATS
	if subj == "" {
		return nil, fmt.Errorf("broker: subscribe: empty nats subject")
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	t.mu.Unlock()
	s := &natsSub{t: t, d: newDispatcher(t.ctx, h, opts)}
	var err error
	switch {
	case opts.Retained && subj == t.ep.Topics.NoticesAll().NATS:
		err = t.subscribeAllNotices(ctx, s, subj)
	case opts.Retained:
		err = t.subscribeNotice(ctx, s, subj)
	default:
		cb := func(m *nats.Msg) {
			s.d.enqueue(Message{Topic: m.Subject, Payload: m.Data, ReplyTo: m.Reply, Owned: true})
		}
		if opts.Inline {
			// The handler runs on the subscription's goroutine: what
			// nats.go holds behind it is its backlog.
			cb = func(m *nats.Msg) {
				s.d.enqueue(Message{Topic: m.Subject, Payload: m.Data, ReplyTo: m.Reply, Owned: true, Backlog: func() int {
					_, b, err := m.Sub.Pending()
					if err != nil {
						return math.MaxInt
					}
					return b
				}})
			}
		}
		if opts.Shared {
			s.sub, err = t.nc.QueueSubscribe(subj, schemas.SharedGroup, cb)
		} else {
			s.sub, err = t.nc.Subscribe(subj, cb)
		}
		if err == nil {
			setPendingLimits(s.sub)
			err = t.checkSub(ctx, s.sub)
		}
		if err != nil {
			err = t.connErr("subscribe "+subj, err)
		}
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	t.mu.Lock()
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	return s, nil
}

// setPendingLimits bounds what nats.go holds for sub between its reader
// and the callback, which only hands each message to the dispatcher: the
// dispatcher is where chunks are shed (it tells a chunk from a table or a
// marker); nats.go's limit cannot, and drops whatever comes next. So the
// limit is nats.go's default for every family (64 MiB), an outer bound
// reached only when the callback's goroutine does not run at all: set to
// the dispatcher's chunk bound it was reached whenever the reader ran
// ahead of that goroutine for 256 messages (a loaded machine), and dropped
// chunk tables and wave-end markers with the chunks.
func setPendingLimits(sub *nats.Subscription) {
	_ = sub.SetPendingLimits(nats.DefaultSubPendingMsgsLimit, nats.DefaultSubPendingBytesLimit)
}

// checkSub flushes so the server has processed the SUB, then looks for a
// permission violation it may have reported for it.
func (t *NATSTransport) checkSub(ctx context.Context, sub *nats.Subscription) error {
	ctx, cancel := withDefaultDeadline(ctx, t.ep.ConnectTimeout)
	defer cancel()
	if err := t.nc.FlushWithContext(ctx); err != nil {
		return err
	}
	if err := t.nc.LastError(); err != nil && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), `Subscription to "`+sub.Subject+`"`) {
		return err
	}
	return nil
}

// subscribeAllNotices reads every device's retained notice and then the
// live ones through an ordered consumer (a backend's view; devices may
// not create consumers). The stream must exist.
func (t *NATSTransport) subscribeAllNotices(ctx context.Context, s *natsSub, subj string) error {
	st, err := t.js.Stream(ctx, t.stream)
	if err != nil {
		return fmt.Errorf("broker: notice stream %s: %w", t.stream, err)
	}
	last := st.CachedInfo().State.LastSeq
	cons, err := t.js.OrderedConsumer(ctx, t.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("broker: retained subscribe %s: %w", subj, err)
	}
	s.cc, err = cons.Consume(func(m jetstream.Msg) {
		retained := false
		if md, err := m.Metadata(); err == nil {
			retained = md.Sequence.Stream <= last
		}
		s.d.enqueue(Message{Topic: m.Subject(), Payload: m.Data(), Retained: retained})
	})
	if err != nil {
		return fmt.Errorf("broker: retained subscribe %s: %w", subj, err)
	}
	return nil
}

func (s *natsSub) stop() {
	if s.last != nil {
		s.last.close()
	}
	if s.sub != nil {
		_ = s.sub.Unsubscribe()
	}
	if s.cc != nil {
		s.cc.Stop()
	}
	s.d.close()
}

// Unsubscribe implements Subscription. Safe to call more than once.
func (s *natsSub) Unsubscribe(ctx context.Context) error {
	s.once.Do(func() {
		s.t.mu.Lock()
		delete(s.t.subs, s)
		s.t.mu.Unlock()
		s.stop()
	})
	return nil
}

// Request implements Requester over NATS request/reply (a reply subject
// under the root's inbox). No responders, like no reply, is ErrTimeout.
// Without a deadline on ctx, DefaultRequestTimeout applies.
func (t *NATSTransport) Request(ctx context.Context, topic schemas.Topic, payload []byte) ([]byte, error) {
	if t.isClosed() {
		return nil, ErrClosed
	}
	ctx, cancel := withDefaultDeadline(ctx, DefaultRequestTimeout)
	defer cancel()
	m, err := t.nc.RequestWithContext(ctx, topic.NATS, payload)
	if err != nil {
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%w: %s: no responders", ErrTimeout, topic.NATS)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%w: %s: %w", ErrTimeout, topic.NATS, ctx.Err())
		}
		return nil, t.connErr("request "+topic.NATS, err)
	}
	return m.Data, nil
}

// Reply implements Requester.
func (t *NATSTransport) Reply(ctx context.Context, req Message, payload []byte) error {
	if req.ReplyTo == "" {
		return fmt.Errorf("broker: reply: request on %s has no reply subject", req.Topic)
	}
	if err := t.nc.Publish(req.ReplyTo, payload); err != nil {
		return t.connErr("reply", err)
	}
	return nil
}

// Close drains nothing: it stops every subscription and closes the
// connection. Safe to call more than once.
func (t *NATSTransport) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	subs := t.subs
	t.subs = nil
	t.onUp = nil
	t.mu.Unlock()
	for s := range subs {
		s.stop()
	}
	t.nc.Close()
	t.cancel()
	return nil
}

// natsMatch reports whether NATS subject matches filter ("*" and ">").
func natsMatch(filter, subject string) bool {
	fs := strings.Split(filter, ".")
	ss := strings.Split(subject, ".")
	for i, f := range fs {
		if f == ">" {
			return len(ss) > i
		}
		if i >= len(ss) {
			return false
		}
		if f != "*" && f != ss[i] {
			return false
		}
	}
	return len(fs) == len(ss)
}

// DefaultRequestTimeout bounds a NATS request whose ctx has no deadline
// (nats.go needs one).
const DefaultRequestTimeout = 30 * time.Second

// withDefaultDeadline applies d only when ctx has no deadline.
func withDefaultDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}
