package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

type serveOptions struct {
	mqttListen  string
	natsListen  string
	dataDir     string
	root        string
	credentials string
	tlsCert     string
	tlsKey      string
	pub         publisherOptions
	// onReady, when set, is called once every component has started
	// (tests use it to learn the bound URLs).
	onReady func(mqttURL, natsURL string)
}

// serveComponent is one part of `firmcast serve`. Components start in
// list order (each Start returns once the component is ready) and stop in
// reverse order. To run something beside the brokers (the publisher),
// add it to serveComponents.
type serveComponent interface {
	Name() string
	Start(ctx context.Context) error
	Stop()
}

// serveEnv is what components share: options, the topic root, the
// credential store, and the URLs of the brokers started before them.
type serveEnv struct {
	opts    *serveOptions
	topics  schemas.Topics
	auth    broker.Authenticator // nil: open brokers
	tls     *tls.Config          // nil: plain TCP
	log     *slog.Logger
	mqttURL string
	natsURL string
}

// serveComponents lists what `firmcast serve` runs, in start order.
func serveComponents(env *serveEnv) []serveComponent {
	var cs []serveComponent
	if env.opts.mqttListen != "" {
		cs = append(cs, &mqttComponent{env: env})
	}
	if env.opts.natsListen != "" {
		cs = append(cs, &natsComponent{env: env})
		if env.opts.pub.httpListen != "" {
			cs = append(cs, &publisherComponent{env: env})
		}
	}
	return cs
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the firmcast server: embedded MQTT v5 and NATS brokers",
		Long: `Run the firmcast server until interrupted (SIGINT or SIGTERM).

It starts an embedded MQTT v5 broker (mochi-mqtt) and an embedded NATS
server with JetStream, storing JetStream data under --data-dir, and logs the
URLs devices and tools connect to. Port 0 picks a free port; an empty
listen address leaves that broker out. With the NATS server, the backend
publisher runs too (state in JetStream, HTTP API on --http-listen).

With --credentials, every client must authenticate and the access policy is
enforced (devices read only their own notices, chunk replies, class
announcements and image chunks; they publish only their own reports and
chunk requests; only backend users publish notices and chunks). The file
has one account per line:

  backend <user> <secret>
  device  <device-id> <secret> [<class>]

A secret may be given already hashed as sha256:<hex>. Without
--credentials the brokers accept anyone: for development only.

With --tls-cert and --tls-key both brokers speak TLS only.`,
		Example: `  firmcast serve --credentials /etc/firmcast/credentials --data-dir /var/lib/firmcast
  firmcast serve --mqtt-listen 127.0.0.1:0 --nats-listen 127.0.0.1:0 --data-dir /tmp/fc`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.mqttListen, "mqtt-listen", "127.0.0.1:1883", "MQTT listen address host:port (port 0 = free port, empty = no MQTT broker)")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "NATS listen address host:port (port 0 = free port, empty = no NATS server)")
	f.StringVar(&o.dataDir, "data-dir", "firmcast-data", "directory for persistent data (JetStream under nats/)")
	f.StringVar(&o.root, "root", schemas.DefaultRoot, "topic root (segments separated by /)")
	f.StringVar(&o.credentials, "credentials", "", "credentials file enabling authentication and the access policy")
	o.pub.addFlags(f)
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate (chain): both brokers then accept TLS only (mqtts://, tls://)")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	return cmd
}

func runServe(ctx context.Context, o *serveOptions) error {
	log := slog.Default()
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	env := &serveEnv{opts: o, topics: topics, log: log}
	if o.credentials != "" {
		as, err := readAccountsFile(o.credentials)
		if err != nil {
			return err
		}
		store, err := broker.NewCredentialStoreFrom(as)
		if err != nil {
			return fmt.Errorf("--credentials %s: %w", o.credentials, err)
		}
		env.auth = &registryAuth{file: store}
		log.Info("access policy enforced", "accounts", len(as))
	} else {
		log.Warn("no --credentials: the brokers accept any client (development only)")
	}
	if o.tlsCert != "" || o.tlsKey != "" {
		if o.tlsCert == "" || o.tlsKey == "" {
			return fmt.Errorf("--tls-cert and --tls-key go together")
		}
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		env.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	comps := serveComponents(env)
	if len(comps) == 0 {
		return fmt.Errorf("nothing to serve: both --mqtt-listen and --nats-listen are empty")
	}
	var started []serveComponent
	stopAll := func() {
		for i := len(started) - 1; i >= 0; i-- {
			started[i].Stop()
			log.Info("stopped", "component", started[i].Name())
		}
	}
	for _, c := range comps {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.Start(sctx)
		cancel()
		if err != nil {
			stopAll()
			return fmt.Errorf("start %s: %w", c.Name(), err)
		}
		started = append(started, c)
	}
	log.Info("firmcast serving", "mqtt", env.mqttURL, "nats", env.natsURL, "root", topics.Root())
	if o.onReady != nil {
		o.onReady(env.mqttURL, env.natsURL)
	}
	<-ctx.Done()
	log.Info("shutting down")
	stopAll()
	return nil
}

type mqttComponent struct {
	env *serveEnv
	srv *broker.MQTTServer
}

func (c *mqttComponent) Name() string { return "mqtt-broker" }

func (c *mqttComponent) Start(ctx context.Context) error {
	srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{
		Listen: c.env.opts.mqttListen, Auth: c.env.auth, Topics: c.env.topics, Logger: c.env.log, TLS: c.env.tls,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	c.srv = srv
	if err := srv.Ready(ctx); err != nil {
		return err
	}
	c.env.mqttURL = srv.URL()
	return nil
}

func (c *mqttComponent) Stop() {
	if c.srv != nil {
		c.srv.Shutdown()
	}
}

type natsComponent struct {
	env *serveEnv
	srv *broker.NATSServer
}

func (c *natsComponent) Name() string { return "nats-server" }

func (c *natsComponent) Start(ctx context.Context) error {
	srv, err := broker.NewNATSServer(broker.NATSServerConfig{
		Listen: c.env.opts.natsListen, DataDir: filepath.Join(c.env.opts.dataDir, "nats"),
		Auth: c.env.auth, Topics: c.env.topics, Logger: c.env.log, TLS: c.env.tls,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	c.srv = srv
	if err := srv.Ready(ctx); err != nil {
		return err
	}
	// Devices may not create streams: make the retained-notice stream now.
	if err := srv.EnsureNoticeStream(ctx); err != nil {
		return err
	}
	c.env.natsURL = srv.URL()
	return nil
}

func (c *natsComponent) Stop() {
	if c.srv != nil {
		c.srv.Shutdown()
	}
}
