package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

type serveOptions struct {
	mqttListen  string
	natsListen  string
	dataDir     string
	root        string
	credentials string
	// backendUser names the publisher's own backend account in
	// credentials (empty: the first backend account with a clear secret).
	backendUser string
	tlsCert     string
	tlsKey      string
	// mqttURL and natsURL name external brokers (--broker, --nats): then
	// no embedded broker starts and serve runs only the publisher.
	mqttURL, natsURL string
	// mosquittoPasswd is the external mosquitto's password file, kept
	// from the registry; mosquittoPID or mosquittoPIDFile name the process
	// to send SIGHUP.
	mosquittoPasswd, mosquittoPIDFile string
	mosquittoPID                      int
	mosquittoGap                      time.Duration
	// hookListen and hookSecret serve the broker auth hook (EMQX HTTP
	// authentication and authorization).
	hookListen, hookSecret string
	pub                    publisherOptions
	// onReady, when set, is called once everything has started (tests
	// use it to learn the bound URLs).
	onReady func(mqttURL, natsURL, httpURL string)
}

// publisherOptions are the serve flags of the backend publisher.
type publisherOptions struct {
	httpListen string
	apiKey     string
	signKey    string
	vendorID   string
	classID    string
	publicURL  string
	replicas   int
	partitions int
	// The HTTP API's TLS: certificate and key, and the CA that client
	// certificates must chain to (optional).
	httpCert, httpKey, httpClientCA string
	noticeKey                       string
	deviceDeadline                  time.Duration
	imageAccess                     string
	keyCustody                      string
	codedRepair                     bool
	// Delivery: repair batching, wave pacing (the fleet simulation's
	// values, which docs/BENCHMARKS.md measures).
	repairWindow, wavePace time.Duration
	waveReady              time.Duration
	waveEcho               int
	waveBurst              int
}

func (o *publisherOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.httpListen, "http-listen", "127.0.0.1:8080", "HTTP API listen address (empty = no publisher)")
	f.StringVar(&o.apiKey, "api-key", "", "bootstrap admin API key (at least 128 bits: 32 hex or 22 base64 characters), registered if no key with its id exists (also FIRMCAST_API_KEY)")
	f.StringVar(&o.signKey, "sign-key", "", "PEM private key the server signs manifests with (none: campaigns need a signed envelope)")
	f.StringVar(&o.vendorID, "vendor-id", "", "vendor UUID of server-signed manifests")
	f.StringVar(&o.classID, "class-id", "", "class UUID of server-signed manifests")
	f.StringVar(&o.publicURL, "public-url", "", "base URL devices fetch images from over HTTP (GET <url>/images/<digest>)")
	f.StringVar(&o.httpCert, "http-tls-cert", "", "PEM certificate (chain) of the HTTP API: it then speaks HTTPS only")
	f.StringVar(&o.httpKey, "http-tls-key", "", "PEM private key for --http-tls-cert")
	f.StringVar(&o.httpClientCA, "http-client-ca", "", "PEM CA bundle: HTTPS clients must present a certificate it signed (besides their API key)")
	f.StringVar(&o.noticeKey, "notice-key", "", "PEM private key the server signs notices with (the campaign authority; default: --sign-key). Needed for campaigns of operator-signed envelopes when the server signs no manifests")
	f.DurationVar(&o.deviceDeadline, "device-deadline", 0, "a targeted device that has not finished this long after its notice counts as timed out (0: the publisher's default, 24h)")
	f.StringVar(&o.imageAccess, "image-access", "key", "who may download images over HTTP (GET /images/{digest}): key (an API key with read scope, or a registered device's id and secret as basic auth) or public")
	f.StringVar(&o.keyCustody, "key-custody-file", "", "file holding the key-custody key in hex (16 or 32 bytes, mode 0600): device KEKs are stored wrapped with it and encrypted images' content keys escrowed under it (none: no encrypted images)")
	f.IntVar(&o.replicas, "replicas", 1, "JetStream replicas of the backend's buckets and streams (3 on a 3-node NATS cluster)")
	f.IntVar(&o.partitions, "partitions", 1, "buckets the per-device campaign state is spread over by device, so report writes go to as many stream leaders; fixed for a namespace when it is first set up")
	f.DurationVar(&o.repairWindow, "repair-window", 250*time.Millisecond, "batch the devices' chunk requests and loss summaries of an image for this long into one repair round (coded: parity chunks broadcast per block for the neediest device; plain: chunks many ask for broadcast once); 0: answer each request at once, by unicast")
	f.IntVar(&o.waveBurst, "wave-burst", 1, "with echo pacing, send a wave's chunks N at a time (at most --wave-echo), so that the broker writes them to each subscriber together: 8 took a NATS server's CPU for a 500-device campaign from 13.0 to 9.6-12.4 core-seconds in the bench, and 16 left the devices shedding 0-47 chunks a run instead of up to 2,641 (docs/BENCHMARKS.md)")
	f.IntVar(&o.waveEcho, "wave-echo", 32, "pace broadcast waves at the broker's fan-out: send chunk i once chunk i-N came back on the publisher's own subscription (0: no echo pacing)")
	f.DurationVar(&o.waveReady, "wave-ready", 0, "the longest a wave's first chunk waits, after its first chunk table copy, for the devices it is for to report they took the table; 0: no wait (docs/BENCHMARKS.md)")
	f.DurationVar(&o.wavePace, "wave-pace", time.Second, "revise a wave's rate this often from the progress its downloading devices report (designated receivers: agents run with --progress-interval of a second or less); 0: off")
	f.BoolVar(&o.codedRepair, "coded-repair", true, "give images uploaded from now on a coded chunk table and repair their waves with parity chunks (erasure-coded repair) for the agents that speak it; agents of delivery protocol 1 take the image's plain table and are repaired by chunks in the same campaign (--coded-repair=false: plain tables only)")
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
  service <user> <secret>
  device  <device-id> <secret> [<class>]

Each role is confined (docs/SECURITY.md): a backend account is a
publisher's own (each replica its own, chosen with --backend-user); a
service account may only call the campaign API over NATS (requests and
its own inbox; what it may do is decided by the API key it sends); a
device only its own topics. A secret may be given already hashed as
sha256:<hex>. Without --credentials the brokers accept anyone: for
development only.

With --tls-cert and --tls-key both brokers speak TLS only.

With --broker and --nats (a production topology, compose.yaml) no
embedded broker starts: the publisher and its HTTP API run against the
external brokers, with the backend account of --credentials
(--backend-user). Give the external NATS the same accounts with
firmcast broker nats-config, and mosquitto with firmcast broker
mosquitto-config. With --mosquitto-passwd (that password file) and
--mosquitto-pid or --mosquitto-pid-file, serve keeps mosquitto's password
file in step with the device registry: at start and whenever it adds or
removes a device it writes the file again (the backend and device
accounts of --credentials, then every registered device) and sends
mosquitto SIGHUP, so a removed device's session is dropped at once and a
new device can connect.

With --broker-hook-listen, serve answers an external broker's HTTP
authentication and authorization (EMQX 5: POST /v1/broker/authn on
CONNECT, POST /v1/broker/authz on publish and subscribe) from the device
registry and the accounts of --credentials, with the access policy of
the embedded brokers; every request must carry "Authorization: Bearer"
and the secret of --broker-hook-secret (FIRMCAST_BROKER_HOOK_SECRET).
With --http-tls-cert it speaks HTTPS with that certificate.`,
		Example: `  firmcast serve --credentials /etc/firmcast/credentials --data-dir /var/lib/firmcast
  firmcast serve --mqtt-listen 127.0.0.1:0 --nats-listen 127.0.0.1:0 --data-dir /tmp/fc
  firmcast serve --broker mqtt://mosquitto:1883 --nats nats://nats:4222 --credentials /etc/firmcast/credentials`,
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
	f.StringVar(&o.backendUser, "backend-user", "", "the publisher's own backend account in --credentials (default: the first backend account with a clear secret); each replica needs its own")
	o.pub.addFlags(f)
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate (chain): both brokers then accept TLS only (mqtts://, tls://)")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	f.StringVar(&o.mqttURL, "broker", "", "external MQTT v5 broker URL devices use; with --nats, no embedded broker starts")
	f.StringVar(&o.natsURL, "nats", "", "external NATS URL with JetStream (one server of the cluster; the client learns the others); with --broker, no embedded broker starts")
	f.StringVar(&o.mosquittoPasswd, "mosquitto-passwd", "", "password_file of the external mosquitto (--broker), kept in step with the device registry (written by firmcast broker mosquitto-config first)")
	f.IntVar(&o.mosquittoPID, "mosquitto-pid", 0, "process id of that mosquitto, sent SIGHUP after each rewrite of --mosquitto-passwd")
	f.StringVar(&o.mosquittoPIDFile, "mosquitto-pid-file", "", "file holding that mosquitto's process id (read at each reload), instead of --mosquitto-pid")
	f.DurationVar(&o.mosquittoGap, "mosquitto-reload-gap", stack.DefaultMosquittoReloadGap, "least time between two rewrites and reloads of --mosquitto-passwd (a reload costs mosquitto a password check per connected client)")
	f.StringVar(&o.hookListen, "broker-hook-listen", "", "serve the broker auth hook (EMQX 5 HTTP authentication and authorization) on this host:port (empty: none)")
	f.StringVar(&o.hookSecret, "broker-hook-secret", "", "the bearer secret the broker must send to the hook, at least 16 bytes (better from FIRMCAST_BROKER_HOOK_SECRET)")
	return cmd
}

// stackConfig turns serve's options into the stack's configuration.
func (o *serveOptions) stackConfig(log *slog.Logger) (stack.Config, error) {
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return stack.Config{}, fmt.Errorf("--root: %w", err)
	}
	cfg := stack.Config{
		Topics: topics, Logger: log, MQTTListen: o.mqttListen, NATSListen: o.natsListen,
		DataDir: filepath.Join(o.dataDir, "nats"), DevicesOnNATS: true,
		NoMQTT: o.mqttListen == "", NoPublisher: o.pub.httpListen == "", HTTPListen: o.pub.httpListen,
		Open: o.credentials == "",
	}
	external := o.mqttURL != "" || o.natsURL != ""
	if external {
		if o.natsURL == "" {
			return cfg, errors.New("--broker needs --nats (the backend keeps its state in JetStream)")
		}
		if o.pub.httpListen == "" {
			return cfg, errors.New("--http-listen is empty: with external brokers serve runs only the publisher")
		}
		cfg.MQTTURL, cfg.NATSURL, cfg.NoMQTT, cfg.Open = o.mqttURL, o.natsURL, o.mqttURL == "", false
	} else if o.natsListen == "" {
		if o.mqttListen == "" {
			return cfg, errors.New("nothing to serve: both --mqtt-listen and --nats-listen are empty")
		}
		// The publisher keeps its state in JetStream: MQTT broker only.
		cfg.NoNATS, cfg.NoPublisher = true, true
	}
	if o.credentials != "" {
		as, err := readAccountsFile(o.credentials)
		if err != nil {
			return cfg, err
		}
		if _, err := broker.NewCredentialStoreFrom(as); err != nil {
			return cfg, fmt.Errorf("--credentials %s: %w", o.credentials, err)
		}
		cfg.Accounts = as
		for _, a := range as {
			if a.Role == broker.RoleBackend && a.Secret != "" && (o.backendUser == "" || a.Username == o.backendUser) {
				cfg.Backend = a
				break
			}
		}
		switch {
		case o.backendUser != "" && cfg.Backend.Username == "":
			return cfg, fmt.Errorf("--backend-user %q: no backend account of that name with a clear secret in --credentials %s", o.backendUser, o.credentials)
		case external && cfg.Backend.Username == "":
			return cfg, errors.New("--credentials has no backend account with a clear secret for the publisher")
		}
	} else if o.backendUser != "" {
		return cfg, errors.New("--backend-user needs --credentials")
	}
	if o.mosquittoPasswd != "" {
		if o.mqttURL == "" {
			return cfg, errors.New("--mosquitto-passwd needs --broker (an external mosquitto)")
		}
		if o.credentials == "" {
			return cfg, errors.New("--mosquitto-passwd needs --credentials (the backend accounts mosquitto must keep)")
		}
		if o.mosquittoGap <= 0 {
			return cfg, errors.New("--mosquitto-reload-gap must be positive")
		}
		cfg.MosquittoPasswd, cfg.MosquittoPID, cfg.MosquittoPIDFile, cfg.MosquittoReloadGap = o.mosquittoPasswd, o.mosquittoPID, o.mosquittoPIDFile, o.mosquittoGap
	} else if o.mosquittoPID != 0 || o.mosquittoPIDFile != "" {
		return cfg, errors.New("--mosquitto-pid and --mosquitto-pid-file go with --mosquitto-passwd")
	}
	switch {
	case o.hookListen == "" && o.hookSecret != "":
		return cfg, errors.New("--broker-hook-secret goes with --broker-hook-listen")
	case o.hookListen == "":
	case o.credentials == "":
		return cfg, errors.New("--broker-hook-listen needs --credentials (the hook authenticates every client)")
	case len(o.hookSecret) < 16:
		return cfg, errors.New("--broker-hook-listen needs --broker-hook-secret (FIRMCAST_BROKER_HOOK_SECRET) of at least 16 bytes")
	case cfg.NoPublisher:
		return cfg, errors.New("--broker-hook-listen needs the publisher (--http-listen)")
	default:
		cfg.BrokerHookListen, cfg.BrokerHookSecret = o.hookListen, o.hookSecret
	}
	if o.tlsCert != "" || o.tlsKey != "" {
		if o.tlsCert == "" || o.tlsKey == "" {
			return cfg, fmt.Errorf("--tls-cert and --tls-key go together")
		}
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return cfg, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.NoPublisher {
		return cfg, nil
	}
	p := &o.pub
	if cfg.HTTPTLS, err = httpTLS(p.httpCert, p.httpKey, p.httpClientCA); err != nil {
		return cfg, err
	}
	cfg.Publisher = publisher.Config{BootstrapKey: p.apiKey, PublicURL: p.publicURL, Replicas: p.replicas, Partitions: p.partitions, DeviceDeadline: p.deviceDeadline, CodedRepair: p.codedRepair,
		RepairWindow: p.repairWindow, WaveEcho: p.waveEcho, WaveBurst: p.waveBurst, WavePace: p.wavePace, WaveReady: p.waveReady}
	if p.imageAccess != "" { // empty: the publisher's default (key)
		if cfg.Publisher.ImageAccess, err = publisher.ParseImageAccess(p.imageAccess); err != nil {
			return cfg, fmt.Errorf("--image-access: %w", err)
		}
	}
	if p.keyCustody != "" {
		if cfg.Publisher.KeyCustody, err = readHexKey("key-custody-file", p.keyCustody); err != nil {
			return cfg, err
		}
	}
	if p.noticeKey != "" {
		s, err := readSigner("notice-key", p.noticeKey)
		if err != nil {
			return cfg, err
		}
		cfg.Publisher.NoticeSigners = []suit.Signer{s}
	}
	if p.signKey != "" {
		s, err := readSigner("sign-key", p.signKey)
		if err != nil {
			return cfg, err
		}
		if cfg.Publisher.VendorID, err = parseUUID(p.vendorID); err != nil {
			return cfg, fmt.Errorf("--vendor-id: %w", err)
		}
		if cfg.Publisher.ClassID, err = parseUUID(p.classID); err != nil {
			return cfg, fmt.Errorf("--class-id: %w", err)
		}
		cfg.Publisher.Signer = publisher.SUITSigner(s)
	}
	return cfg, nil
}

// readSigner reads a PEM private key given to --flag as a SUIT signer.
func readSigner(flag, path string) (suit.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	key, err := suit.ParsePrivateKeyPEM(pem)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	s, err := suit.NewKeySigner(key, 0)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	return s, nil
}

// httpTLS builds the HTTP API's TLS configuration from the serve flags;
// nil when no certificate is given.
func httpTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if clientCA != "" {
			return nil, errors.New("--http-client-ca needs --http-tls-cert and --http-tls-key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--http-tls-cert and --http-tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--http-tls-cert/--http-tls-key: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("--http-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--http-client-ca %s: no PEM certificate", clientCA)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// loopback reports whether a listen address binds only the loopback
// interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func runServe(ctx context.Context, o *serveOptions) error {
	log := slog.Default()
	cfg, err := o.stackConfig(log)
	if err != nil {
		return err
	}
	if cfg.Open {
		log.Warn("no --credentials: the brokers accept any client (development only)")
	} else if len(cfg.Accounts) > 0 {
		log.Info("access policy enforced", "accounts", len(cfg.Accounts))
	}
	if cfg.BrokerHookListen != "" && cfg.HTTPTLS == nil && !loopback(cfg.BrokerHookListen) {
		log.Warn("the broker auth hook is served in clear on a non-loopback address: device secrets cross the network unencrypted; use --http-tls-cert and --http-tls-key",
			"listen", cfg.BrokerHookListen)
	}
	if !cfg.NoPublisher && cfg.HTTPTLS == nil && !loopback(cfg.HTTPListen) {
		log.Warn("the HTTP API is served in clear on a non-loopback address: API keys and new device secrets cross the network unencrypted; use --http-tls-cert and --http-tls-key",
			"listen", cfg.HTTPListen)
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := stack.Start(sctx, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if st.HTTPURL != "" {
		log.Info("publisher API listening", "url", st.HTTPURL+"/api/v1")
		log.Info("operator console", "url", st.HTTPURL+"/")
	}
	if st.HookURL != "" {
		log.Info("broker auth hook", "authn", st.HookURL+broker.HookAuthnPath, "authz", st.HookURL+broker.HookAuthzPath)
	}
	log.Info("firmcast serving", "mqtt", st.MQTTURL, "nats", st.NATSURL, "root", cfg.Topics.Root(),
		"embedded_mqtt", st.EmbeddedMQTT, "embedded_nats", st.EmbeddedNATS)
	if o.onReady != nil {
		o.onReady(st.MQTTURL, st.NATSURL, st.HTTPURL)
	}
	select {
	case <-ctx.Done():
	case <-st.Done():
		err = fmt.Errorf("publisher stopped: %w", st.Instance().Err())
	}
	log.Info("shutting down")
	st.Close(context.Background())
	return err
}
