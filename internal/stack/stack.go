package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/console"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// Config configures a Stack. It is taken by value.
type Config struct {
	// MQTTURL names an external device broker (mqtt://, mqtts://, or
	// nats:// for devices on NATS). Empty starts the embedded MQTT v5
	// broker (mochi) on MQTTListen, unless NoMQTT.
	MQTTURL string
	// MQTTListen is the embedded MQTT broker's address. Default
	// "127.0.0.1:0" (a free port).
	MQTTListen string
	// NoMQTT leaves the MQTT broker out: devices use NATS only.
	NoMQTT bool
	// NATSURL names an external NATS server or cluster (comma-separated)
	// with JetStream. Empty starts the embedded nats-server on NATSListen
	// with its store under DataDir.
	NATSURL string
	// NATSListen is the embedded NATS server's address. Default
	// "127.0.0.1:0".
	NATSListen string
	// NoNATS leaves the NATS server out (an MQTT broker alone); it
	// implies NoPublisher, whose state lives in JetStream.
	NoNATS bool
	// DataDir holds the embedded NATS server's JetStream store. Required
	// when NATSURL is empty.
	DataDir string
	// TLS makes the embedded brokers accept TLS only.
	TLS *tls.Config
	// ClientTLS configures the publisher's own tls:// and mqtts://
	// connections. Default: system roots.
	ClientTLS *tls.Config
	// Topics is the topic root of everything the stack and its devices
	// publish. Required (use a unique root on shared brokers).
	Topics schemas.Topics
	// Namespace prefixes the publisher's JetStream buckets. Default: the
	// topic root. With the embedded NATS server, whose access policy
	// confines the backend to the topic root, it must equal the root (the
	// publisher's audit subject is "<namespace>.audit").
	Namespace string

	// Open makes the embedded brokers accept any client without
	// credentials and without the access policy: development only.
	Open bool
	// Accounts are the broker accounts of the embedded brokers (from a
	// credentials file: backend, service and device accounts, each role
	// confined by the access policy). Devices registered with the
	// publisher authenticate from its registry first, then these accounts
	// (the order of publisher.DeviceAuthenticator). The publisher uses
	// the backend account named by Backend.Username, or else the first
	// backend account with a clear secret; when there is none, the stack
	// adds a backend account of its own with a random secret.
	Accounts []broker.Account
	// Backend is the publisher's own account: on external brokers the one
	// it connects with (empty: anonymous); with the embedded brokers its
	// Username picks the publisher's account among Accounts.
	Backend broker.Account

	// NoPublisher runs the brokers only.
	NoPublisher bool
	// Publisher is the publisher configuration; JetStream, Transport,
	// Topics and Namespace are filled in.
	Publisher publisher.Config
	// DevicesOnNATS makes the publisher serve devices on the NATS
	// connection too (not only on the MQTT broker), as `firmcast serve`
	// does for gateways. With NoMQTT, or an MQTTURL equal to NATSURL,
	// devices are on NATS anyway.
	DevicesOnNATS bool
	// ClientID is the publisher's client id. Default "fc-pub-" and random
	// hex.
	ClientID string
	// HTTPListen, when set, serves the publisher's HTTP API there.
	HTTPListen string
	// HTTPTLS, when set, serves the HTTP API over TLS only (HTTPURL is
	// then "https://..."); with ClientAuth set, clients need a
	// certificate too (besides their API key).
	HTTPTLS *tls.Config
	// MosquittoPasswd, with an external mosquitto as the device broker
	// (MQTTURL), is the password_file that mosquitto reads (as `firmcast
	// broker mosquitto-config` writes it). The stack then owns that file:
	// at start and whenever this instance adds or removes a device it
	// writes it again (atomically) from Accounts (backends and devices,
	// each with its clear secret) and the device registry, and sends
	// mosquitto SIGHUP (MosquittoPID or MosquittoPIDFile), so that a
	// removed device's live session is dropped and cannot come back, and
	// a new device can connect. Empty: the file is not touched.
	MosquittoPasswd string
	// MosquittoPID is the process id of that mosquitto (0: see
	// MosquittoPIDFile).
	MosquittoPID int
	// MosquittoPIDFile names a file holding mosquitto's process id, read
	// at every reload. With neither, the file is written but mosquitto
	// reads it only at its next reload.
	MosquittoPIDFile string
	// MosquittoReloadGap is the least time between two rewrites and
	// reloads; changes within it wait and share the next one. A reload
	// costs mosquitto a password check per connected client (60 to 70 µs
	// each here, BenchmarkMosquittoReload: 6 to 7 s at 100,000 devices),
	// during which it serves no one. Default 0 means
	// DefaultMosquittoReloadGap.
	MosquittoReloadGap time.Duration
	// BrokerHookListen, when set, serves the broker auth hook there
	// (broker.HTTPHook: EMQX 5 HTTP authentication and authorization,
	// POST broker.HookAuthnPath and broker.HookAuthzPath), over HTTPTLS's
	// certificate when HTTPTLS is set (without asking for client
	// certificates: the broker presents BrokerHookSecret). It
	// authenticates as the embedded brokers do: devices from the
	// registry, every other user from Accounts; it authorizes with the
	// same broker.Policy. Needs the publisher.
	BrokerHookListen string
	// BrokerHookSecret is the bearer secret the broker must send (at least
	// 16 bytes). Required with BrokerHookListen.
	BrokerHookSecret string
	// Cleanup, with external brokers, makes Close delete what the run left
	// there: the namespace's buckets and streams and the retained notices
	// of the devices given to Close. For runs on shared brokers (demo,
	// bench), never for a production server.
	Cleanup bool
	// Logger receives the stack's logs. Default slog.Default().
	Logger *slog.Logger
}

// Stack is a running backend: brokers (embedded, or external ones given
// by URL), one in-process publisher and its HTTP API. Its methods are
// safe for concurrent use.
type Stack struct {
	// MQTTURL and NATSURL are where devices and services connect (MQTTURL
	// is empty with NoMQTT).
	MQTTURL, NATSURL string
	// HTTPURL is the HTTP API's base URL ("http://host:port", or
	// "https://" with HTTPTLS), when HTTPListen was set.
	HTTPURL string
	// HookURL is the broker auth hook's base URL ("http://host:port", or
	// "https://" with HTTPTLS), when BrokerHookListen was set.
	HookURL string
	// Topics is the topic root.
	Topics schemas.Topics
	// Pub is the running publisher (nil with NoPublisher); Admin the
	// principal of its bootstrap key.
	Pub   *publisher.Publisher
	Admin publisher.Principal
	// AdminKey is the publisher's bootstrap admin API key.
	AdminKey string
	// EmbeddedMQTT and EmbeddedNATS report which brokers run in this
	// process.
	EmbeddedMQTT, EmbeddedNATS bool

	cfg     Config
	auth    *Auth
	mqttSrv *broker.MQTTServer
	natsSrv *broker.NATSServer
	inst    *Instance
	http    *http.Server
	hook    *http.Server
	mosq    *mosquittoSync
}

// Start starts the brokers (unless external), the publisher (unless
// NoPublisher) and its HTTP API (when HTTPListen is set), and returns
// once the publisher takes device traffic. On error everything started
// is stopped again. Close stops it all.
func Start(ctx context.Context, cfg Config) (s *Stack, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Topics.Root() == "" {
		return nil, errors.New("stack: a topic root is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = cfg.Topics.Root()
	}
	if cfg.NATSURL == "" && cfg.Namespace != cfg.Topics.Root() {
		return nil, fmt.Errorf("stack: with the embedded NATS server the namespace (%q) must be the topic root (%q)", cfg.Namespace, cfg.Topics.Root())
	}
	s = &Stack{cfg: cfg, Topics: cfg.Topics, MQTTURL: cfg.MQTTURL, NATSURL: cfg.NATSURL}
	started := s
	defer func() {
		if err != nil {
			started.Close(context.WithoutCancel(ctx))
		}
	}()
	embedMQTT := cfg.MQTTURL == "" && !cfg.NoMQTT
	embedNATS := cfg.NATSURL == "" && !cfg.NoNATS
	if cfg.NoNATS {
		cfg.NoPublisher = true
	}
	if cfg.NoMQTT && cfg.NoNATS {
		return nil, errors.New("stack: nothing to run: no MQTT broker and no NATS server")
	}
	backend := cfg.Backend
	if (embedMQTT || embedNATS) && !cfg.Open {
		if s.auth, backend, err = newAuth(cfg.Accounts, cfg.Backend.Username); err != nil {
			return nil, err
		}
	}
	if cfg.BrokerHookListen != "" {
		if cfg.NoPublisher {
			return nil, errors.New("stack: the broker auth hook needs the publisher (its device registry)")
		}
		if s.auth == nil {
			// External brokers: the hook is their only authentication.
			store, err := broker.NewCredentialStoreFrom(cfg.Accounts)
			if err != nil {
				return nil, fmt.Errorf("stack: accounts: %w", err)
			}
			s.auth = &Auth{accounts: store}
		}
	}
	var auth broker.Authenticator
	if s.auth != nil {
		auth = s.auth
	}
	if embedMQTT {
		listen := cfg.MQTTListen
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{Listen: listen, Auth: auth, Topics: cfg.Topics, Logger: cfg.Logger, TLS: cfg.TLS, MaxQueued: 1000})
		if err != nil {
			return nil, fmt.Errorf("stack: mqtt broker: %w", err)
		}
		s.mqttSrv, s.EmbeddedMQTT = srv, true
		if err := srv.Start(); err != nil {
			return nil, fmt.Errorf("stack: mqtt broker: %w", err)
		}
		if err := srv.Ready(ctx); err != nil {
			return nil, fmt.Errorf("stack: mqtt broker: %w", err)
		}
		s.MQTTURL = srv.URL()
	}
	if embedNATS {
		if cfg.DataDir == "" {
			return nil, errors.New("stack: the embedded NATS server needs a data directory")
		}
		listen := cfg.NATSListen
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		srv, err := broker.NewNATSServer(broker.NATSServerConfig{Listen: listen, DataDir: cfg.DataDir, Auth: auth, Topics: cfg.Topics, Logger: cfg.Logger, TLS: cfg.TLS})
		if err != nil {
			return nil, fmt.Errorf("stack: nats server: %w", err)
		}
		s.natsSrv, s.EmbeddedNATS = srv, true
		if err := srv.Start(); err != nil {
			return nil, fmt.Errorf("stack: nats server: %w", err)
		}
		if err := srv.Ready(ctx); err != nil {
			return nil, fmt.Errorf("stack: nats server: %w", err)
		}
		// Devices may not create streams: make the retained-notice stream now.
		if err := srv.EnsureNoticeStream(ctx); err != nil {
			return nil, fmt.Errorf("stack: nats server: %w", err)
		}
		s.NATSURL = srv.URL()
	}
	if cfg.NoPublisher {
		return s, nil
	}
	var devURLs []string
	if s.MQTTURL != "" {
		devURLs = append(devURLs, s.MQTTURL)
	}
	if cfg.DevicesOnNATS || s.MQTTURL == "" {
		devURLs = append(devURLs, s.NATSURL)
	}
	pc := cfg.Publisher
	pc.Namespace = cfg.Namespace
	// A removed device loses its live sessions on the embedded brokers at
	// once (the registry refuses it from then on), and any account of its
	// in the credentials.
	if cfg.MosquittoPasswd != "" {
		if embedMQTT || cfg.MQTTURL == "" {
			return nil, errors.New("stack: a mosquitto password file needs an external mosquitto (MQTTURL)")
		}
		accts := append([]broker.Account{backend}, cfg.Accounts...)
		if backend.Username == "" {
			accts = cfg.Accounts
		}
		gap := cfg.MosquittoReloadGap
		if gap == 0 {
			gap = DefaultMosquittoReloadGap
		}
		if s.mosq, err = newMosquittoSync(cfg.MosquittoPasswd, cfg.MosquittoPID, cfg.MosquittoPIDFile, gap, accts, cfg.Logger); err != nil {
			return nil, err
		}
		userAdded := pc.OnDeviceAdded
		pc.OnDeviceAdded = func(id string) {
			s.mosq.changed(id)
			if userAdded != nil {
				userAdded(id)
			}
		}
	}
	userRemoved := pc.OnDeviceRemoved
	pc.OnDeviceRemoved = func(id string) {
		if s.mosq != nil {
			s.mosq.changed(id)
		}
		if s.auth != nil {
			s.auth.accounts.Remove(id)
		}
		if s.mqttSrv != nil {
			s.mqttSrv.Disconnect(id)
		}
		if s.natsSrv != nil {
			s.natsSrv.Disconnect(id)
		}
		if userRemoved != nil {
			userRemoved(id)
		}
	}
	// Devices may not take the name of a backend or service account.
	if backend.Username != "" {
		pc.ReservedNames = append(pc.ReservedNames, backend.Username)
	}
	for _, a := range cfg.Accounts {
		if a.Role != broker.RoleDevice {
			pc.ReservedNames = append(pc.ReservedNames, a.Username)
		}
	}
	if pc.BootstrapKey == "" {
		pc.BootstrapKey = "fk-" + randomHex(16)
	}
	s.AdminKey = pc.BootstrapKey
	if s.inst, err = StartInstance(ctx, InstanceConfig{
		NATSURL: s.NATSURL, DeviceURLs: devURLs, Username: backend.Username, Password: backend.Secret,
		ClientID: cfg.ClientID, TLS: cfg.ClientTLS, Topics: cfg.Topics, Publisher: pc, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	s.Pub, s.Admin = s.inst.Pub, s.inst.Admin
	if s.mosq != nil {
		if err := s.mosq.start(ctx, s.Pub.MosquittoPasswordLines); err != nil {
			return nil, err
		}
	}
	if s.auth != nil {
		da := s.Pub.DeviceAuthenticator(s.auth.accounts)
		s.auth.pub.Store(&da)
	}
	if cfg.BrokerHookListen != "" {
		if err := s.serveHook(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.HTTPListen != "" {
		l, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return nil, fmt.Errorf("stack: http listen %s: %w", cfg.HTTPListen, err)
		}
		s.HTTPURL = "http://" + l.Addr().String()
		if cfg.HTTPTLS != nil {
			l = tls.NewListener(l, cfg.HTTPTLS)
			s.HTTPURL = "https://" + l.Addr().String()
		}
		// The operator console at /, the API beside it.
		s.http = &http.Server{Handler: console.Handler(s.Pub.Handler()), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := s.http.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Logger.Error("http API stopped", "err", err)
			}
		}()
	}
	return s, nil
}

// Instance is the stack's publisher instance (nil with NoPublisher).
func (s *Stack) Instance() *Instance { return s.inst }

// Done is closed when the stack's publisher has stopped on its own (an
// error: see Instance().Err()); nil with NoPublisher.
func (s *Stack) Done() <-chan struct{} {
	if s.inst == nil {
		return nil
	}
	return s.inst.Done()
}

// RegisterDevice adds a device to the publisher's registry, from which
// the embedded brokers authenticate it.
func (s *Stack) RegisterDevice(ctx context.Context, id, class, secret string) error {
	if s.Pub == nil {
		return errors.New("stack: no publisher")
	}
	_, _, err := s.Pub.AddDevice(ctx, s.Admin, publisher.NewDevice{ID: id, Class: class, Secret: secret})
	return err
}

// JetStream returns the publisher's JetStream handle.
func (s *Stack) JetStream() jetstream.JetStream { return s.inst.JetStream() }

// MQTTServer and NATSServer are the embedded brokers (nil when external).
func (s *Stack) MQTTServer() *broker.MQTTServer { return s.mqttSrv }

// NATSServer is the embedded NATS server (nil when external).
func (s *Stack) NATSServer() *broker.NATSServer { return s.natsSrv }

// Close stops the HTTP API, the publisher and the embedded brokers. With
// Cleanup and external brokers it first deletes what the run left there:
// the namespace's buckets and streams, and the retained notices of
// devices (given by id). Safe to call on a partly started stack.
func (s *Stack) Close(ctx context.Context, devices ...string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if s.http != nil {
		_ = s.http.Shutdown(cctx)
	}
	if s.hook != nil {
		_ = s.hook.Shutdown(cctx)
	}
	if s.mosq != nil {
		s.mosq.stop()
	}
	if s.inst != nil {
		if s.cfg.Cleanup {
			s.cleanup(cctx, devices)
		}
		s.inst.Stop()
	}
	if s.mqttSrv != nil {
		s.mqttSrv.Shutdown()
	}
	if s.natsSrv != nil {
		s.natsSrv.Shutdown()
	}
}

// cleanup clears the retained notices of devices on an external MQTT
// broker and removes the namespace's buckets and streams and the topic
// root's retained-notice stream from an external NATS.
func (s *Stack) cleanup(ctx context.Context, devices []string) {
	if s.mqttSrv == nil && s.MQTTURL != "" && s.MQTTURL != s.NATSURL {
		// Bounded apart: a broker that died must not hold up the rest.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for _, d := range devices {
			if t, err := s.Topics.Notice(d); err == nil && rctx.Err() == nil {
				_ = s.inst.Transport().Publish(rctx, t, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
			}
		}
		cancel()
	}
	if s.natsSrv != nil {
		return
	}
	js := s.inst.JetStream()
	ns := s.cfg.Namespace
	var names []string
	l := js.StreamNames(ctx)
	for n := range l.Name() {
		if publisher.StoreStream(ns, n) || n == broker.NoticeStreamName(s.Topics) {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			s.cfg.Logger.Warn("deleting stream", "stream", n, "err", err)
		}
	}
}

// Auth authenticates the embedded brokers' clients: devices from the
// publisher's registry once it runs (publisher.DeviceAuthenticator), and
// every other user, and every user before the publisher runs, from the
// stack's accounts.
type Auth struct {
	accounts *broker.CredentialStore
	pub      atomic.Pointer[broker.Authenticator]
}

// backendUser is the account the stack adds for its publisher when the
// accounts hold no backend account with a clear secret.
const backendUser = "firmcast-backend"

// newAuth builds the embedded brokers' authenticator from accounts and
// picks the publisher's own backend account: the one named user, or the
// first backend account with a clear secret, or (none) one it adds.
func newAuth(accounts []broker.Account, user string) (*Auth, broker.Account, error) {
	store, err := broker.NewCredentialStoreFrom(accounts)
	if err != nil {
		return nil, broker.Account{}, fmt.Errorf("stack: accounts: %w", err)
	}
	for _, a := range accounts {
		if a.Role == broker.RoleBackend && a.Secret != "" && (user == "" || a.Username == user) {
			return &Auth{accounts: store}, a, nil
		}
	}
	if user != "" {
		return nil, broker.Account{}, fmt.Errorf("stack: no backend account %q with a clear secret among the accounts", user)
	}
	b := broker.Account{Identity: broker.Identity{Username: backendUser, Role: broker.RoleBackend}, Secret: randomHex(16)}
	if err := store.Add(b.Identity, b.Secret); err != nil {
		return nil, broker.Account{}, fmt.Errorf("stack: backend account: %w", err)
	}
	return &Auth{accounts: store}, b, nil
}

// Authenticate implements broker.Authenticator.
func (a *Auth) Authenticate(ctx context.Context, user, secret string) (broker.Identity, error) {
	if p := a.pub.Load(); p != nil {
		return (*p).Authenticate(ctx, user, secret)
	}
	return a.accounts.Authenticate(ctx, user, secret)
}

// LookupIdentity implements broker.IdentityLookup in the order of
// Authenticate.
func (a *Auth) LookupIdentity(ctx context.Context, user string) (broker.Identity, error) {
	if p := a.pub.Load(); p != nil {
		if l, ok := (*p).(broker.IdentityLookup); ok {
			return l.LookupIdentity(ctx, user)
		}
	}
	return a.accounts.LookupIdentity(ctx, user)
}

// serveHook starts the broker auth hook's listener (Config.BrokerHookListen).
func (s *Stack) serveHook(cfg Config) error {
	h, err := broker.NewHTTPHook(broker.HookConfig{Auth: s.auth, Lookup: s.auth, Policy: broker.Policy{Topics: cfg.Topics},
		Secret: cfg.BrokerHookSecret, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("stack: broker hook: %w", err)
	}
	l, err := net.Listen("tcp", cfg.BrokerHookListen)
	if err != nil {
		return fmt.Errorf("stack: broker hook listen %s: %w", cfg.BrokerHookListen, err)
	}
	s.HookURL = "http://" + l.Addr().String()
	if cfg.HTTPTLS != nil {
		tc := cfg.HTTPTLS.Clone()
		tc.ClientAuth, tc.ClientCAs = tls.NoClientCert, nil
		l = tls.NewListener(l, tc)
		s.HookURL = "https://" + l.Addr().String()
	}
	s.hook = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		if err := s.hook.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("broker hook stopped", "err", err)
		}
	}()
	return nil
}
