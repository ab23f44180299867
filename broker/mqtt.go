package broker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/schemas"
)

// receiveMaximum is the Receive Maximum every MQTT connection announces.
const receiveMaximum = 1024

// MQTT v5 reason codes firmcast maps to sentinels.
const (
	rcBadUserOrPassword = 0x86
	rcNotAuthorized     = 0x87
	rcBanned            = 0x8A
	rcBadAuthMethod     = 0x8C
)

// MQTTTransport is a Transport over MQTT v5 (eclipse/paho.golang autopaho).
// It reconnects by itself and, after each reconnection, subscribes again to
// every active subscription (asking for retained messages only when the
// broker had lost the subscription). QoS is chosen per Family (see
// familyQoS). It is safe for concurrent use.
type MQTTTransport struct {
	ep     endpoint
	cm     *autopaho.ConnectionManager
	ctx    context.Context // lives until Close
	cancel context.CancelFunc
	inbox  schemas.Topic

	mu         sync.Mutex
	subs       map[int]*mqttSub
	nextSubID  int
	pending    map[string]chan []byte // correlation -> reply
	inboxReady bool
	closed     bool
	// connCtx lives as long as the current connection: cancelled by
	// OnConnectionDown, so a publish waiting for an ack on a dead
	// connection is retried on the next one.
	connCtx    context.Context
	connCancel context.CancelFunc
	// onUp are the OnConnect callbacks, by registration id.
	onUp   map[int]func()
	nextUp int
}

type mqttSub struct {
	id     int
	filter string
	qos    byte
	retain bool
	d      *dispatcher
}

// familyQoS is the MQTT QoS of each family: chunks QoS 0 (a broker never
// queues an image for an offline device; loss is repaired by request),
// everything else QoS 1.
func familyQoS(f Family) byte {
	if f == FamilyChunk {
		return 0
	}
	return 1
}

func dialMQTT(ctx context.Context, ep endpoint) (*MQTTTransport, error) {
	inbox, err := inboxTopic(ep.Topics, ep.ClientID)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	life, cancel := context.WithCancel(context.Background())
	t := &MQTTTransport{ep: ep, ctx: life, cancel: cancel, inbox: inbox, subs: map[int]*mqttSub{}, pending: map[string]chan []byte{}}

	u := *ep.url
	if ep.tls {
		u.Scheme = "tls"
	}
	refused := make(chan error, 1)
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{&u},
		TlsCfg:                        ep.TLS,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: ep.SharedMember,
		SessionExpiryInterval:         uint32(ep.SessionExpiry / time.Second),
		ReconnectBackoff:              func(n int) time.Duration { return backoff(n, ep.ReconnectMax) },
		ConnectTimeout:                ep.ConnectTimeout,
		AttemptConnection: func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			return dialMQTTConn(ctx, u, ep.TLS, ep.ConnectTimeout, ep.WriteTimeout)
		},
		ConnectUsername: ep.Username,
		ConnectPassword: []byte(ep.Password),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ca *paho.Connack) {
			ep.Logger.Debug("mqtt connected", "session_present", ca.SessionPresent)
			t.mu.Lock()
			if t.connCancel != nil {
				t.connCancel()
			}
			t.connCtx, t.connCancel = context.WithCancel(life)
			t.mu.Unlock()
			go func() {
				t.resubscribe(cm)
				t.connected()
			}()
		},
		OnConnectionDown: func() bool {
			ep.Logger.Info("mqtt connection lost; reconnecting")
			t.mu.Lock()
			if t.connCancel != nil {
				t.connCancel()
			}
			t.mu.Unlock()
			return true
		},
		OnConnectError: func(err error) {
			var ce *autopaho.ConnackError
			if errors.As(err, &ce) {
				switch ce.ReasonCode {
				case rcBadUserOrPassword, rcNotAuthorized, rcBanned, rcBadAuthMethod:
					select {
					case refused <- fmt.Errorf("%w: %v", ErrNotAuthorized, err):
					default:
					}
				}
			}
			var cv *tls.CertificateVerificationError
			if errors.As(err, &cv) {
				select {
				case refused <- fmt.Errorf("broker: mqtt connect %s: %w", ep.url, err):
				default:
				}
			}
			ep.Logger.Debug("mqtt connect attempt failed", "err", err)
		},
		// mochi strips MQTT v5 user properties unless the client asks for
		// problem information; firmcast sets it on every CONNECT. Receive
		// Maximum bounds the QoS 1 messages the broker sends unacknowledged;
		// paho sizes its incoming queue by it, and without it allocates
		// 65,535 slots (512 KiB of heap) per connection.
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			c.Properties.RequestProblemInfo = true
			if c.Properties.ReceiveMaximum == nil {
				rm := uint16(receiveMaximum)
				if ep.ReceiveMaximum > 0 {
					rm = uint16(min(ep.ReceiveMaximum, 65535))
				}
				c.Properties.ReceiveMaximum = &rm
			}
			return c, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          ep.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){t.onPublish},
		},
	}
	cm, err := autopaho.NewConnection(life, cfg)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("broker: mqtt connect %s: %w", ep.url, err)
	}
	t.cm = cm
	up := make(chan error, 1)
	go func() { up <- cm.AwaitConnection(ctx) }()
	select {
	case err = <-up:
		if err != nil {
			err = fmt.Errorf("broker: mqtt connect %s: %w", ep.url, err)
		}
	case err = <-refused: // final: bad credentials or an untrusted server
	}
	if err != nil {
		cancel()
		<-cm.Done()
		return nil, err
	}
	return t, nil
}

// ReceiveQueue implements Transport: the most received messages paho
// queues for the handlers before it stops reading the socket (the Receive
// Maximum the client announced).
func (t *MQTTTransport) ReceiveQueue() int {
	if t.ep.ReceiveMaximum > 0 {
		return min(t.ep.ReceiveMaximum, 65535)
	}
	return receiveMaximum
}

// onPublish runs on paho's router goroutine: it routes, and runs only
// inline handlers (SubscribeOptions.Inline, which return at once), outside
// the transport's lock.
func (t *MQTTTransport) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	m := Message{Topic: p.Topic, Payload: p.Payload, Retained: p.Retain}
	var subID *int
	if p.Properties != nil {
		m.ReplyTo = p.Properties.ResponseTopic
		m.Correlation = p.Properties.CorrelationData
		subID = p.Properties.SubscriptionIdentifier
	}
	var buf [4]*dispatcher
	to := buf[:0]
	t.mu.Lock()
	switch {
	case p.Topic == t.inbox.MQTT:
		if ch, ok := t.pending[string(m.Correlation)]; ok {
			delete(t.pending, string(m.Correlation))
			ch <- m.Payload
		}
	case subID != nil:
		// Routed by subscription identifier: only that subscription, and
		// nothing if it has been unsubscribed meanwhile.
		if s, ok := t.subs[*subID]; ok {
			to = append(to, s.d)
		}
	default:
		for _, s := range t.subs {
			if mqttMatch(s.filter, p.Topic) {
				to = append(to, s.d)
			}
		}
	}
	t.mu.Unlock()
	for _, d := range to {
		d.enqueue(m)
	}
	return true, nil
}

// resubscribe restores every subscription after a (re)connection. Retained
// messages are asked for only if the broker no longer had the
// subscription (retain handling 1).
func (t *MQTTTransport) resubscribe(cm *autopaho.ConnectionManager) {
	t.mu.Lock()
	subs := make([]*mqttSub, 0, len(t.subs))
	for _, s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		rh := byte(2)
		if s.retain {
			rh = 1
		}
		if _, err := cm.Subscribe(t.ctx, subscribePacket(s, rh)); err != nil {
			t.ep.Logger.Warn("mqtt resubscribe failed", "filter", s.filter, "err", err)
		}
	}
	if t.inboxActive() {
		if _, err := cm.Subscribe(t.ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: t.inbox.MQTT, QoS: 1, RetainHandling: 2}}}); err != nil {
			t.ep.Logger.Warn("mqtt resubscribe inbox failed", "err", err)
		}
	}
}

// OnConnect registers f, called after each (re)connection to the broker
// once the subscriptions are restored; the returned function unregisters
// it. f must not block. It lets a client re-send what a broker outage
// lost (the device agent reports its state again: deviceagent.Reconnector).
func (t *MQTTTransport) OnConnect(f func()) (stop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.onUp == nil {
		t.onUp = map[int]func(){}
	}
	id := t.nextUp
	t.nextUp++
	t.onUp[id] = f
	return func() {
		t.mu.Lock()
		delete(t.onUp, id)
		t.mu.Unlock()
	}
}

// connected calls the OnConnect callbacks.
func (t *MQTTTransport) connected() {
	t.mu.Lock()
	fs := make([]func(), 0, len(t.onUp))
	for _, f := range t.onUp {
		fs = append(fs, f)
	}
	t.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

func (t *MQTTTransport) inboxActive() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inboxReady
}

func subscribePacket(s *mqttSub, retainHandling byte) *paho.Subscribe {
	id := s.id
	return &paho.Subscribe{
		Properties:    &paho.SubscribeProperties{SubscriptionIdentifier: &id},
		Subscriptions: []paho.SubscribeOptions{{Topic: s.filter, QoS: s.qos, RetainHandling: retainHandling}},
	}
}

// Publish implements Publisher. QoS 1 publishes wait for the broker's
// PUBACK; a refusal (reason 0x87) returns ErrNotAuthorized. While the
// connection is down it waits for the reconnection, until ctx ends.
func (t *MQTTTransport) Publish(ctx context.Context, topic schemas.Topic, payload []byte, opts PublishOptions) error {
	if topic.MQTT == "" {
		return fmt.Errorf("broker: publish: empty mqtt topic")
	}
	p := &paho.Publish{Topic: topic.MQTT, QoS: familyQoS(opts.Family), Retain: opts.Retain, Payload: payload}
	return t.publish(ctx, p)
}

func (t *MQTTTransport) publish(ctx context.Context, p *paho.Publish) error {
	for attempt := 0; ; attempt++ {
		if err := t.await(ctx); err != nil {
			return err
		}
		actx, done := t.attemptCtx(ctx)
		resp, err := t.cm.Publish(actx, p)
		done()
		if resp != nil && resp.ReasonCode >= 0x80 {
			if resp.ReasonCode == rcNotAuthorized {
				return fmt.Errorf("%w: publish to %s", ErrNotAuthorized, p.Topic)
			}
			return fmt.Errorf("broker: publish to %s refused: reason 0x%02x", p.Topic, resp.ReasonCode)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("broker: publish to %s: %w", p.Topic, ctx.Err())
		}
		if t.isClosed() {
			return ErrClosed
		}
		// The connection dropped under us: wait a moment and try again.
		tm := time.NewTimer(backoff(attempt, time.Second))
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("broker: publish to %s: %w", p.Topic, ctx.Err())
		case <-tm.C:
		}
	}
}

// attemptCtx returns ctx, also cancelled when the current connection
// drops, for one publish or subscribe attempt.
func (t *MQTTTransport) attemptCtx(ctx context.Context) (context.Context, func()) {
	t.mu.Lock()
	conn := t.connCtx
	t.mu.Unlock()
	actx, cancel := context.WithCancel(ctx)
	if conn == nil {
		return actx, cancel
	}
	stop := context.AfterFunc(conn, cancel)
	return actx, func() { stop(); cancel() }
}

func (t *MQTTTransport) await(ctx context.Context) error {
	if t.isClosed() {
		return ErrClosed
	}
	if err := t.cm.AwaitConnection(ctx); err != nil {
		if t.isClosed() {
			return ErrClosed
		}
		return fmt.Errorf("broker: waiting for mqtt connection: %w", err)
	}
	return nil
}

func (t *MQTTTransport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Subscribe implements Subscriber. The broker's refusal (SUBACK 0x87)
// returns ErrNotAuthorized. With opts.Shared the filter is subscribed as
// $share/<schemas.SharedGroup>/filter.
func (t *MQTTTransport) Subscribe(ctx context.Context, filter schemas.Topic, h Handler, opts SubscribeOptions) (Subscription, error) {
	if filter.MQTT == "" {
		return nil, fmt.Errorf("broker: subscribe: empty mqtt filter")
	}
	f := filter.MQTT
	if opts.Shared {
		f = schemas.Shared(f)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	t.nextSubID++
	s := &mqttSub{id: t.nextSubID, filter: f, qos: familyQoS(opts.Family), retain: opts.Retained, d: newDispatcher(t.ctx, h, opts)}
	t.subs[s.id] = s
	t.mu.Unlock()

	rh := byte(2)
	if opts.Retained {
		rh = 0
	}
	err := t.subscribe(ctx, subscribePacket(s, rh))
	if err != nil {
		t.drop(s)
		return nil, err
	}
	return &mqttSubscription{t: t, s: s}, nil
}

func (t *MQTTTransport) subscribe(ctx context.Context, sp *paho.Subscribe) error {
	topic := sp.Subscriptions[0].Topic
	for attempt := 0; ; attempt++ {
		if err := t.await(ctx); err != nil {
			return err
		}
		actx, done := t.attemptCtx(ctx)
		sa, err := t.cm.Subscribe(actx, sp)
		done()
		if sa != nil && len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
			if sa.Reasons[0] == rcNotAuthorized {
				return fmt.Errorf("%w: subscribe to %s", ErrNotAuthorized, topic)
			}
			return fmt.Errorf("broker: subscribe to %s refused: reason 0x%02x", topic, sa.Reasons[0])
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("broker: subscribe to %s: %w", topic, ctx.Err())
		}
		tm := time.NewTimer(backoff(attempt, time.Second))
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("broker: subscribe to %s: %w", topic, ctx.Err())
		case <-tm.C:
		}
	}
}

func (t *MQTTTransport) drop(s *mqttSub) {
	t.mu.Lock()
	delete(t.subs, s.id)
	t.mu.Unlock()
	s.d.close()
}

type mqttSubscription struct {
	t    *MQTTTransport
	s    *mqttSub
	once sync.Once
}

// Unsubscribe stops delivery to the handler at once and tells the broker.
// Safe to call more than once.
func (u *mqttSubscription) Unsubscribe(ctx context.Context) error {
	var err error
	u.once.Do(func() {
		u.t.drop(u.s)
		if u.t.isClosed() {
			return
		}
		if _, uerr := u.t.cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{u.s.filter}}); uerr != nil && !errors.Is(uerr, autopaho.ConnectionDownError) {
			err = fmt.Errorf("broker: unsubscribe %s: %w", u.s.filter, uerr)
		}
	})
	return err
}

// Request implements Requester: it publishes payload (QoS 1) with this
// client's inbox as MQTT v5 response topic and fresh correlation data, and
// waits for the matching reply.
func (t *MQTTTransport) Request(ctx context.Context, topic schemas.Topic, payload []byte) ([]byte, error) {
	if err := t.ensureInbox(ctx); err != nil {
		return nil, err
	}
	corr := make([]byte, 16)
	_, _ = rand.Read(corr)
	ch := make(chan []byte, 1)
	t.mu.Lock()
	t.pending[string(corr)] = ch
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.pending, string(corr))
		t.mu.Unlock()
	}()
	p := &paho.Publish{Topic: topic.MQTT, QoS: 1, Payload: payload,
		Properties: &paho.PublishProperties{ResponseTopic: t.inbox.MQTT, CorrelationData: corr}}
	if err := t.publish(ctx, p); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrTimeout, topic.MQTT, ctx.Err())
		}
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s: %w", ErrTimeout, topic.MQTT, ctx.Err())
	case <-t.ctx.Done():
		return nil, ErrClosed
	}
}

// ensureInbox subscribes to the reply inbox once.
func (t *MQTTTransport) ensureInbox(ctx context.Context) error {
	t.mu.Lock()
	ok := t.inboxReady
	t.mu.Unlock()
	if ok {
		return nil
	}
	err := t.subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: t.inbox.MQTT, QoS: 1, RetainHandling: 2}}})
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.inboxReady = true
	t.mu.Unlock()
	return nil
}

// Reply implements Requester: it publishes payload (QoS 1) to the request's
// response topic with its correlation data.
func (t *MQTTTransport) Reply(ctx context.Context, req Message, payload []byte) error {
	if req.ReplyTo == "" {
		return fmt.Errorf("broker: reply: request on %s has no response topic", req.Topic)
	}
	p := &paho.Publish{Topic: req.ReplyTo, QoS: 1, Payload: payload,
		Properties: &paho.PublishProperties{CorrelationData: req.Correlation}}
	return t.publish(ctx, p)
}

// Close disconnects (sending DISCONNECT when connected) and stops every
// handler goroutine. Safe to call more than once; later calls return nil.
func (t *MQTTTransport) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	subs := t.subs
	t.subs = map[int]*mqttSub{}
	t.mu.Unlock()
	for _, s := range subs {
		s.d.close()
	}
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := t.cm.Disconnect(dctx)
	t.cancel()
	t.mu.Lock()
	if t.connCancel != nil {
		t.connCancel()
	}
	t.mu.Unlock()
	select {
	case <-t.cm.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err != nil && !errors.Is(err, autopaho.ConnectionDownError) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("broker: mqtt disconnect: %w", err)
	}
	return nil
}

// Dialect returns DialectMQTT.
func (t *MQTTTransport) Dialect() Dialect { return DialectMQTT }

// dialMQTTConn makes one connection to an MQTT broker (u's scheme "tls":
// over TLS with cfg), within connectTimeout, whose every write must
// complete within writeTimeout (Config.WriteTimeout). The connection is
// paho's thread-safe wrapper: a packet's write, in one or several
// pieces, is never interleaved with another's.
func dialMQTTConn(ctx context.Context, u *url.URL, cfg *tls.Config, connectTimeout, writeTimeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var c net.Conn
	var err error
	if u.Scheme == "tls" {
		d := tls.Dialer{Config: cfg}
		c, err = d.DialContext(ctx, "tcp", u.Host)
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", u.Host)
	}
	if err != nil {
		return nil, err
	}
	return packets.NewThreadSafeConn(&deadlineConn{Conn: c, timeout: writeTimeout}), nil
}

// deadlineConn sets a write deadline of timeout before each write.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
