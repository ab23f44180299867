package deviceagent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"
	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Config configures an Agent. It is taken by value; New does not modify
// the caller's copy.
type Config struct {
	// DeviceID is the device's id (topics, reports, chunk requests). Required.
	DeviceID string
	// Class is the device class as used in topics (announcements); "" =
	// no class subscription.
	Class string
	// Identity holds the SUIT identifiers (vendor, class UUIDs, device id)
	// the manifest's conditions are checked against. Required.
	Identity suit.Identity
	// Transport is the device's broker connection. Required. The caller
	// closes it after Run returns.
	Transport broker.Transport
	// Topics is the topic builder (root). Required.
	Topics schemas.Topics
	// Boot is the device's bootloader view (slots, boot, confirm) of its
	// application. Required.
	Boot *bootctl.Device
	// Stages are the device's upgradable boot stages before the
	// application (a bootloader), in boot order, each a bootctl device of
	// its own, updated by manifests whose component they name (see
	// Stage). With stages the device boots as a bootctl.Chain of them and
	// Boot. Default none.
	Stages []Stage
	// StateDir holds the agent's state and the fetch progress. Required.
	StateDir string
	// Trust are the keys manifests must be signed with. Required.
	Trust suit.TrustAnchors
	// Keys unwraps the content keys of encrypted images: the device's
	// key-encryption key or ECDH private key (suit.KEK, suit.ECDHKey, a
	// suit.Keyring across a rotation, or a secure element), held in its
	// root of trust, never in StateDir. Nil: encrypted images are refused
	// (CodeUnauthorized) before anything is downloaded.
	Keys suit.KeyUnwrapper
	// EncryptedSlots keeps an encrypted image's ciphertext in the
	// candidate slot, for the bootloader to decrypt as it installs it
	// (encslots.go), instead of decrypting it into the slot. Boot must
	// support it (bootctl.Device.SupportsEncryptedSlots: a KEK in its root
	// of trust, the same key Keys holds, and no secure-boot mode). Default
	// false: the slot holds plaintext.
	EncryptedSlots bool
	// NoticeTrust are the keys notices must be signed with: the campaign
	// authority's, whose signature binds a campaign id and a target (this
	// device, or its class) to an envelope (docs/SECURITY.md, "Campaign
	// binding"). Default: Trust, for a server that signs manifests and
	// notices with one key. A device whose firmware is signed offline
	// trusts the firmware key in Trust and the publisher's notice key here.
	NoticeTrust suit.TrustAnchors
	// Prices overrides the price per byte of a source kind ("broker",
	// "http", "objstore", "file"); otherwise the notice's hint is used.
	Prices map[string]float64
	// HTTPClient is used by HTTP sources. Default: fetcher.NewHTTPClient
	// (connect, handshake and header timeouts). Whatever the client, an
	// HTTP source gives up a request that goes fetcher.HTTPReadTimeout
	// without a byte.
	HTTPClient *http.Client
	// URLPrefixes, when set, is an allow-list for the http(s) URIs of
	// signed manifests: the agent fetches only from those that start with
	// one of them ("https://cdn.example.com/fw/"). None: every http(s) URI
	// a signed manifest names. Notices name no sources the agent follows:
	// their hints only price a kind.
	URLPrefixes []string
	// FileDirs are the directories a signed manifest's file:// URIs may
	// point into (a USB stick's mount point, a local cache). Files are
	// opened through os.OpenInRoot, so neither "..", nor a path outside,
	// nor a symbolic link leads out of them. None: file:// URIs are not
	// followed. Sources below are the device's own and not limited.
	FileDirs []string
	// HTTPAuth, when set, are the device's credentials for the HTTP
	// sources under HTTPAuth.URLPrefix (see HTTPAuth). Nil: none.
	HTTPAuth *HTTPAuth
	// ObjectStore, when set, serves images from a NATS object store named
	// ObjectBucket (for gateways with NATS access).
	ObjectStore  jetstream.ObjectStore
	ObjectBucket string
	// ObjectJS, when set with ObjectStore, lets the object store source
	// read ranges (a resumed download does not transfer its prefix again).
	ObjectJS jetstream.JetStream
	// Sources are extra sources (a local file or directory, a peer).
	Sources []fetcher.Source
	// Policy is the download and install authorization.
	Policy Policy
	// SelfTest is the product's self-test, run after the new image starts
	// (with the broker check) before it is confirmed. Nil = none.
	SelfTest func(ctx context.Context) error
	// Clock is the agent's time source. Default: the system clock.
	Clock fetcher.Clock
	// Logger receives the agent's logs. Default slog.Default().
	Logger *slog.Logger
	// ProgressStep is the download progress reporting step in percent.
	// Default 5.
	ProgressStep int
	// ProgressInterval is the longest time, on Clock, between download
	// progress reports while chunks arrive, whatever ProgressStep and
	// PersistEvery are: at the first chunk written ProgressInterval or
	// more after the previous timed report (or the start of the fetch),
	// the agent reports the bytes verified so far. It keeps a slow but
	// progressing device from being marked timed out by the publisher, so
	// it must stay well below the publisher's no-progress limit
	// (publisher Config.NoProgress, default 30m). Default 1m.
	ProgressInterval time.Duration
	// MaxAttempts bounds the attempts of one update that keeps failing
	// with a transient error before it is given up. Default 3. A fetch
	// that failed only because no source could be reached (the device has
	// no connectivity: fetcher.ErrUnreachable) is not counted: the agent
	// waits with the same backoff (and tries again at once when the
	// transport reports a reconnection, see Reconnector) and resumes from
	// its persisted progress, for as long as it takes.
	MaxAttempts int
	// RetryBase and RetryCap shape the exponential backoff between
	// attempts, and between tries to subscribe to the notice topics (which
	// never end the agent: Run tries until it is through). Defaults 2s and
	// 5m.
	RetryBase, RetryCap time.Duration
	// SecurityInterval paces security reports (a notice refused before
	// anything in it could be trusted): three may go out at once, then one
	// per SecurityInterval; the refusals in between are counted in the
	// next. Default 1m.
	SecurityInterval time.Duration
	// ChunkIdle is how long the broker source waits for chunks before
	// asking again. Default 2s.
	ChunkIdle time.Duration
	// ChunkListen and ChunkQuiet are the broker source's ListenFirst and
	// Quiet: how long a download only listens for a broadcast wave before
	// asking for chunks, and the gap in the wave that ends the listening.
	// Zero: the fetcher's defaults (1s and 500ms, at most ChunkIdle);
	// ChunkListen negative: ask at once.
	ChunkListen, ChunkQuiet time.Duration
	// DeliveryProtocol is the delivery protocol the agent speaks
	// (schemas.ProtocolPlain, schemas.ProtocolCoded), reported in its
	// reports and chunk requests. Zero: schemas.MaxProtocol. 1 makes it
	// behave as an agent of the previous protocol (plain chunk table,
	// repair by chunks), which tests and benchmarks use to run old and new
	// agents in one campaign.
	DeliveryProtocol int
	// FetchTally, when set, is added what the broker source saw on its
	// receive path (fetcher.Tally): a simulated fleet's totals.
	FetchTally *fetcher.Tally
	// BootGate, when set, is passed through before each reboot (the
	// bootloader's run over the device's flash): it returns once the
	// reboot may start, and the agent calls the release it returns when
	// the bootloader is done. A host that simulates many devices on a few
	// cores bounds with it how many bootloaders hash and copy images at
	// once, work that would otherwise take the CPU from the simulated
	// devices still downloading (real devices do not share a CPU).
	// Default none.
	BootGate func(ctx context.Context) (release func(), err error)
	// Fetch tunes the fetcher's per-source retries.
	Fetch fetcher.RetryPolicy
	// PersistEvery is the fetch progress persistence interval in chunks.
	// Default 64.
	PersistEvery int
	// NoSync persists state and fetch progress with write and rename but
	// without fsync (and does not sync the flash file), for simulators
	// running many devices on one disk, whose power cuts are process
	// kills. A real device leaves it false.
	NoSync bool
	// ParityInMemory holds the parity chunks of a coded download in
	// memory until their blocks are rebuilt, instead of in a scratch file
	// in the download's state directory (fetcher.Config.ParityInMemory).
	ParityInMemory bool
	// OnState, when set, is called after each state change is persisted
	// and before its effect (observers, simulators, crash tests).
	OnState func(Record)
	// OnProgress, when set, is called with the verified bytes of the
	// download each time the fetcher persists its progress, and every
	// ProgressInterval while chunks arrive.
	OnProgress func(done, total uint64)
}

// Agent is one device's update client. Build it with New and drive it
// with Run. Its methods are safe for concurrent use.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	fetchTo string // fetch progress directory
	notices chan []byte
	picker  *fetcher.Picker // source ranking state, kept across downloads

	// reportMu serialises sendReport: a report's counter is taken, saved
	// and published before the next report's is.
	reportMu sync.Mutex

	mu sync.Mutex
	st Record
	// counter is the last report counter used; st.Counter, persisted,
	// is at or above it (counterLease).
	counter uint64
	active  bootctl.ImageInfo
	// activePublic: active's digest may be reported (activeDigestPublic).
	activePublic bool
	dropped      string     // what the last download ignored, for the report
	enc          *encUpdate // the encrypted update's content key (memory only)
	// chain boots Stages then Boot; nil without stages.
	chain *bootctl.Chain
	// Security reports: their rate limit, and the refusals it held back.
	secLimit  *rate.Limiter
	secMissed int
	secCode   schemas.ErrCode
	secText   string
}

// New checks cfg and returns an agent. Errors wrap ErrConfig.
func New(cfg Config) (*Agent, error) {
	if err := schemas.CheckID("device id", cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if cfg.Class != "" {
		if err := schemas.CheckID("class", cfg.Class); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
	}
	if cfg.DeliveryProtocol == 0 {
		cfg.DeliveryProtocol = schemas.MaxProtocol
	}
	if cfg.DeliveryProtocol < schemas.ProtocolPlain || cfg.DeliveryProtocol > schemas.MaxProtocol {
		return nil, fmt.Errorf("%w: delivery protocol %d outside [%d, %d]", ErrConfig, cfg.DeliveryProtocol, schemas.ProtocolPlain, schemas.MaxProtocol)
	}
	switch {
	case cfg.Transport == nil:
		return nil, fmt.Errorf("%w: no transport", ErrConfig)
	case cfg.Boot == nil:
		return nil, fmt.Errorf("%w: no bootctl device", ErrConfig)
	case cfg.StateDir == "":
		return nil, fmt.Errorf("%w: no state directory", ErrConfig)
	case len(cfg.Trust) == 0:
		return nil, fmt.Errorf("%w: no trust anchors", ErrConfig)
	}
	if err := checkEncryptedSlots(cfg); err != nil {
		return nil, err
	}
	if len(cfg.NoticeTrust) == 0 {
		cfg.NoticeTrust = cfg.Trust
	}
	cfg.Trust = append(suit.TrustAnchors(nil), cfg.Trust...)
	cfg.NoticeTrust = append(suit.TrustAnchors(nil), cfg.NoticeTrust...)
	cfg.URLPrefixes = append([]string(nil), cfg.URLPrefixes...)
	cfg.FileDirs = append([]string(nil), cfg.FileDirs...)
	for _, d := range cfg.FileDirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("%w: file source directory %q is not absolute", ErrConfig, d)
		}
	}
	if _, err := cfg.Topics.Notice(cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("%w: topics: %v", ErrConfig, err)
	}
	if cfg.Clock == nil {
		cfg.Clock = sysClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProgressStep <= 0 {
		cfg.ProgressStep = 5
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 2 * time.Second
	}
	if cfg.RetryCap <= 0 {
		cfg.RetryCap = 5 * time.Minute
	}
	if cfg.Policy.Recheck <= 0 {
		cfg.Policy.Recheck = time.Minute
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = fetcher.NewHTTPClient()
	}
	if cfg.SecurityInterval <= 0 {
		cfg.SecurityInterval = time.Minute
	}
	if err := cfg.HTTPAuth.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	cfg.Sources = append([]fetcher.Source(nil), cfg.Sources...)
	fetchTo := filepath.Join(cfg.StateDir, "fetch")
	if err := os.MkdirAll(fetchTo, 0o700); err != nil {
		return nil, fmt.Errorf("%w: state directory: %v", ErrConfig, err)
	}
	st, err := LoadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	chain, err := newChain(cfg)
	if err != nil {
		return nil, err
	}
	return &Agent{
		chain:   chain,
		cfg:     cfg,
		log:     cfg.Logger.With("device", cfg.DeviceID),
		fetchTo: fetchTo,
		notices: make(chan []byte, 16),
		st:      st,
		counter: st.Counter, // every counter up to the persisted ceiling may have been used
		// Three at once, then one per interval.
		secLimit: rate.NewLimiter(rate.Every(cfg.SecurityInterval), 3),
	}, nil
}

type sysClock struct{}

func (sysClock) Now() time.Time { return time.Now() }

// State returns a copy of the persisted state.
func (a *Agent) State() Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.st
	r.Done = append([]string(nil), a.st.Done...)
	return r
}

// Run subscribes to the device's notice topic and its class's
// announcements, reports the actual active version and state, resumes an
// update in progress, and then handles notices until ctx ends. A broker
// that does not answer (a subscription, the consumer behind it, a report)
// never stops it: it tries again with backoff, and reports once it is
// through. It returns ctx's error, or an error when its topics cannot be
// named.
func (a *Agent) Run(ctx context.Context) error {
	nt, _ := a.cfg.Topics.Notice(a.cfg.DeviceID)
	topics := []schemas.Topic{nt}
	if a.cfg.Class != "" {
		at, err := a.cfg.Topics.Announce(a.cfg.Class)
		if err != nil {
			return err
		}
		topics = append(topics, at)
	}
	subs := make([]broker.Subscription, len(topics))
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		for _, s := range subs {
			if s != nil {
				_ = s.Unsubscribe(uctx)
			}
		}
	}()
	if err := a.subscribe(ctx, topics, subs); err != nil {
		return err
	}
	reconnected := make(chan struct{}, 1)
	if rc, ok := a.cfg.Transport.(Reconnector); ok {
		stop := rc.OnConnect(func() {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		})
		defer stop()
	}
	a.reportConnected(ctx)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		a.advance(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		timer.Reset(a.untilNext())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b := <-a.notices:
			a.onNotice(ctx, b)
			a.flushSecurity(ctx)
		case <-reconnected:
			a.mu.Lock()
			if a.st.busy() && a.st.Offline > 0 {
				// Waiting for connectivity: it is back, try now.
				a.st.NextAttempt = 0
			}
			a.mu.Unlock()
			a.reportConnected(ctx)
		case <-timer.C:
			a.flushSecurity(ctx)
		}
	}
}

// subscribeTimeout bounds one try to subscribe to one topic.
const subscribeTimeout = 10 * time.Second

// subscribe fills subs with subscriptions to topics, trying again with
// exponential backoff (RetryBase doubling up to RetryCap, with jitter)
// after any failure, keeping those already in place, until all are or ctx
// ends (its error is returned).
func (a *Agent) subscribe(ctx context.Context, topics []schemas.Topic, subs []broker.Subscription) error {
	backoff := retry.WithCappedDuration(a.cfg.RetryCap, retry.WithJitterPercent(20, retry.NewExponential(a.cfg.RetryBase)))
	tries := 0
	return retry.Do(ctx, backoff, func(ctx context.Context) error {
		tries++
		for i, t := range topics {
			if subs[i] != nil {
				continue
			}
			// NATS keeps retained messages for per-device notices only (a
			// JetStream stream); class announcements are live there.
			retained := i == 0 || a.cfg.Transport.Dialect() == broker.DialectMQTT
			sctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
			// Inline: onMessage returns at once (it copies the notice
			// into the agent's own bounded queue), so the transport's
			// queue and goroutine per subscription would only add a hop
			// (and, in a fleet simulated in one process, 1,000
			// goroutines at N = 500).
			s, err := a.cfg.Transport.Subscribe(sctx, t, a.onMessage, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: retained, Inline: true})
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				a.log.Warn("subscribe failed; trying again", "topic", a.cfg.Transport.Dialect().Native(t), "try", tries, "err", err)
				return retry.RetryableError(fmt.Errorf("deviceagent: subscribe %s: %w", a.cfg.Transport.Dialect().Native(t), err))
			}
			subs[i] = s
		}
		if tries > 1 {
			a.log.Info("subscribed after a broker failure", "tries", tries)
		}
		return nil
	})
}

// Reconnector is implemented by transports that can tell when a
// connection to the broker comes up again. When the agent's transport
// implements it, the agent reports its actual active version and state on
// every reconnection (and always once when Run starts), so the backend can
// reconcile its view with the device's.
type Reconnector interface {
	// OnConnect registers f, called after each reconnection; the returned
	// function unregisters it. f must not block.
	OnConnect(f func()) (stop func())
}

// reportConnected reports the active version (read from bootctl) and the
// current state.
func (a *Agent) reportConnected(ctx context.Context) {
	a.refreshActive()
	a.mu.Lock()
	state := a.st.State
	a.mu.Unlock()
	_ = a.report(ctx, state, schemas.CodeNone, "connected")
}

// untilNext returns how long to wait before advance has work again, or
// held-back security reports may go out.
func (a *Agent) untilNext() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := time.Hour
	if a.secMissed > 0 {
		d = a.cfg.SecurityInterval
	}
	if !a.st.busy() || a.st.NextAttempt == 0 {
		return d
	}
	return max(min(d, time.UnixMilli(a.st.NextAttempt).Sub(a.cfg.Clock.Now())), time.Millisecond)
}

// onMessage is the transport handler of notice topics: it copies the
// payload to the agent's loop, dropping it when the queue is full (a
// retained notice comes again on reconnect).
func (a *Agent) onMessage(ctx context.Context, m broker.Message) {
	b := append([]byte(nil), m.Payload...)
	select {
	case a.notices <- b:
	default:
		a.log.Warn("notice queue full, dropping", "topic", m.Topic)
	}
}

// refreshActive reads the active image's header from bootctl.
func (a *Agent) refreshActive() {
	st, err := a.cfg.Boot.Status()
	public := err == nil && st.Active.Valid && a.activeDigestPublic()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.log.Warn("reading bootctl status", "err", err)
		return
	}
	a.active = st.Active
	a.activePublic = public
}

// save persists the state (the caller holds no lock).
func (a *Agent) save() error {
	a.mu.Lock()
	r := a.st
	a.mu.Unlock()
	return saveState(a.cfg.StateDir, &r, !a.cfg.NoSync)
}

// report publishes a device report about the update in progress (or the
// last one); the counter is persisted first.
func (a *Agent) report(ctx context.Context, state schemas.State, code schemas.ErrCode, text string) error {
	a.mu.Lock()
	campaign := a.st.Campaign
	a.mu.Unlock()
	return a.reportFor(ctx, campaign, state, code, text)
}

// reportFor publishes a device report naming campaign.
func (a *Agent) reportFor(ctx context.Context, campaign string, state schemas.State, code schemas.ErrCode, text string) error {
	return a.sendReport(ctx, campaign, state, code, text, false, nil)
}

// counterLease is how many report counters one persisted ceiling covers
// (Record.Counter).
const counterLease = 64

// sendReport publishes a device report; security marks a security event
// (campaign is then empty). Its counter is covered by a persisted ceiling
// first.
func (a *Agent) sendReport(ctx context.Context, campaign string, state schemas.State, code schemas.ErrCode, text string, security bool, at *progressAt) error {
	a.reportMu.Lock()
	defer a.reportMu.Unlock()
	text = a.scrub(text)
	a.mu.Lock()
	a.counter++
	// The counter must never go back, across power cuts too: a ceiling
	// is persisted before a counter beyond the last one is used, a lease
	// of counterLease at a time (a restart resumes above the ceiling),
	// so that a report does not cost a state file write each.
	prev := a.st.Counter
	lease := a.counter > prev
	if lease {
		a.st.Counter = a.counter + counterLease - 1
	}
	if len(text) > schemas.MaxTextLen {
		text = strings.ToValidUTF8(text[:schemas.MaxTextLen-3], "") + "..."
	}
	r := schemas.DeviceReport{
		V: schemas.Version, Device: a.cfg.DeviceID, Campaign: campaign, State: state,
		ActiveVersion: a.active.Version, Code: code, Text: text, Counter: a.counter,
		Time: a.cfg.Clock.Now().UnixMilli(), Source: a.st.Source, Class: a.cfg.Class, Security: security,
	}
	if a.active.Valid && a.activePublic {
		r.ActiveDigest = append([]byte(nil), a.active.Digest[:]...)
	}
	if a.cfg.DeliveryProtocol > schemas.ProtocolPlain { // protocol 1 is written as absent
		r.Protocol = uint8(a.cfg.DeliveryProtocol)
	}
	if state == schemas.StateDownloading {
		done := a.st.Bytes
		if at != nil { // a progress report sent after the fact
			done, r.Time = at.bytes, at.time.UnixMilli()
		}
		r.BytesDone, r.BytesTotal = done, a.st.Size
		if len(a.st.Delta) > 0 { // the bytes fetched are the delta's
			r.BytesDone, r.BytesTotal = min(done, a.st.DeltaSize), a.st.DeltaSize
		}
	}
	rec := a.st
	a.mu.Unlock()
	if lease {
		if err := saveState(a.cfg.StateDir, &rec, !a.cfg.NoSync); err != nil {
			// Not persisted: the next report leases again.
			a.mu.Lock()
			if a.st.Counter == rec.Counter {
				a.st.Counter = prev
			}
			a.mu.Unlock()
			a.log.Error("persisting report counter", "err", err)
			return err
		}
	}
	b, err := schemas.Encode(&r)
	if err != nil {
		a.log.Error("encoding report", "err", err)
		return err
	}
	topic, _ := a.cfg.Topics.Report(a.cfg.DeviceID)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.cfg.Transport.Publish(pctx, topic, b, broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
		a.log.Warn("publishing report", "state", state, "err", err)
		return err
	}
	a.log.Debug("report", "state", state, "code", code, "text", text, "counter", r.Counter)
	return nil
}

// setState changes the state, persists it, tells OnState, and reports it.
// It returns the persistence error; a failed publish is only logged.
func (a *Agent) setState(ctx context.Context, s schemas.State, code schemas.ErrCode, text string) error {
	text = a.scrub(text)
	a.mu.Lock()
	a.st.State = s
	a.st.Code, a.st.Text = code, text
	rec := a.st
	a.mu.Unlock()
	if err := saveState(a.cfg.StateDir, &rec, !a.cfg.NoSync); err != nil {
		return err
	}
	a.log.Info("state", "state", s, "campaign", rec.Campaign, "code", code, "text", text)
	if a.cfg.OnState != nil {
		a.cfg.OnState(rec)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	_ = a.report(ctx, s, code, text)
	return nil
}
