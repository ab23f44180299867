package stack

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// InstanceConfig configures one publisher instance. It is taken by value.
type InstanceConfig struct {
	// NATSURL is the NATS server (or comma-separated cluster list) with
	// JetStream where the publisher keeps its state. Required.
	NATSURL string
	// DeviceURLs are the brokers the publisher serves devices on (notices,
	// chunks, reports): MQTT URLs, or NATSURL itself (then its NATS
	// connection is reused). Empty means NATSURL. Publishes go to each;
	// requests are answered on the one they came from.
	DeviceURLs []string
	// Username and Password are the publisher's broker account (empty:
	// anonymous, for open brokers).
	Username, Password string
	// ClientID is the publisher's client id on every broker. Default
	// "fc-pub-" and random hex.
	ClientID string
	// TLS configures mqtts:// and tls:// connections. Default: system roots.
	TLS *tls.Config
	// ReconnectMax caps the reconnect backoff of the broker connections.
	// Default: broker.Config's.
	ReconnectMax time.Duration
	// InOrder makes the NATS connection try a NATSURL cluster list in
	// the order given (broker.Config.InOrder).
	InOrder bool
	// Topics is the topic root. Required.
	Topics schemas.Topics
	// Publisher is the publisher's configuration; JetStream, Transport and
	// Topics are filled in, and Instance (when empty) with ClientID.
	Publisher publisher.Config
	// WrapTransport, when set, wraps the device-side transport (tests
	// count or drop traffic with it).
	WrapTransport func(broker.Transport) broker.Transport
	// Logger receives the connections' logs. Default slog.Default().
	Logger *slog.Logger
}

// Instance is one running publisher with its own broker connections.
// Its methods are safe for concurrent use.
type Instance struct {
	// Pub is the running publisher.
	Pub *publisher.Publisher
	// Admin is the principal of Publisher.BootstrapKey (zero when no
	// bootstrap key was given).
	Admin publisher.Principal
	// ClientID is the instance's client id on the brokers.
	ClientID string

	nt     *broker.NATSTransport
	dev    broker.Transport // the device-side transport (fan-out)
	own    []broker.Transport
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

// StartInstance connects a publisher to its brokers, starts it, and
// returns once it takes device traffic (publisher.Ready). The publisher
// runs until Stop, Crash, or an error of its own (Done).
func StartInstance(ctx context.Context, cfg InstanceConfig) (in *Instance, err error) {
	if cfg.NATSURL == "" {
		return nil, errors.New("stack: a publisher needs a NATS URL (JetStream)")
	}
	if cfg.Topics.Root() == "" {
		return nil, errors.New("stack: a publisher needs a topic root")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "fc-pub-" + randomHex(4)
	}
	in = &Instance{ClientID: cfg.ClientID, done: make(chan struct{})}
	started := in // in is nil in the deferred call of an error return
	defer func() {
		if err != nil {
			started.closeConns()
		}
	}()
	bc := func(url string) broker.Config {
		return broker.Config{URL: url, Username: cfg.Username, Password: cfg.Password, ClientID: cfg.ClientID,
			Topics: cfg.Topics, SharedMember: true, TLS: cfg.TLS, ReconnectMax: cfg.ReconnectMax, InOrder: cfg.InOrder, Logger: cfg.Logger}
	}
	if in.nt, err = broker.DialNATS(ctx, bc(cfg.NATSURL)); err != nil {
		return nil, fmt.Errorf("stack: publisher: nats %s: %w", cfg.NATSURL, err)
	}
	in.own = append(in.own, in.nt)
	urls := cfg.DeviceURLs
	if len(urls) == 0 {
		urls = []string{cfg.NATSURL}
	}
	var devs []broker.Transport
	for _, u := range urls {
		if u == cfg.NATSURL {
			devs = append(devs, in.nt)
			continue
		}
		t, err := broker.Dial(ctx, bc(u))
		if err != nil {
			return nil, fmt.Errorf("stack: publisher: broker %s: %w", u, err)
		}
		in.own = append(in.own, t)
		devs = append(devs, t)
	}
	in.dev = fanOut(devs)
	if cfg.WrapTransport != nil {
		in.dev = cfg.WrapTransport(in.dev)
	}
	pc := cfg.Publisher
	pc.JetStream, pc.Transport, pc.Topics = in.nt.JetStream(), in.dev, cfg.Topics
	if pc.Instance == "" {
		pc.Instance = cfg.ClientID
	}
	if pc.Logger == nil {
		pc.Logger = cfg.Logger
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	in.cancel = cancel
	if in.Pub, err = publisher.New(life, pc); err != nil {
		cancel()
		return nil, fmt.Errorf("stack: publisher: %w", err)
	}
	if pc.BootstrapKey != "" {
		if in.Admin, err = in.Pub.Authenticate(ctx, pc.BootstrapKey); err != nil {
			cancel()
			return nil, fmt.Errorf("stack: publisher: bootstrap key: %w", err)
		}
	}
	go func() {
		in.err = in.Pub.Run(life)
		close(in.done)
	}()
	select {
	case <-in.Pub.Ready():
		return in, nil
	case <-in.done:
		cancel()
		return nil, fmt.Errorf("stack: publisher stopped at start: %w", in.err)
	case <-ctx.Done():
		cancel()
		<-in.done
		return nil, fmt.Errorf("stack: publisher not ready: %w", ctx.Err())
	}
}

// JetStream is the instance's JetStream handle.
func (in *Instance) JetStream() jetstream.JetStream { return in.nt.JetStream() }

// NATS is the instance's NATS connection.
func (in *Instance) NATS() *broker.NATSTransport { return in.nt }

// Transport is the device-side transport the publisher uses.
func (in *Instance) Transport() broker.Transport { return in.dev }

// Done is closed when the publisher has stopped; Err then says why.
func (in *Instance) Done() <-chan struct{} { return in.done }

// Err is the publisher's Run result once Done is closed.
func (in *Instance) Err() error {
	select {
	case <-in.done:
		return in.err
	default:
		return nil
	}
}

// Stop stops the publisher cleanly (it releases its leader lease and
// unsubscribes), then closes its broker connections. Safe to call more
// than once.
func (in *Instance) Stop() {
	in.once.Do(func() {
		in.cancel()
		<-in.done
		in.closeConns()
	})
}

// Crash drops the broker connections first, as if the process died (the
// publisher can neither release its lease, which expires after
// LeaseTTL, nor unsubscribe), then stops it.
func (in *Instance) Crash() {
	in.closeConns()
	in.Stop()
}

func (in *Instance) closeConns() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := len(in.own) - 1; i >= 0; i-- {
		_ = in.own[i].Close(ctx)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
