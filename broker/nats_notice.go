package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"

	"github.com/firmcast/firmcast/internal/jsensure"
	"github.com/firmcast/firmcast/schemas"
)

// The retained notices on NATS: the stream the backend creates, and how a
// device reads its own notice from it without a consumer.

// NoticeStreamName is the JetStream stream holding the retained notices of
// a topic root: "FIRMCAST_NOTICES_" plus the root with "/" turned to "_".
func NoticeStreamName(t schemas.Topics) string {
	return "FIRMCAST_NOTICES_" + strings.ReplaceAll(t.Root(), "/", "_")
}

// noticeStreamConfig is the retained-notice stream of a topic root. Direct
// get is on so that a device reads its own notice with
// $JS.API.DIRECT.GET.<stream>.<its notice subject>.
func noticeStreamConfig(t schemas.Topics) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              NoticeStreamName(t),
		Description:       "firmcast retained update notices (last per device)",
		Subjects:          []string{t.NoticesAll().NATS},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: 1,
		Replicas:          1,
		AllowDirect:       true,
	}
}

// directGetSubject is the API subject of a direct get of subject's last
// message in stream: the subject is in the API subject, so a permission
// can confine a device to its own notice (the form with the subject in
// the request body names only the stream).
func directGetSubject(stream, subject string) string {
	return jetstream.DefaultAPIPrefix + "DIRECT.GET." + stream + "." + subject
}

// NoticeStream makes sure the stream of retained notices exists (subjects
// root.v1.dev.*.notice, file storage, one message per subject, direct get
// on) and returns it. It is for the backend: it creates the stream, and
// when one exists it compares its configuration and updates it only when
// a setting differs (internal/jsensure), so replicas starting together
// never send the update that crashes nats-server 2.9.10. It asks the
// server once per transport (later calls return the same stream) and
// blocks until the server answers or ctx ends. Devices never call it:
// their permissions refuse it, and they wait for the stream instead.
func (t *NATSTransport) NoticeStream(ctx context.Context) (jetstream.Stream, error) {
	t.nsMu.Lock()
	defer t.nsMu.Unlock()
	if t.ns != nil {
		return t.ns, nil
	}
	ctx, cancel := withDefaultDeadline(ctx, DefaultRequestTimeout)
	defer cancel()
	s, err := jsensure.Stream(ctx, t.js, noticeStreamConfig(t.ep.Topics))
	if err != nil {
		return nil, fmt.Errorf("broker: notice stream %s: %w", t.stream, err)
	}
	t.ns = s
	return s, nil
}

// forgetNoticeStream drops the stream NoticeStream remembered (it was
// deleted), so the next call makes sure again.
func (t *NATSTransport) forgetNoticeStream() {
	t.nsMu.Lock()
	t.ns = nil
	t.nsMu.Unlock()
}

// publishRetained stores payload as subj's retained notice, or clears it
// when payload is empty. A stream deleted meanwhile is made again once.
func (t *NATSTransport) publishRetained(ctx context.Context, subj string, payload []byte) error {
	// The message's id travels with the live copy and is stored with it:
	// a device's read that finds the message it just had live, or the
	// live copy of the message its read just delivered, drops the
	// second (lastNotice). JetStream's duplicate window also drops the
	// retry below, if the first try was stored after all.
	id := rand.Text()
	for attempt := 0; ; attempt++ {
		s, err := t.NoticeStream(ctx)
		if err != nil {
			return err
		}
		if len(payload) == 0 {
			err = s.Purge(ctx, jetstream.WithPurgeSubject(subj))
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				t.forgetNoticeStream()
				return nil // no stream, nothing retained
			}
			if err != nil {
				return fmt.Errorf("broker: clear retained %s: %w", subj, err)
			}
			return nil
		}
		_, err = t.js.Publish(ctx, subj, payload, jetstream.WithMsgID(id))
		if errors.Is(err, jetstream.ErrNoStreamResponse) && attempt == 0 {
			t.forgetNoticeStream()
			continue
		}
		if err != nil {
			return fmt.Errorf("broker: retained publish %s: %w", subj, err)
		}
		return nil
	}
}

// subscribeNotice subscribes to one notice subject (a device's own): a
// core subscription for live notices first, then a direct get of the
// subject's last message (lastNotice), again after every reconnection.
// Only a refused subscription or direct get fails it; a stream that is
// not there yet is waited for in the background.
func (t *NATSTransport) subscribeNotice(ctx context.Context, s *natsSub, subj string) error {
	if !t.isNotice(subj) {
		return fmt.Errorf("broker: retained subscribe %s: NATS keeps retained messages for notice subjects only", subj)
	}
	ln := &lastNotice{t: t, s: s, subj: subj}
	ln.ctx, ln.cancel = context.WithCancel(t.ctx)
	s.last = ln
	var err error
	s.sub, err = t.nc.Subscribe(subj, ln.onLive)
	if err == nil {
		setPendingLimits(s.sub)
		err = t.checkSub(ctx, s.sub)
	}
	if err != nil {
		return t.connErr("subscribe "+subj, err)
	}
	gctx, cancel := context.WithTimeout(ctx, noticeGetTimeout)
	defer cancel()
	err = ln.read(gctx, 0)
	switch {
	case err == nil:
		ln.settleLater()
	case errors.Is(err, ErrNotAuthorized):
		return err
	default:
		t.ep.Logger.Info("retained notice not readable yet (is the backend up?); retrying", "subject", subj, "err", err)
		ln.start(false)
	}
	return nil
}

// noticeGetTimeout bounds one direct get of a notice. nats-server 2.9
// does not answer a request for a stream that does not exist (2.15 says
// "no responders"), so this is also how long the first read waits before
// it leaves the stream to the background retries.
const noticeGetTimeout = 5 * time.Second

// Back-off of the retried reads: from noticeRetryBase, doubling, with
// jitter, up to noticeRetryCap.
const (
	noticeRetryBase = 100 * time.Millisecond
	noticeRetryCap  = 15 * time.Second
)

// noticeSettle is how long after a read of the retained notice the
// settle read follows. A notice published while the subscription is
// being made can reach the server just before the subscription, so that
// it is not delivered live, and reach the stream just after the read
// (JetStream stores a message after routing it, on its own goroutine), so
// that the read does not see it either; the settle read, made when the
// stream has long stored it, does (TestNoticeRacingSubscription).
const noticeSettle = 500 * time.Millisecond

// lastNotice reads the retained notice of one subscription. Live
// notices arrive on the core subscription; the read fills in the one
// published before it (on subscribe) or while the connection was down (on
// reconnect). A read's result is delivered only if no live notice arrived
// since the subscription began (or, after a reconnection, since then): a
// live notice is newer than anything stored before it, and one stored
// after it arrives live as well. Retried reads run on one goroutine at a
// time, for as long as the subscription.
type lastNotice struct {
	t      *NATSTransport
	s      *natsSub
	subj   string
	ctx    context.Context // ends with the subscription
	cancel context.CancelFunc

	mu      sync.Mutex
	live    uint64 // live notices delivered
	base    uint64 // live when the subscription began, or the last reconnection
	running bool   // a retry goroutine runs
	again   bool   // a read is wanted (set again by a reconnection during one)
	// readID and readSeq name the message the last read delivered (its
	// Nats-Msg-Id and stream sequence) since base: its live copy, which
	// can reach the callback after the read when the two race, and the
	// settle read that finds it again are not delivered a second time.
	// A reconnection clears them: the notice is then read again.
	readID, readSeq string
}

// onLive is the core subscription's callback.
func (l *lastNotice) onLive(m *nats.Msg) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live++
	if id := m.Header.Get(nats.MsgIdHdr); id != "" && id == l.readID {
		l.readID = ""
		return // the read delivered it already
	}
	l.s.d.enqueue(Message{Topic: m.Subject, Payload: m.Data})
}

// read makes one direct get and delivers its message, as retained, unless
// a live notice arrived since the count base.
func (l *lastNotice) read(ctx context.Context, base uint64) error {
	m, err := l.t.directGet(ctx, l.subj)
	if err != nil || m == nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live != base {
		return nil
	}
	seq := m.Header.Get(jetstream.SequenceHeader)
	if seq != "" && seq == l.readSeq {
		return nil // an earlier read delivered it
	}
	l.readID, l.readSeq = m.Header.Get(nats.MsgIdHdr), seq
	l.s.d.enqueue(Message{Topic: l.subj, Payload: m.Data, Retained: true})
	return nil
}

// start reads again in the background: at once, then with back-off until
// a read succeeds. After a reconnection (fresh), live notices count from
// now; when the subscription's first read failed, they still count from
// the subscription.
func (l *lastNotice) start(fresh bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return
	}
	if fresh {
		l.base = l.live
		l.readID, l.readSeq = "", ""
	}
	l.again = true
	if l.running {
		return
	}
	l.running = true
	go l.retry(false)
}

// settleLater makes the settle read of a read made outside the retry
// goroutine (the subscription's first), noticeSettle from now.
func (l *lastNotice) settleLater() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil || l.running {
		return // a running goroutine makes its own settle read
	}
	l.running = true
	go l.retry(true)
}

// retry reads while reads are asked for (again); every read asked for is
// followed, noticeSettle later, by one settle read. settle says that the
// first read is one.
func (l *lastNotice) retry(settle bool) {
	for {
		if settle {
			t := time.NewTimer(noticeSettle)
			select {
			case <-l.ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
		l.mu.Lock()
		if (!l.again && !settle) || l.ctx.Err() != nil {
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		var b retry.Backoff = retry.NewExponential(noticeRetryBase)
		b = retry.WithCappedDuration(noticeRetryCap, retry.WithJitterPercent(20, b))
		failures := 0
		asked := false
		err := retry.Do(l.ctx, b, func(ctx context.Context) error {
			// A reconnection during this read asks for one more.
			l.mu.Lock()
			asked = asked || l.again
			l.again = false
			base := l.base
			l.mu.Unlock()
			gctx, cancel := context.WithTimeout(ctx, noticeGetTimeout)
			defer cancel()
			err := l.read(gctx, base)
			if err == nil || errors.Is(err, ErrNotAuthorized) {
				return err
			}
			if failures++; failures == 1 {
				l.t.ep.Logger.Debug("retained notice read failed; retrying", "subject", l.subj, "err", err)
			}
			return retry.RetryableError(err)
		})
		if err != nil && l.ctx.Err() == nil {
			l.t.ep.Logger.Warn("retained notice not read", "subject", l.subj, "err", err)
			l.mu.Lock()
			l.running = false
			l.mu.Unlock()
			return
		}
		if err == nil && failures > 0 {
			l.t.ep.Logger.Info("retained notice read", "subject", l.subj, "after_failures", failures)
		}
		settle = asked
	}
}

// idle reports whether no background read is running (tests).
func (l *lastNotice) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.running
}

// close stops the retries.
func (l *lastNotice) close() { l.cancel() }

// directGet reads subject's last message in the notice stream with a
// direct get named by subject ($JS.API.DIRECT.GET.<stream>.<subject>). It
// returns nil, nil when the stream holds none; ErrNotAuthorized when the
// server refuses the request; errNoticeStreamMissing when nothing answers
// (no stream yet, or direct get off).
func (t *NATSTransport) directGet(ctx context.Context, subject string) (*nats.Msg, error) {
	api := directGetSubject(t.stream, subject)
	inbox := t.nc.NewInbox()
	ch := make(chan *nats.Msg, 1)
	sub, err := t.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, t.connErr("direct get "+subject, err)
	}
	defer sub.Unsubscribe()
	if err := t.nc.PublishRequest(api, inbox, nil); err != nil {
		return nil, t.connErr("direct get "+subject, err)
	}
	if err := t.nc.FlushWithContext(ctx); err != nil {
		return nil, t.connErr("direct get "+subject, err)
	}
	// The server refuses a request with an asynchronous -ERR, which
	// arrives before the flush's PONG.
	if err := t.nc.LastError(); err != nil && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), `Publish to "`+api+`"`) {
		return nil, fmt.Errorf("%w: direct get %s", ErrNotAuthorized, subject)
	}
	select {
	case m := <-ch:
		switch st := m.Header.Get("Status"); st {
		case "":
			if got := m.Header.Get(jetstream.SubjectHeader); got != "" && got != subject {
				return nil, fmt.Errorf("broker: direct get %s answered for %s", subject, got)
			}
			return m, nil
		case "404":
			return nil, nil
		case "503":
			return nil, fmt.Errorf("%w: %s: no responders", errNoticeStreamMissing, t.stream)
		default:
			return nil, fmt.Errorf("broker: direct get %s: status %s %s", subject, st, m.Header.Get("Description"))
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s: no answer: %w", errNoticeStreamMissing, t.stream, ctx.Err())
	}
}

// OnConnect registers f, called after each reconnection to the server
// (deviceagent.Reconnector); the returned function unregisters it. f must
// not block.
func (t *NATSTransport) OnConnect(f func()) (stop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return func() {}
	}
	id := t.nextUp
	t.nextUp++
	t.onUp[id] = f
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.onUp, id)
	}
}

// reconnected reads every retained notice again (it may have changed
// while the connection was down) and calls the OnConnect callbacks.
func (t *NATSTransport) reconnected() {
	t.mu.Lock()
	var fs []func()
	for _, f := range t.onUp {
		fs = append(fs, f)
	}
	var lasts []*lastNotice
	for s := range t.subs {
		if s.last != nil {
			lasts = append(lasts, s.last)
		}
	}
	t.mu.Unlock()
	for _, l := range lasts {
		l.start(true)
	}
	for _, f := range fs {
		f()
	}
}
