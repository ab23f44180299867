package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// IdleConfig configures an IdleFleet. It is taken by value.
type IdleConfig struct {
	// Agents is the number of agents. Required.
	Agents int
	// Dir holds one directory per device (state, device file). Required.
	Dir string
	// Topics is the topic root. Required.
	Topics schemas.Topics
	// Prefix names devices Prefix-0001, ... Default "idle".
	Prefix string
	// Class is the devices' class (each agent also subscribes to its
	// class's announcements). Default "sim".
	Class string
	// ImageSize is the size of the factory image, which sizes the
	// simulated flash. Default 4096 (one sector per slot).
	ImageSize int
	// Parallel bounds the connections being set up at a time (the batch
	// size). Default 64.
	Parallel int
	// Logger receives the agents' logs. Default slog.Default().
	Logger *slog.Logger
}

// IdleFleet is a fleet of real device agents that connect, subscribe,
// report "connected" and then stay idle: no campaign ever reaches them.
// It measures what an idle connected device costs (`firmcast bench
// idle`). Each device has its own credentials (Accounts) and client id,
// a flash in memory and NoSync state, so the fleet itself stays cheap.
type IdleFleet struct {
	// Accounts are the devices' broker credentials (role device, clear
	// secret and class), for the broker's password file or credential
	// store.
	Accounts []broker.Account

	fl         *Fleet
	n          int64
	reported   atomic.Int64
	subscribed atomic.Int64
	all        chan struct{} // closed when every agent has reported
	once       sync.Once
}

// NewIdleFleet prepares cfg.Agents devices (factory image installed and
// confirmed, credentials generated); nothing connects until Connect.
func NewIdleFleet(ctx context.Context, cfg IdleConfig) (*IdleFleet, error) {
	if cfg.Agents <= 0 {
		return nil, fmt.Errorf("fleet: %d idle agents, want at least 1", cfg.Agents)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "idle"
	}
	if cfg.Class == "" {
		cfg.Class = "sim"
	}
	if cfg.ImageSize <= 0 {
		cfg.ImageSize = 4096
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 64
	}
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		return nil, err
	}
	f := &IdleFleet{n: int64(cfg.Agents), all: make(chan struct{})}
	var mu sync.Mutex
	fl, err := NewFleet(ctx, FleetConfig{
		Devices: cfg.Agents, Prefix: cfg.Prefix, Class: cfg.Class, Dir: cfg.Dir, Topics: cfg.Topics,
		VendorID: uuidFor("vendor"), ClassID: uuidFor("class"), Trust: suit.TrustAnchors{key.Public()},
		Factory: Image(1, "idle", cfg.ImageSize), Logger: cfg.Logger, MemFlash: true, Parallel: cfg.Parallel,
		Register: func(_ context.Context, id, secret string) error {
			mu.Lock()
			defer mu.Unlock()
			f.Accounts = append(f.Accounts, broker.Account{
				Identity: broker.Identity{Username: id, Role: broker.RoleDevice, Device: id, Class: cfg.Class},
				Secret:   secret, SecretHash: broker.HashSecret(secret),
			})
			return nil
		},
		Agent: func(c *deviceagent.Config) {
			c.NoSync = true
			c.Transport = &idleCounting{Transport: c.Transport, f: f}
		},
	})
	if err != nil {
		return nil, err
	}
	f.fl = fl
	return f, nil
}

// FlashBytes is the simulated flash each device holds in memory.
func (f *IdleFleet) FlashBytes() int64 { return f.fl.geom.Size() }

// Connect connects every agent to the broker at url (mqtt:// for MQTT v5,
// nats:// for devices on NATS), Parallel at a time, and returns once every
// agent has subscribed to its notices and class announcements and the
// broker has acknowledged its "connected" report; or with the first error,
// or ctx's. Call it once.
func (f *IdleFleet) Connect(ctx context.Context, url string) error {
	if url == "" {
		return errors.New("fleet: idle agents need a broker url")
	}
	f.fl.cfg.MQTTURL = url
	if err := f.fl.Run(ctx); err != nil {
		return err
	}
	select {
	case <-f.all:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("fleet: %d of %d idle agents reported: %w", f.Reported(), f.n, ctx.Err())
	}
}

// Reported is the number of "connected" reports the broker acknowledged.
func (f *IdleFleet) Reported() int { return int(f.reported.Load()) }

// Subscriptions is the number of subscriptions the agents hold.
func (f *IdleFleet) Subscriptions() int { return int(f.subscribed.Load()) }

// Close stops the agents, closes their connections and frees their
// flash. Safe to call once Connect returned.
func (f *IdleFleet) Close() {
	f.fl.Stop()
	f.fl.Close()
}

// idleCounting counts an agent's subscriptions and acknowledged reports.
type idleCounting struct {
	broker.Transport
	f *IdleFleet
}

func (c *idleCounting) Subscribe(ctx context.Context, filter schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	s, err := c.Transport.Subscribe(ctx, filter, h, o)
	if err == nil {
		c.f.subscribed.Add(1)
	}
	return s, err
}

func (c *idleCounting) Publish(ctx context.Context, t schemas.Topic, payload []byte, o broker.PublishOptions) error {
	err := c.Transport.Publish(ctx, t, payload, o)
	if err == nil && o.Family == broker.FamilyReport && c.f.reported.Add(1) == c.f.n {
		c.f.once.Do(func() { close(c.f.all) })
	}
	return err
}

// IdleNATSConns are lean nats.go connections, one per device, each with
// core subscriptions on the device's notice subject and its class's
// announcement subject and nothing else: what an idle device on NATS
// costs as a bare connection, without the agent (the baseline of
// `firmcast bench idle --cases nats-core`).
type IdleNATSConns struct {
	cfg   IdleConfig
	mu    sync.Mutex
	conns []*nats.Conn
	subs  atomic.Int64
}

// NewIdleNATSConns checks cfg (Agents, Topics, Prefix, Class, Parallel
// are used); nothing connects until Connect.
func NewIdleNATSConns(cfg IdleConfig) (*IdleNATSConns, error) {
	if cfg.Agents <= 0 {
		return nil, fmt.Errorf("fleet: %d idle connections, want at least 1", cfg.Agents)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "idle"
	}
	if cfg.Class == "" {
		cfg.Class = "sim"
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 64
	}
	return &IdleNATSConns{cfg: cfg}, nil
}

// Connect opens the connections to url, Parallel at a time, and returns
// once the server has processed every subscription (a flush per
// connection), or with the first error.
func (c *IdleNATSConns) Connect(ctx context.Context, url string) error {
	at, err := c.cfg.Topics.Announce(c.cfg.Class)
	if err != nil {
		return err
	}
	return forEachLimit(ctx, c.cfg.Agents, c.cfg.Parallel, func(ctx context.Context, i int) error {
		return c.connect(ctx, url, fmt.Sprintf("%s-%04d", c.cfg.Prefix, i+1), at)
	})
}

func (c *IdleNATSConns) connect(ctx context.Context, url, id string, announce schemas.Topic) error {
	nt, err := c.cfg.Topics.Notice(id)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(url, nats.Name(id))
	if err != nil {
		return fmt.Errorf("fleet: nats %s: %w", id, err)
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.mu.Unlock()
	for _, subj := range []string{nt.NATS, announce.NATS} {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) {}); err != nil {
			return fmt.Errorf("fleet: nats %s: subscribe %s: %w", id, subj, err)
		}
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("fleet: nats %s: %w", id, err)
	}
	c.subs.Add(2)
	return nil
}

// Reported is the number of connections whose subscriptions the server
// processed.
func (c *IdleNATSConns) Reported() int { return int(c.subs.Load() / 2) }

// Subscriptions is the number of subscriptions the server processed.
func (c *IdleNATSConns) Subscriptions() int { return int(c.subs.Load()) }

// FlashBytes is 0: these are connections, not devices.
func (c *IdleNATSConns) FlashBytes() int64 { return 0 }

// Close closes every connection.
func (c *IdleNATSConns) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, nc := range c.conns {
		nc.Close()
	}
	c.conns = nil
}
