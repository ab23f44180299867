package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/firmcast/firmcast/schemas"
)

// Defaults of the embedded MQTT broker.
const (
	// DefaultMQTTListen is where the embedded MQTT broker listens by
	// default: loopback, a free port.
	DefaultMQTTListen = "127.0.0.1:0"
	// DefaultMaxQueued is the receive window of the embedded broker (and
	// mosquitto's max_queued_messages in MosquittoSpec): the QoS 1
	// messages a client may have unacknowledged towards the broker. The
	// backend, which publishes every device's notices, needs the headroom.
	DefaultMaxQueued = 1000
)

// MQTTServerConfig configures the embedded MQTT v5 broker. It is taken by
// value.
type MQTTServerConfig struct {
	// Listen is the TCP address, "host:port"; port 0 picks a free port
	// (see Addr). Default DefaultMQTTListen.
	Listen string
	// TLS, when set, makes the listener speak TLS only (URL then reports
	// mqtts://).
	TLS *tls.Config
	// Auth authenticates every client. Nil means open: any client may
	// connect and do anything (for development and tests only).
	Auth Authenticator
	// Topics is the root the access policy protects. Default root
	// "firmcast".
	Topics schemas.Topics
	// MaxQueued is the receive window: the QoS 1 messages a client may
	// have unacknowledged towards the broker. Default DefaultMaxQueued.
	// (The broker itself delivers at QoS 0 only, see qosHook: it holds
	// nothing in flight towards a client.)
	MaxQueued int
	// Logger receives broker events. Default: slog.Default() at warn and
	// above for mochi's own chatter.
	Logger *slog.Logger
}

// MQTTServer is an embedded mochi-mqtt v2 broker speaking MQTT v5 (and
// 3.1.1). Lifecycle: NewMQTTServer, Start (non-blocking), Ready, Shutdown.
// It installs no signal handlers. Its methods are safe for concurrent use.
//
// It delivers every message to its clients at QoS 0, keeps no session past
// a disconnect, and takes QoS 0 and 1 from clients (see qosHook): mochi
// v2.7.9, the newest served, deadlocks on a client that has QoS 1
// messages in flight towards it (broker/deadlock_test.go). Notices are
// retained, so a device that (re)subscribes gets its notice from the
// retained copy, and the publisher sends a notice again to a device that
// stays silent.
type MQTTServer struct {
	cfg  MQTTServerConfig
	srv  *mqtt.Server
	drop *dropHook
	ln   *listeners.TCP
	mu   sync.Mutex
	up   chan struct{}
	down chan struct{}
	st   int // 0 new, 1 started, 2 shut down
}

// NewMQTTServer validates cfg and prepares a broker; nothing listens until
// Start.
func NewMQTTServer(cfg MQTTServerConfig) (*MQTTServer, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultMQTTListen
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("%w: mqtt listen address %q: %v", ErrBadServerConfig, cfg.Listen, err)
	}
	if cfg.Topics.Root() == "" {
		cfg.Topics = schemas.MustTopics("")
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = DefaultMaxQueued
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1                   // no QoS 2: its PUBREC waits in the inflight map
	caps.MaximumSessionExpiryInterval = 0 // nothing to keep: deliveries are QoS 0
	caps.MaximumInflight = uint16(min(cfg.MaxQueued, 65535))
	caps.ReceiveMaximum = uint16(min(cfg.MaxQueued, 65535))
	caps.MaximumClientWritesPending = 1024
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(minLevel{slog.LevelWarn, cfg.Logger.Handler()}).With("component", "mqtt-broker"),
		InlineClient: true,
	})
	var hook mqtt.Hook
	if cfg.Auth == nil {
		hook = new(openHook)
	} else {
		hook = &authHook{auth: cfg.Auth, policy: Policy{Topics: cfg.Topics}, log: cfg.Logger}
	}
	drop := &dropHook{log: cfg.Logger}
	for _, h := range []mqtt.Hook{hook, &qosHook{srv: srv}, drop} {
		if err := srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: mqtt hook %s: %w", h.ID(), err)
		}
	}
	return &MQTTServer{cfg: cfg, srv: srv, drop: drop, up: make(chan struct{}), down: make(chan struct{})}, nil
}

// Start binds the listener and starts serving in the background. It
// returns the bind error, if any; calling it twice is an error.
func (s *MQTTServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.st {
	case 1:
		return fmt.Errorf("%w: mqtt server already started", ErrBadServerConfig)
	case 2:
		return ErrServerClosed
	}
	s.ln = listeners.NewTCP(listeners.Config{ID: "firmcast-tcp", Address: s.cfg.Listen, TLSConfig: s.cfg.TLS})
	if err := s.srv.AddListener(s.ln); err != nil {
		return fmt.Errorf("broker: mqtt listen on %s: %w", s.cfg.Listen, err)
	}
	if err := s.srv.Serve(); err != nil {
		return fmt.Errorf("broker: mqtt serve: %w", err)
	}
	s.st = 1
	close(s.up)
	s.cfg.Logger.Info("mqtt broker listening", "url", s.scheme()+s.ln.Address())
	return nil
}

// Ready waits until the broker accepts connections, or ctx ends, or the
// server is shut down (ErrServerClosed).
func (s *MQTTServer) Ready(ctx context.Context) error {
	select {
	case <-s.up:
	case <-s.down:
		return ErrServerClosed
	case <-ctx.Done():
		return fmt.Errorf("broker: mqtt server not ready: %w", ctx.Err())
	}
	// Start bound the listener before returning: connections are accepted
	// (queued by the kernel until the accept loop runs).
	return nil
}

// Addr returns the bound "host:port" once started (the configured address
// before).
func (s *MQTTServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return s.cfg.Listen
	}
	return s.ln.Address()
}

// URL returns "mqtt://host:port" (or "mqtts://" with TLS) for Dial.
func (s *MQTTServer) URL() string { return s.scheme() + s.Addr() }

func (s *MQTTServer) scheme() string {
	if s.cfg.TLS != nil {
		return "mqtts://"
	}
	return "mqtt://"
}

// Shutdown disconnects every client, stops the listener and returns when
// the broker's goroutines have ended (a client that reads nothing has its
// connection closed after a second). It is safe to call more than once,
// and before Start.
func (s *MQTTServer) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == 2 {
		return
	}
	started := s.st == 1
	s.st = 2
	close(s.down)
	if !started {
		return
	}
	// mochi's Close writes a DISCONNECT to every client under the
	// client's lock. A client that reads nothing (its socket full, a
	// write of mochi's blocked on it holding that lock) holds Close for
	// ever (Close once never returned, in a test run at 20:32 UTC,
	// 2026-11-25; this is the way that TestShutdownStuckClient
	// reproduces). So Shutdown gives Close mqttCloseGrace, then
	// closes the connection of every client still there, which ends such
	// writes, and waits for Close to return. mochi v2.7.9 has one more
	// recursive read lock that no connection close ends: Close's
	// Clients.GetByListener holds the clients map's read lock and takes
	// it again in Len, and a connection ending at that moment queues
	// Clients.Delete (a writer) between the two (seen in a CI run at
	// 18:45 UTC, 2026-12-04, in TestIdleFleet). Then the map stays locked
	// for ever. So the listeners are closed first with
	// disconnectListenerClients, which does what mochi's own closer does
	// under one read lock (GetAll); Close then finds them closed and
	// does not take that path (seen again in a CI run at 10:12 UTC,
	// 2026-12-06, in the broker package). Should the map still lock,
	// Shutdown gives up after mqttCloseTimeout, logs it, and leaves
	// mochi's goroutines behind rather than hang its caller. The client
	// closes run in their own goroutine, since GetAll takes that lock too.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		s.srv.Listeners.CloseAll(s.disconnectListenerClients)
		_ = s.srv.Close()
	}()
	grace := time.NewTicker(mqttCloseGrace)
	defer grace.Stop()
	start := time.Now()
	var stopping atomic.Bool
	for {
		select {
		case <-closed:
			return
		case <-grace.C:
		}
		if stopping.CompareAndSwap(false, true) {
			go func() {
				defer stopping.Store(false)
				for _, cl := range s.srv.Clients.GetAll() {
					if !cl.Net.Inline {
						cl.Stop(packets.ErrServerShuttingDown)
					}
				}
			}()
		}
		if time.Since(start) >= mqttCloseTimeout {
			s.cfg.Logger.Error("embedded MQTT broker did not close (mochi's clients map is locked for ever); its goroutines are left behind", "after", time.Since(start).Round(time.Second))
			return
		}
	}
}

// disconnectListenerClients is mochi's closeListenerClients (a
// DISCONNECT, server shutting down, to each client of the listener)
// without its recursive read lock of the clients map.
func (s *MQTTServer) disconnectListenerClients(listener string) {
	for _, cl := range s.srv.Clients.GetAll() {
		if cl.Net.Listener == listener {
			_ = s.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// mqttCloseGrace is how long Shutdown lets mochi close its clients before
// it closes their connections; mqttCloseTimeout is when it gives up.
const (
	mqttCloseGrace   = time.Second
	mqttCloseTimeout = 10 * time.Second
)

// Done is closed when Shutdown has been called.
func (s *MQTTServer) Done() <-chan struct{} { return s.down }

// Dropped returns how many messages the broker dropped instead of
// delivering, since it started: mochi drops a message for a client whose
// queue of pending writes (1024) is full, a client that reads slower than
// it is sent to. Every drop is also logged (at warn, the 1st, 2nd, 4th,
// 8th... of the server).
func (s *MQTTServer) Dropped() int64 { return s.drop.n.Load() }

// authHook enforces the access policy in mochi: every client
// authenticates through the Authenticator; each publish, subscribe and
// delivery is checked against Policy; wills and client ids are bound to
// the identity (OnConnectAuthenticate).
type authHook struct {
	mqtt.HookBase
	auth   Authenticator
	policy Policy
	log    *slog.Logger
	ids    sync.Map // *mqtt.Client -> Identity
}

func (h *authHook) ID() string { return "firmcast-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnDisconnect}, []byte{b})
}

// OnConnectAuthenticate admits a client whose user name and secret
// authenticate, with two bindings to the identity:
//
//   - client ids: a device must use its device id as client id; a backend
//     identity's client id is rewritten to "<user>:<client id>". No
//     identifier contains ':' (schemas.CheckID), so no client can take
//     over the session of another identity (mochi drops the older of two
//     connections with one client id);
//   - wills: mochi publishes a will with no ACL check (OnWill cannot stop
//     it), so it is checked here, where the CONNECT can still be refused.
//     A device may not set a will at all (firmcast uses none; one on
//     another device's report topic would be a forged report); a backend
//     identity's will must be a publish the policy allows it.
//
// A service identity may not connect at all: it calls the campaign API
// over NATS only.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := h.auth.Authenticate(ctx, string(pk.Connect.Username), string(pk.Connect.Password))
	if err != nil {
		h.log.Info("mqtt client refused", "client", cl.ID, "user", string(pk.Connect.Username), "err", err)
		return false
	}
	switch id.Role {
	case RoleService:
		h.log.Info("mqtt client refused: service identities use NATS only", "client", cl.ID, "user", id.Username)
		return false
	case RoleDevice:
		if cl.ID != id.Device {
			h.log.Info("mqtt client refused: device client id must be its device id", "client", cl.ID, "user", id.Username)
			return false
		}
		if pk.Connect.WillFlag {
			h.log.Warn("mqtt client refused: a device may not set a will", "client", cl.ID, "will_topic", pk.Connect.WillTopic)
			return false
		}
	default:
		if pk.Connect.WillFlag && !h.policy.Allow(id, pk.Connect.WillTopic, true) {
			h.log.Warn("mqtt client refused: will on a topic it may not publish to", "client", cl.ID, "user", id.Username, "will_topic", pk.Connect.WillTopic)
			return false
		}
		cl.ID = backendClientID(id.Username, cl.ID)
	}
	h.ids.Store(cl, id)
	return true
}

// backendClientID is the broker-side client id of a backend identity's
// connection: its user name, ':', and the client id it asked for.
func backendClientID(user, asked string) string { return user + ":" + asked }

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	v, ok := h.ids.Load(cl)
	if !ok {
		return false
	}
	allowed := h.policy.Allow(v.(Identity), topic, write)
	if !allowed {
		h.log.Debug("mqtt acl denied", "client", cl.ID, "topic", topic, "write", write)
	}
	return allowed
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.ids.Delete(cl)
}

// qosHook keeps mochi off the path that deadlocks v2.7.9 (Inflight.
// NextImmediate re-taking a read lock it holds while a writer waits,
// reached after every packet of a client with QoS 1 messages in flight
// towards it; broker/deadlock_test.go): no client ever has a message in
// flight towards it.
//
//   - OnSubscribe grants every subscription QoS 0, so every delivery is QoS
//     0 (mochi sends at the lower of the publish's and the subscription's
//     QoS). Inbound QoS 1 still gets its PUBACK: a publish is acknowledged
//     once the broker has it (the server's MaximumQos 1 refuses QoS 2,
//     whose PUBREC would wait in the map).
//   - OnSessionEstablish drops the subscriptions of the session a
//     reconnecting client takes over (its old connection not yet seen
//     closed), so the client's subscribe is new and brings the retained
//     notice again: at QoS 0 nothing the old connection was sent is
//     re-sent. (Disconnected sessions are not kept at all: the server's
//     session expiry is 0.)
type qosHook struct {
	mqtt.HookBase
	srv *mqtt.Server
}

func (h *qosHook) ID() string { return "firmcast-qos0" }

func (h *qosHook) Provides(b byte) bool { return b == mqtt.OnSubscribe || b == mqtt.OnSessionEstablish }

func (h *qosHook) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for i := range pk.Filters {
		pk.Filters[i].Qos = 0
	}
	return pk
}

func (h *qosHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if old, ok := h.srv.Clients.Get(cl.ID); ok && old != cl {
		h.srv.UnsubscribeClient(old)
	}
}

// dropHook counts and logs the messages mochi drops for clients whose
// queue of pending writes is full (with QoS 0 deliveries, as before with
// QoS 1 ones: mochi rolled a QoS 1 delivery back when the queue was full).
type dropHook struct {
	mqtt.HookBase
	log *slog.Logger
	n   atomic.Int64
}

func (h *dropHook) ID() string { return "firmcast-drops" }

func (h *dropHook) Provides(b byte) bool { return b == mqtt.OnPublishDropped }

func (h *dropHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if n := h.n.Add(1); n&(n-1) == 0 {
		h.log.Warn("mqtt broker dropped a message: the client's queue of pending writes is full", "client", cl.ID, "topic", pk.TopicName, "dropped_total", n)
	}
}

// openHook lets every client in and allows everything (no Authenticator).
type openHook struct{ mqtt.HookBase }

func (h *openHook) ID() string { return "firmcast-open" }

func (h *openHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *openHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *openHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// minLevel drops records below min (mochi logs every start step at info).
type minLevel struct {
	min slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.min, h.Handler.WithAttrs(as)}
}

func (h minLevel) WithGroup(g string) slog.Handler { return minLevel{h.min, h.Handler.WithGroup(g)} }

// Disconnect closes every live session of the client whose user name or
// client id is user (a device: its device id), with reason "not
// authorized", and returns how many it closed. It is how a device removed
// from the registry loses its live connections: Authenticate refuses it
// from then on, so it cannot come back. Safe for concurrent use; a server
// not started or shut down has none (0).
func (s *MQTTServer) Disconnect(user string) int {
	s.mu.Lock()
	started := s.st == 1
	s.mu.Unlock()
	if !started || user == "" {
		return 0
	}
	n := 0
	for id, cl := range s.srv.Clients.GetAll() {
		if cl.Net.Inline || (id != user && string(cl.Properties.Username) != user) || cl.Closed() {
			continue
		}
		_ = s.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	if n > 0 {
		s.cfg.Logger.Info("mqtt sessions closed", "user", user, "sessions", n)
	}
	return n
}
