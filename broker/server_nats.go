package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/jsensure"
	"github.com/firmcast/firmcast/schemas"
)

// DefaultNATSListen is where the embedded NATS server listens by default:
// loopback, a free port.
const DefaultNATSListen = "127.0.0.1:0"

// NATSServerConfig configures the embedded nats-server. It is taken by
// value.
type NATSServerConfig struct {
	// Listen is the client address, "host:port"; port 0 picks a free port
	// (see URL). Default DefaultNATSListen.
	Listen string
	// DataDir holds JetStream's files (the retained-notice stream and the
	// backend's streams). Required.
	DataDir string
	// TLS, when set, requires TLS from every client (URL then reports
	// tls://).
	TLS *tls.Config
	// Auth authenticates every client and sets its permissions from the
	// access policy (NATSPermissions). Nil means open (development and
	// tests only).
	Auth Authenticator
	// Topics is the root the access policy protects. Default root
	// "firmcast".
	Topics schemas.Topics
	// ServerName names the server. Default "firmcast".
	ServerName string
	// Logger receives our start/stop lines (nats-server's own log is off).
	// Default slog.Default().
	Logger *slog.Logger
}

// NATSServer is an embedded nats-server with JetStream. Lifecycle:
// NewNATSServer, Start (non-blocking), Ready, Shutdown. It installs no
// signal handlers. Its methods are safe for concurrent use.
type NATSServer struct {
	cfg NATSServerConfig
	// internal is the secret of the server's own in-process backend
	// identity (EnsureNoticeStream), random per server.
	internal string
	srv      *server.Server
	mu       sync.Mutex
	up       chan struct{}
	down     chan struct{}
	st       int
}

// NewNATSServer validates cfg and prepares the server; nothing listens
// until Start.
func NewNATSServer(cfg NATSServerConfig) (*NATSServer, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultNATSListen
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: nats listen address %q: %v", ErrBadServerConfig, cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: nats listen port %q", ErrBadServerConfig, portStr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: nats server needs a data directory for JetStream", ErrBadServerConfig)
	}
	if cfg.Topics.Root() == "" {
		cfg.Topics = schemas.MustTopics("")
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "firmcast"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      true,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		// Notices and chunk messages are small; 1 MiB leaves room for a
		// 64 KiB chunk with headers.
		MaxPayload: 1 << 20,
	}
	if cfg.TLS != nil {
		opts.TLS, opts.TLSConfig, opts.TLSTimeout = true, cfg.TLS, 2
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("broker: nats internal secret: %w", err)
	}
	internal := hex.EncodeToString(b[:])
	if cfg.Auth != nil {
		opts.CustomClientAuthentication = &natsAuth{auth: cfg.Auth, internal: internal, policy: Policy{Topics: cfg.Topics}, log: cfg.Logger}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadServerConfig, err)
	}
	return &NATSServer{cfg: cfg, internal: internal, srv: srv, up: make(chan struct{}), down: make(chan struct{})}, nil
}

// Start starts the server in the background; it does not wait for it to
// accept connections (see Ready). Calling it twice is an error.
func (s *NATSServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.st {
	case 1:
		return fmt.Errorf("%w: nats server already started", ErrBadServerConfig)
	case 2:
		return ErrServerClosed
	}
	// nats-server reports a failed bind only through its (disabled) logger
	// and never becomes ready; check the address first for a clear error.
	if o := s.srv.Addr(); o == nil && s.cfg.Listen != "" {
		if host, port, err := net.SplitHostPort(s.cfg.Listen); err == nil && port != "0" {
			l, err := net.Listen("tcp", net.JoinHostPort(host, port))
			if err != nil {
				return fmt.Errorf("broker: nats listen on %s: %w", s.cfg.Listen, err)
			}
			l.Close()
		}
	}
	s.st = 1
	s.srv.Start()
	close(s.up)
	return nil
}

// Ready waits until the server accepts connections (JetStream included),
// or ctx ends, or the server is shut down (ErrServerClosed).
func (s *NATSServer) Ready(ctx context.Context) error {
	select {
	case <-s.up:
	case <-s.down:
		return ErrServerClosed
	case <-ctx.Done():
		return fmt.Errorf("broker: nats server not ready: %w", ctx.Err())
	}
	for !s.srv.ReadyForConnections(50 * time.Millisecond) {
		select {
		case <-s.down:
			return ErrServerClosed
		case <-ctx.Done():
			return fmt.Errorf("broker: nats server not ready: %w", ctx.Err())
		default:
		}
	}
	s.cfg.Logger.Info("nats server listening", "url", s.URL(), "data_dir", s.cfg.DataDir)
	return nil
}

// Addr returns the bound "host:port" once ready.
func (s *NATSServer) Addr() string {
	if a, ok := s.srv.Addr().(*net.TCPAddr); ok && a != nil {
		return a.String()
	}
	return s.cfg.Listen
}

// URL returns "nats://host:port" (or "tls://" with TLS) for Dial, once
// ready.
func (s *NATSServer) URL() string {
	if s.cfg.TLS != nil {
		return "tls://" + s.Addr()
	}
	return "nats://" + s.Addr()
}

// Shutdown stops the server and waits for it. Safe to call more than once,
// and before Start.
func (s *NATSServer) Shutdown() {
	s.mu.Lock()
	if s.st == 2 {
		s.mu.Unlock()
		return
	}
	started := s.st == 1
	s.st = 2
	close(s.down)
	s.mu.Unlock()
	if started {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
}

// Done is closed when Shutdown has been called.
func (s *NATSServer) Done() <-chan struct{} { return s.down }

// Server returns the underlying nats-server, for in-process connections
// (server.InProcessConn) and monitoring.
func (s *NATSServer) Server() *server.Server { return s.srv }

// internalUser is the user name of the server's in-process backend
// connection; no Authenticator entry can take it (it is not a valid
// identifier).
const internalUser = "_firmcast.internal"

// EnsureNoticeStream makes sure the retained-notice stream of the server's
// topic root exists (as NATSTransport.NoticeStream does: create, update
// only a differing configuration) over an in-process connection, so that
// devices, which may not create streams, can read their notices before
// any backend has connected. Call it after Ready.
func (s *NATSServer) EnsureNoticeStream(ctx context.Context) error {
	opts := []nats.Option{nats.InProcessServer(s.srv), nats.Name(internalUser)}
	if s.cfg.Auth != nil {
		opts = append(opts, nats.UserInfo(internalUser, s.internal))
	}
	in, err := inboxTopic(s.cfg.Topics, "server")
	if err != nil {
		return err
	}
	opts = append(opts, nats.CustomInboxPrefix(in.NATS))
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return fmt.Errorf("broker: nats in-process connection: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("broker: nats jetstream: %w", err)
	}
	ctx, cancel := withDefaultDeadline(ctx, 10*time.Second)
	defer cancel()
	if _, err := jsensure.Stream(ctx, js, noticeStreamConfig(s.cfg.Topics)); err != nil {
		return fmt.Errorf("broker: notice stream: %w", err)
	}
	return nil
}

// natsAuth authenticates NATS clients with an Authenticator and gives each
// the permissions of NATSPermissions.
type natsAuth struct {
	auth     Authenticator
	internal string
	policy   Policy
	log      *slog.Logger
}

func (a *natsAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o.Username == internalUser {
		if c.Kind() == server.CLIENT && subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.internal)) == 1 {
			c.RegisterUser(&server.User{Username: internalUser, Permissions: NATSPermissions(a.policy, Identity{Username: internalUser, Role: RoleBackend})})
			return true
		}
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := a.auth.Authenticate(ctx, o.Username, o.Password)
	if err != nil {
		a.log.Info("nats client refused", "user", o.Username, "err", err)
		return false
	}
	c.RegisterUser(&server.User{Username: id.Username, Permissions: NATSPermissions(a.policy, id)})
	return true
}

// NATSPermissions is Policy expressed as nats-server permissions for one
// identity, by role (natsBackendPermissions, natsServicePermissions,
// natsDevicePermissions); any other role may do nothing. The embedded
// server applies them per connection; NATSConfig writes the same ones for
// an external nats-server.
func NATSPermissions(p Policy, id Identity) *server.Permissions {
	switch id.Role {
	case RoleBackend:
		return natsBackendPermissions(p.Topics)
	case RoleService:
		return natsServicePermissions(p.Topics, id)
	case RoleDevice:
		return natsDevicePermissions(p.Topics, id)
	}
	return &server.Permissions{Publish: &server.SubjectPermission{Deny: []string{">"}}, Subscribe: &server.SubjectPermission{Deny: []string{">"}}}
}

// natsRootPrefix is the topic root as a NATS subject prefix, with its
// trailing dot.
func natsRootPrefix(t schemas.Topics) string {
	all := t.NoticesAll().NATS // root.v1.dev.*.notice
	return all[:len(all)-len("v1.dev.*.notice")]
}

// natsBackendPermissions: everything under the root, plus the JetStream,
// KV and object-store APIs: the backend (the publisher's own identity)
// owns the JetStream state, API keys and audit log included. No other
// role has any of these.
func natsBackendPermissions(t schemas.Topics) *server.Permissions {
	root := natsRootPrefix(t)
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{root + ">", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{root + ">"}},
	}
}

// natsServicePermissions is what a service (a campaign API caller) may
// do: publish campaign API requests (root.v1.api.campaign.<op>) and
// receive the replies on its own inbox (root.v1.api.inbox.<user>.>, so it
// must dial with ClientID = its user name). Nothing else: no JetStream,
// KV or object-store API (the key bucket, the audit stream and every
// other piece of state stay the backend's), no device topic, no other
// inbox, and no subscription to the API subjects (it can neither read
// other callers' API keys nor answer in the publisher's place). What a
// request may do is decided by its API key's scope, as over HTTP.
func natsServicePermissions(t schemas.Topics, id Identity) *server.Permissions {
	in, err := inboxTopic(t, id.Username)
	if err != nil {
		deny := &server.SubjectPermission{Deny: []string{">"}}
		return &server.Permissions{Publish: deny, Subscribe: deny}
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{natsRootPrefix(t) + "v1.api.campaign.*"}},
		Subscribe: &server.SubjectPermission{Allow: []string{in.NATS + ".>"}},
	}
}

// natsDevicePermissions is Policy for a device: publish its reports and
// chunk requests; receive its notice, its chunk replies, its class's
// announcements, image chunks and replies on its inbox
// (root.v1.api.inbox.<device>.>, so it must dial with ClientID = its
// device id). Of JetStream it may only read its own retained notice, by
// the direct get that names its notice subject
// ($JS.API.DIRECT.GET.<notice stream>.<its notice subject>): no stream
// info, no consumers, no direct get of another subject, so nothing that
// names another device.
func natsDevicePermissions(t schemas.Topics, id Identity) *server.Permissions {
	root := natsRootPrefix(t)
	var pub, sub []string
	if r, err := t.Report(id.Device); err == nil {
		pub = append(pub, r.NATS)
	}
	if r, err := t.ChunkRequestsFrom(id.Device); err == nil {
		pub = append(pub, r.NATS)
	}
	if n, err := t.Notice(id.Device); err == nil {
		sub = append(sub, n.NATS)
		pub = append(pub, directGetSubject(NoticeStreamName(t), n.NATS))
	}
	if c, err := t.ChunkReply(id.Device); err == nil {
		sub = append(sub, c.NATS)
	}
	if id.Class != "" {
		if a, err := t.Announce(id.Class); err == nil {
			sub = append(sub, a.NATS)
		}
	}
	sub = append(sub, root+"v1.img.*.chunks")
	if in, err := inboxTopic(t, id.Device); err == nil {
		sub = append(sub, in.NATS+".>")
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}
}

// Disconnect closes every live client connection authenticated as user
// (a device: its device id) and returns how many it closed. It is how a
// device removed from the registry loses its live connections: the
// Authenticator refuses it from then on, so it cannot come back. Safe for
// concurrent use; a server not started or shut down has none (0).
func (s *NATSServer) Disconnect(user string) int {
	s.mu.Lock()
	started := s.st == 1
	s.mu.Unlock()
	if !started || user == "" {
		return 0
	}
	var cids []uint64
	for off := 0; ; {
		cz, err := s.srv.Connz(&server.ConnzOptions{User: user, Username: true, Offset: off, Limit: 1024})
		if err != nil {
			break
		}
		for _, c := range cz.Conns {
			cids = append(cids, c.Cid)
		}
		if len(cz.Conns) < 1024 {
			break
		}
		off += len(cz.Conns)
	}
	n := 0
	for _, cid := range cids {
		if s.srv.DisconnectClientByID(cid) == nil {
			n++
		}
	}
	if n > 0 {
		s.cfg.Logger.Info("nats connections closed", "user", user, "connections", n)
	}
	return n
}
