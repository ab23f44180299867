package broker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// Default connection settings; see Config.
const (
	// DefaultSessionExpiry is how long an MQTT broker keeps a disconnected
	// client's session (its subscriptions and QoS 1 queue). It is short on
	// purpose: a device that is away longer finds its notice retained and
	// repairs the rest by request, so a broker never holds more than a
	// small window per device.
	DefaultSessionExpiry = 2 * time.Minute
	// DefaultConnectTimeout bounds one connection attempt.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultReconnectMax caps the back-off between reconnection attempts.
	DefaultReconnectMax = 5 * time.Second
	// DefaultWriteTimeout bounds one write to an MQTT broker connection.
	DefaultWriteTimeout = 30 * time.Second
)

// Config is what Dial needs to connect to one broker. It is taken by value;
// Dial never modifies the caller's copy.
type Config struct {
	// URL selects the transport and broker address:
	//   mqtt://host:port   MQTT v5 over TCP (default port 1883)
	//   mqtts://host:port  MQTT v5 over TLS (default port 8883)
	//   nats://host:port   NATS (default port 4222)
	//   tls://host:port    NATS over TLS (the nats.go convention)
	// User and password may be given as userinfo (mqtt://dev1:secret@host);
	// Username/Password below take precedence. Required.
	URL string
	// Username and Password override the URL's userinfo when non-empty.
	Username string
	Password string
	// ClientID names the MQTT client (and the NATS connection). It must be
	// a valid schemas identifier. Default: "fc-" plus 12 random hex digits.
	// A device must use its device id: the embedded MQTT broker refuses a
	// device whose client id differs (so no client can take over another
	// device's session), and on NATS the device's reply inbox is named
	// after it.
	ClientID string
	// Topics is the topic root the transport works under; it names the
	// request inbox and, on NATS, the JetStream stream holding retained
	// notices. Default: schemas.NewTopics("") (the root "firmcast").
	Topics schemas.Topics
	// TLS configures mqtts:// and tls:// connections. Default: system roots.
	TLS *tls.Config
	// SessionExpiry is the MQTT session expiry interval. Default
	// DefaultSessionExpiry; ignored on NATS. Rounded down to seconds.
	SessionExpiry time.Duration
	// SharedMember marks a client that takes part in shared subscriptions
	// (publishers serving chunk requests). Its MQTT session expires when it
	// disconnects (expiry 0) and starts clean, because brokers keep routing
	// $share messages to disconnected persistent members.
	SharedMember bool
	// ConnectTimeout bounds each connection attempt. Default
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// WriteTimeout bounds each write to an MQTT broker's connection. A
	// QoS 0 publish is a bare write, which paho gives neither a context
	// nor a deadline: a broker that stops reading (hung, or gone without
	// a reset) would hold that publish, every one behind it and the
	// keep-alive for ever. Past the timeout the write fails, the
	// connection is dropped and made again. Default DefaultWriteTimeout.
	WriteTimeout time.Duration
	// ReconnectMax caps the back-off between reconnection attempts
	// (attempts start at 50ms and double). Default DefaultReconnectMax.
	ReconnectMax time.Duration
	// InOrder makes a NATS client try a cluster URL list in the order
	// given instead of a random one (tests that must know which server a
	// client is on). Ignored on MQTT.
	InOrder bool
	// ReceiveMaximum is the MQTT Receive Maximum the client announces:
	// the most QoS 1 messages the broker sends it unacknowledged, and the
	// capacity of paho's queue between its socket reader and the
	// handlers. A handler that waits (a device whose receive buffer is
	// full waits for room rather than drop, see fetcher.BrokerConfig)
	// fills that queue before the socket pushes back on the broker, so
	// it holds up to ReceiveMaximum messages. Default 1024 (backends);
	// devices use DeviceReceiveMaximum. Ignored on NATS.
	ReceiveMaximum int
	// Logger receives connection events. Default: slog.Default().
	Logger *slog.Logger
}

// DeviceReceiveMaximum is the Receive Maximum of a device's MQTT
// connection (Config.ReceiveMaximum): 16 chunk messages of 16 KiB, 256
// KiB, may wait in paho's queue behind a full receive buffer (on top of
// the fetcher's QueueBytes, 1 MiB: a device's receive path stays under 2
// MiB); a device gets few QoS 1 messages (notices, replies), so the
// broker never holds back one for the quota.
const DeviceReceiveMaximum = 16

// Dial connects to the broker named by cfg.URL and returns its Transport
// (an *MQTTTransport or a *NATSTransport). It blocks until the first
// connection is up, the broker refuses the credentials (ErrNotAuthorized),
// or ctx ends; a server certificate that does not verify fails at once.
// After that, the transport reconnects by itself until Close.
// A URL that cannot be used returns ErrBadURL.
func Dial(ctx context.Context, cfg Config) (Transport, error) {
	ep, err := parseEndpoint(cfg)
	if err != nil {
		return nil, err
	}
	switch ep.kind {
	case DialectMQTT:
		return dialMQTT(ctx, ep)
	default:
		return dialNATS(ctx, ep)
	}
}

// DialNATS is Dial for nats:// and tls:// URLs, returning the concrete type
// (which exposes the JetStream handle).
func DialNATS(ctx context.Context, cfg Config) (*NATSTransport, error) {
	ep, err := parseEndpoint(cfg)
	if err != nil {
		return nil, err
	}
	if ep.kind != DialectNATS {
		return nil, fmt.Errorf("%w: %q is not a nats:// or tls:// url", ErrBadURL, redact(cfg.URL))
	}
	return dialNATS(ctx, ep)
}

// endpoint is a validated Config with defaults applied.
type endpoint struct {
	Config
	kind Dialect
	url  *url.URL // without userinfo
	tls  bool
	// servers lists every server of a comma-separated NATS URL (the
	// first is url); nil for a single URL.
	servers []string
}

// parseEndpoint validates cfg. A NATS URL may name several servers of one
// cluster separated by commas ("nats://n1:4222,nats://n2:4222"); each is
// validated, and the credentials and options of the first apply to all.
func parseEndpoint(cfg Config) (endpoint, error) {
	if !strings.Contains(cfg.URL, ",") {
		return parseOneEndpoint(cfg)
	}
	parts := strings.Split(cfg.URL, ",")
	first := cfg
	first.URL = strings.TrimSpace(parts[0])
	ep, err := parseOneEndpoint(first)
	if err != nil {
		return ep, err
	}
	if ep.kind != DialectNATS {
		return ep, fmt.Errorf("%w: only nats:// and tls:// urls may list several servers", ErrBadURL)
	}
	ep.servers = []string{ep.url.String()}
	for _, raw := range parts[1:] {
		other := cfg
		other.URL = strings.TrimSpace(raw)
		o, err := parseOneEndpoint(other)
		if err != nil {
			return ep, err
		}
		if o.kind != DialectNATS || o.tls != ep.tls {
			return ep, fmt.Errorf("%w: %q: every server of a list needs the scheme of the first", ErrBadURL, redact(other.URL))
		}
		ep.servers = append(ep.servers, o.url.String())
	}
	return ep, nil
}

// serverList returns the URL string given to the NATS client.
func (ep endpoint) serverList() string {
	if len(ep.servers) > 0 {
		return strings.Join(ep.servers, ",")
	}
	return ep.url.String()
}

func parseOneEndpoint(cfg Config) (endpoint, error) {
	ep := endpoint{Config: cfg}
	if cfg.URL == "" {
		return ep, fmt.Errorf("%w: empty url", ErrBadURL)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return ep, fmt.Errorf("%w: %v", ErrBadURL, redactErr(err, cfg.URL))
	}
	var defPort string
	switch strings.ToLower(u.Scheme) {
	case "mqtt":
		ep.kind, defPort = DialectMQTT, "1883"
	case "mqtts":
		ep.kind, ep.tls, defPort = DialectMQTT, true, "8883"
	case "nats":
		ep.kind, defPort = DialectNATS, "4222"
	case "tls":
		ep.kind, ep.tls, defPort = DialectNATS, true, "4222"
	default:
		return ep, fmt.Errorf("%w: scheme %q (want mqtt, mqtts, nats or tls)", ErrBadURL, u.Scheme)
	}
	if u.Hostname() == "" {
		return ep, fmt.Errorf("%w: %q has no host", ErrBadURL, redact(cfg.URL))
	}
	if u.Path != "" && u.Path != "/" {
		return ep, fmt.Errorf("%w: %q has a path; the topic root is set in Config.Topics", ErrBadURL, redact(cfg.URL))
	}
	if u.User != nil {
		if ep.Username == "" {
			ep.Username = u.User.Username()
		}
		if p, ok := u.User.Password(); ok && ep.Password == "" {
			ep.Password = p
		}
	}
	host := u.Host
	if u.Port() == "" {
		host = u.Host + ":" + defPort
	}
	scheme := "mqtt"
	switch {
	case ep.kind == DialectMQTT && ep.tls:
		scheme = "mqtts"
	case ep.kind == DialectNATS && ep.tls:
		scheme = "tls"
	case ep.kind == DialectNATS:
		scheme = "nats"
	}
	ep.url = &url.URL{Scheme: scheme, Host: host}
	if ep.ClientID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		ep.ClientID = "fc-" + hex.EncodeToString(b[:])
	}
	if err := schemas.CheckID("client id", ep.ClientID); err != nil {
		return ep, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	if ep.Topics.Root() == "" {
		ep.Topics = schemas.MustTopics("")
	}
	if ep.SessionExpiry == 0 {
		ep.SessionExpiry = DefaultSessionExpiry
	}
	if ep.SharedMember {
		ep.SessionExpiry = 0
	}
	if ep.ConnectTimeout <= 0 {
		ep.ConnectTimeout = DefaultConnectTimeout
	}
	if ep.ReconnectMax <= 0 {
		ep.ReconnectMax = DefaultReconnectMax
	}
	if ep.WriteTimeout <= 0 {
		ep.WriteTimeout = DefaultWriteTimeout
	}
	if ep.Logger == nil {
		ep.Logger = slog.Default()
	}
	ep.Logger = ep.Logger.With("broker", ep.url.String(), "client", ep.ClientID)
	return ep, nil
}

// inboxTopic is the topic under which a transport receives replies to its
// requests: root/v1/api/inbox/<client> (MQTT) or root.v1.api.inbox.<client>
// (NATS). Only backend-role identities may use request/reply.
func inboxTopic(t schemas.Topics, clientID string) (schemas.Topic, error) {
	return t.API("inbox." + clientID)
}

// redact hides the password of a URL for error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

func redactErr(err error, raw string) string {
	msg := err.Error()
	// The URL may not parse, so cut the userinfo out by hand.
	if i := strings.Index(raw, "://"); i >= 0 {
		rest := raw[i+3:]
		if j := strings.LastIndex(rest, "@"); j >= 0 {
			msg = strings.ReplaceAll(msg, rest[:j], "xxxxx")
		}
	}
	return msg
}

// backoff returns the reconnect delay for attempt n (0-based): 50ms
// doubling up to max.
func backoff(n int, max time.Duration) time.Duration {
	d := 50 * time.Millisecond
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
