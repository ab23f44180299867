package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// StackConfig configures a Stack. It is taken by value.
type StackConfig struct {
	// MQTTURL and NATSURL name external brokers; empty starts the embedded
	// one (mochi MQTT v5, nats-server with JetStream in Dir).
	MQTTURL, NATSURL string
	// Dir holds the embedded NATS server's JetStream store. Required when
	// NATSURL is empty.
	Dir string
	// Topics is the topic root of everything the stack and its devices
	// publish. Required (use a unique root on shared brokers).
	Topics schemas.Topics
	// Namespace prefixes the publisher's JetStream buckets. Required. With
	// the embedded NATS server, whose access policy confines the backend
	// to the topic root, it must equal the root (the publisher's audit
	// subject is "<namespace>.audit").
	Namespace string
	// Publisher is the publisher configuration; JetStream, Transport,
	// Topics, Namespace and BootstrapKey are filled in by StartStack.
	Publisher publisher.Config
	// Logger receives the stack's logs. Default slog.Default().
	Logger *slog.Logger
}

// Stack is a running backend: brokers and one in-process publisher.
// Its methods are safe for concurrent use.
type Stack struct {
	// MQTTURL and NATSURL are where devices and services connect.
	MQTTURL, NATSURL string
	// Topics is the topic root.
	Topics schemas.Topics
	// Pub is the running publisher; Admin its bootstrap admin principal.
	Pub   *publisher.Publisher
	Admin publisher.Principal
	// Embedded reports whether the brokers run in this process.
	Embedded bool
	// AdminKey is the publisher's bootstrap admin API key.
	AdminKey string

	cfg     StackConfig
	creds   *broker.CredentialStore // nil for external brokers
	auth    *stackAuth
	mqttSrv *broker.MQTTServer
	natsSrv *broker.NATSServer
	pubT    broker.Transport
	natsT   *broker.NATSTransport
	cancel  context.CancelFunc
	runDone chan error
}

const backendUser = "firmcast-backend"

// StartStack starts the brokers (unless external) and the publisher, and
// returns once the publisher takes device traffic. Close stops it all.
func StartStack(ctx context.Context, cfg StackConfig) (st *Stack, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Topics.Root() == "" || cfg.Namespace == "" {
		return nil, errors.New("fleet: stack needs a topic root and a namespace")
	}
	if cfg.NATSURL == "" && cfg.Namespace != cfg.Topics.Root() {
		return nil, fmt.Errorf("fleet: with the embedded NATS server the namespace (%q) must be the topic root (%q)", cfg.Namespace, cfg.Topics.Root())
	}
	s := &Stack{cfg: cfg, Topics: cfg.Topics, MQTTURL: cfg.MQTTURL, NATSURL: cfg.NATSURL}
	defer func() {
		if err != nil {
			s.Close(context.WithoutCancel(ctx))
		}
	}()
	backendSecret := randomHex(16)
	if cfg.MQTTURL == "" || cfg.NATSURL == "" {
		s.Embedded = true
		s.creds = broker.NewCredentialStore()
		s.auth = &stackAuth{creds: s.creds}
		if err := s.creds.Add(broker.Identity{Username: backendUser, Role: broker.RoleBackend}, backendSecret); err != nil {
			return nil, err
		}
	}
	if cfg.MQTTURL == "" {
		srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{Auth: s.auth, Topics: cfg.Topics, Logger: cfg.Logger, MaxQueued: 1000})
		if err != nil {
			return nil, err
		}
		s.mqttSrv = srv
		if err := srv.Start(); err != nil {
			return nil, err
		}
		if err := srv.Ready(ctx); err != nil {
			return nil, err
		}
		s.MQTTURL = srv.URL()
	}
	if cfg.NATSURL == "" {
		if cfg.Dir == "" {
			return nil, errors.New("fleet: the embedded NATS server needs a data directory")
		}
		srv, err := broker.NewNATSServer(broker.NATSServerConfig{DataDir: cfg.Dir, Auth: s.auth, Topics: cfg.Topics, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		s.natsSrv = srv
		if err := srv.Start(); err != nil {
			return nil, err
		}
		if err := srv.Ready(ctx); err != nil {
			return nil, err
		}
		s.NATSURL = srv.URL()
	}
	bcfg := func(url string) broker.Config {
		c := broker.Config{URL: url, Topics: cfg.Topics, ClientID: "fc-pub-" + randomHex(4), SharedMember: true, Logger: cfg.Logger}
		if s.creds != nil {
			c.Username, c.Password = backendUser, backendSecret
		}
		return c
	}
	if s.natsT, err = broker.DialNATS(ctx, bcfg(s.NATSURL)); err != nil {
		return nil, fmt.Errorf("fleet: nats %s: %w", s.NATSURL, err)
	}
	if s.pubT, err = broker.Dial(ctx, bcfg(s.MQTTURL)); err != nil {
		return nil, fmt.Errorf("fleet: broker %s: %w", s.MQTTURL, err)
	}
	pc := cfg.Publisher
	pc.JetStream, pc.Transport, pc.Topics, pc.Namespace = s.natsT.JetStream(), s.pubT, cfg.Topics, cfg.Namespace
	if pc.Logger == nil {
		pc.Logger = cfg.Logger
	}
	key := "fk-" + randomHex(16)
	pc.BootstrapKey, s.AdminKey = key, key
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if s.Pub, err = publisher.New(life, pc); err != nil {
		return nil, err
	}
	if s.Admin, err = s.Pub.Authenticate(ctx, key); err != nil {
		return nil, err
	}
	if s.auth != nil {
		s.auth.pub.Store(s.Pub)
	}
	s.runDone = make(chan error, 1)
	go func() { s.runDone <- s.Pub.Run(life) }()
	select {
	case <-s.Pub.Ready():
	case err := <-s.runDone:
		s.runDone <- err
		return nil, fmt.Errorf("fleet: publisher: %w", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s, nil
}

// RegisterDevice adds a device to the publisher's registry and, with
// embedded brokers, to the broker's credential store.
func (s *Stack) RegisterDevice(ctx context.Context, id, class, secret string) error {
	if _, _, err := s.Pub.AddDevice(ctx, s.Admin, publisher.NewDevice{ID: id, Class: class, Secret: secret}); err != nil {
		return err
	}
	if s.creds != nil {
		return s.creds.Add(broker.Identity{Username: id, Role: broker.RoleDevice, Device: id, Class: class}, secret)
	}
	return nil
}

// JetStream returns the stack's JetStream handle.
func (s *Stack) JetStream() jetstream.JetStream { return s.natsT.JetStream() }

// Close stops the publisher and the embedded brokers. With external
// brokers it first deletes everything the run left there: the
// publisher's buckets and streams of the namespace and the retained
// notices of devices (given by id).
func (s *Stack) Close(ctx context.Context, devices ...string) {
	if s.cancel != nil {
		s.cancel()
		if s.runDone != nil {
			<-s.runDone
		}
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if s.pubT != nil {
		if s.mqttSrv == nil {
			for _, d := range devices {
				if t, err := s.Topics.Notice(d); err == nil {
					_ = s.pubT.Publish(cctx, t, nil, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true})
				}
			}
		}
		_ = s.pubT.Close(cctx)
	}
	if s.natsT != nil {
		if s.natsSrv == nil {
			s.deleteStreams(cctx)
		}
		_ = s.natsT.Close(cctx)
	}
	if s.mqttSrv != nil {
		s.mqttSrv.Shutdown()
	}
	if s.natsSrv != nil {
		s.natsSrv.Shutdown()
	}
}

// deleteStreams removes the namespace's buckets and streams and the
// topic root's retained-notice stream from an external NATS.
func (s *Stack) deleteStreams(ctx context.Context) {
	js := s.natsT.JetStream()
	ns := s.cfg.Namespace
	var names []string
	l := js.StreamNames(ctx)
	for n := range l.Name() {
		if strings.HasPrefix(n, "KV_"+ns+"_") || strings.HasPrefix(n, "OBJ_"+ns+"_") || n == ns+"_audit" || n == broker.NoticeStreamName(s.Topics) {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			s.cfg.Logger.Warn("deleting stream", "stream", n, "err", err)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// stackAuth authenticates embedded-broker clients from the stack's own
// credentials (the backend, devices registered through RegisterDevice)
// and then from the publisher's device registry (devices registered
// through the API, as `firmcast sim` does).
type stackAuth struct {
	creds *broker.CredentialStore
	pub   atomic.Pointer[publisher.Publisher]
}

func (a *stackAuth) Authenticate(ctx context.Context, user, secret string) (broker.Identity, error) {
	id, err := a.creds.Authenticate(ctx, user, secret)
	if err == nil {
		return id, nil
	}
	p := a.pub.Load()
	if p == nil {
		return id, err
	}
	d, ok, perr := p.CheckDeviceSecret(ctx, user, secret)
	if perr != nil || !ok {
		return broker.Identity{}, err
	}
	return broker.Identity{Username: d.ID, Role: broker.RoleDevice, Device: d.ID, Class: d.Class}, nil
}
