package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// publisherOptions are the serve flags of the backend publisher.
type publisherOptions struct {
	httpListen string
	apiKey     string
	signKey    string
	vendorID   string
	classID    string
	publicURL  string
	replicas   int
}

func (o *publisherOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.httpListen, "http-listen", "127.0.0.1:8080", "HTTP API listen address (empty = no publisher)")
	f.StringVar(&o.apiKey, "api-key", "", "bootstrap admin API key, registered if no key with its id exists (also FIRMCAST_API_KEY)")
	f.StringVar(&o.signKey, "sign-key", "", "PEM private key the server signs manifests with (none: campaigns need a signed envelope)")
	f.StringVar(&o.vendorID, "vendor-id", "", "vendor UUID of server-signed manifests")
	f.StringVar(&o.classID, "class-id", "", "class UUID of server-signed manifests")
	f.StringVar(&o.publicURL, "public-url", "", "base URL devices fetch images from over HTTP (GET <url>/images/<digest>)")
	f.IntVar(&o.replicas, "replicas", 1, "JetStream replicas of the backend's buckets and streams (3 on a 3-node NATS cluster)")
}

// registryAuth authenticates broker clients from the publisher's device
// registry once the publisher runs, and from the credentials file always.
type registryAuth struct {
	mu   sync.RWMutex
	file broker.Authenticator
	reg  broker.Authenticator
}

func (a *registryAuth) Authenticate(ctx context.Context, user, secret string) (broker.Identity, error) {
	a.mu.RLock()
	reg := a.reg
	a.mu.RUnlock()
	if reg != nil {
		return reg.Authenticate(ctx, user, secret)
	}
	return a.file.Authenticate(ctx, user, secret)
}

// publisherComponent runs the backend: the publisher on the embedded
// brokers (both, when both run: notices and chunks go to each) and its
// HTTP API.
type publisherComponent struct {
	env    *serveEnv
	tr     broker.Transport
	cancel context.CancelFunc
	done   chan error
	srv    *http.Server
}

func (c *publisherComponent) Name() string { return "publisher" }

func (c *publisherComponent) backend() (string, string, error) {
	if c.env.opts.credentials == "" {
		return "", "", nil
	}
	as, err := readAccountsFile(c.env.opts.credentials)
	if err != nil {
		return "", "", err
	}
	for _, a := range as {
		if a.Role == broker.RoleBackend && a.Secret != "" {
			return a.Username, a.Secret, nil
		}
	}
	return "", "", errors.New("--credentials has no backend account with a clear secret for the publisher")
}

func (c *publisherComponent) Start(ctx context.Context) error {
	o := &c.env.opts.pub
	user, secret, err := c.backend()
	if err != nil {
		return err
	}
	nt, err := broker.DialNATS(ctx, broker.Config{URL: c.env.natsURL, Username: user, Password: secret, ClientID: "publisher", Topics: c.env.topics, SharedMember: true})
	if err != nil {
		return fmt.Errorf("publisher: dial nats: %w", err)
	}
	trs := []broker.Transport{nt}
	if c.env.mqttURL != "" {
		mt, err := broker.Dial(ctx, broker.Config{URL: c.env.mqttURL, Username: user, Password: secret, ClientID: "publisher", Topics: c.env.topics, SharedMember: true})
		if err != nil {
			nt.Close(ctx)
			return fmt.Errorf("publisher: dial mqtt: %w", err)
		}
		trs = append(trs, mt)
	}
	c.tr = fanOut(trs)
	cfg := publisher.Config{
		JetStream: nt.JetStream(), Transport: c.tr, Topics: c.env.topics, Logger: c.env.log,
		BootstrapKey: o.apiKey, PublicURL: o.publicURL, Replicas: o.replicas,
	}
	if o.signKey != "" {
		pem, err := os.ReadFile(o.signKey)
		if err != nil {
			return fmt.Errorf("--sign-key: %w", err)
		}
		key, err := suit.ParsePrivateKeyPEM(pem)
		if err != nil {
			return fmt.Errorf("--sign-key %s: %w", o.signKey, err)
		}
		s, err := suit.NewKeySigner(key, 0)
		if err != nil {
			return fmt.Errorf("--sign-key %s: %w", o.signKey, err)
		}
		if cfg.VendorID, err = parseUUID(o.vendorID); err != nil {
			return fmt.Errorf("--vendor-id: %w", err)
		}
		if cfg.ClassID, err = parseUUID(o.classID); err != nil {
			return fmt.Errorf("--class-id: %w", err)
		}
		cfg.Signer = publisher.SUITSigner(s)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p, err := publisher.New(runCtx, cfg)
	if err != nil {
		cancel()
		c.tr.Close(ctx)
		return err
	}
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- p.Run(runCtx) }()
	select {
	case <-p.Ready():
	case err := <-c.done:
		c.done <- err
		return fmt.Errorf("publisher: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	if ra, ok := c.env.auth.(*registryAuth); ok {
		ra.mu.Lock()
		ra.reg = p.DeviceAuthenticator(ra.file)
		ra.mu.Unlock()
	}
	l, err := net.Listen("tcp", o.httpListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	c.srv = &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go c.srv.Serve(l)
	c.env.log.Info("publisher API listening", "url", "http://"+l.Addr().String()+"/api/v1")
	return nil
}

func (c *publisherComponent) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c.srv != nil {
		c.srv.Shutdown(ctx)
	}
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
	if c.tr != nil {
		c.tr.Close(ctx)
	}
}

// fanOutTransport joins several transports: publishes go to each,
// subscriptions are made on each, requests go to the first.
type fanOutTransport []broker.Transport

func fanOut(trs []broker.Transport) broker.Transport {
	if len(trs) == 1 {
		return trs[0]
	}
	return fanOutTransport(trs)
}

func (f fanOutTransport) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	var errs []error
	for _, tr := range f {
		errs = append(errs, tr.Publish(ctx, t, b, o))
	}
	return errors.Join(errs...)
}

type fanOutSub []broker.Subscription

func (s fanOutSub) Unsubscribe(ctx context.Context) error {
	var errs []error
	for _, x := range s {
		errs = append(errs, x.Unsubscribe(ctx))
	}
	return errors.Join(errs...)
}

func (f fanOutTransport) Subscribe(ctx context.Context, t schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	var subs fanOutSub
	for _, tr := range f {
		s, err := tr.Subscribe(ctx, t, h, o)
		if err != nil {
			subs.Unsubscribe(ctx)
			return nil, err
		}
		subs = append(subs, s)
	}
	return subs, nil
}

func (f fanOutTransport) Request(ctx context.Context, t schemas.Topic, b []byte) ([]byte, error) {
	return f[0].Request(ctx, t, b)
}

// Reply answers through every transport: only the one the request came
// from has a listener on its reply address.
func (f fanOutTransport) Reply(ctx context.Context, req broker.Message, b []byte) error {
	var errs []error
	for _, tr := range f {
		err := tr.Reply(ctx, req, b)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (f fanOutTransport) Close(ctx context.Context) error {
	var errs []error
	for _, tr := range f {
		errs = append(errs, tr.Close(ctx))
	}
	return errors.Join(errs...)
}
