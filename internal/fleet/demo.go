package fleet

import (
	"bytes"
	"context"
	"crypto"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Config configures a demo run (Run). It is taken by value; zero fields
// take the default stated.
type Config struct {
	// Devices is the fleet size. Default 100.
	Devices int
	// ImageSize is the size of both images in bytes. Default 1 MiB.
	ImageSize int
	// ChunkSize of the uploaded image. Default 16 KiB.
	ChunkSize uint32
	// MQTTURL and NATSURL name external brokers; empty = embedded.
	MQTTURL, NATSURL string
	// FailRate is the fraction of devices whose self-test fails.
	FailRate float64
	// Seed makes the images and the failing devices repeatable.
	Seed uint64
	// V2, when not nil, is the campaign's image as the caller made it
	// already (Image(Seed, "v2", ImageSize), as the bench does for its raw
	// side), so that the process holds one copy, not two. Ignored with
	// SmallChange or Delta.
	V2 []byte
	// Dir is the work directory (keys, images, devices, broker data).
	// Required.
	Dir string
	// Phases are the campaign's cumulative rollout percentages. Default
	// 10, 50, 100.
	Phases []uint8
	// FailPermille is the campaign's failure threshold. Default 100 (10%).
	FailPermille uint16
	// Timeout bounds the campaign. Default 10 minutes.
	Timeout time.Duration
	// Settle is how long devices still busy when the campaign ends may
	// take to finish. Default 20s.
	Settle time.Duration
	// Logger receives the logs of every component. Default slog.Default().
	Logger *slog.Logger
	// OnProgress, when set, is called every ProgressEvery (default 200ms)
	// while the campaign runs, and once at its end.
	OnProgress    func(Progress)
	ProgressEvery time.Duration
	// OnReady, when set, is called once the fleet is connected and before
	// the campaign is created.
	OnReady func(setup time.Duration)
	// Publisher tunes the publisher's configuration.
	Publisher func(*publisher.Config)
	// Agent tunes each device agent's configuration.
	Agent func(*deviceagent.Config)
	// MemFlash keeps the devices' flash in memory (FleetConfig.MemFlash).
	MemFlash bool
	// HoldBoots holds the devices' installs until the fleet has staged
	// (FleetConfig.HoldBoots); campaigns of one phase only.
	HoldBoots bool
	// Loss is the fraction of chunks each device drops at its receive
	// path, independently (FleetConfig.Loss).
	Loss float64
	// Touch puts every device's free slot in the host's page cache before
	// the campaign (Fleet.TouchFreeSlots), as `firmcast bench` does.
	Touch bool
	// tally sums the in-process devices' receive paths (Summary.Receive).
	tally *fetcher.Tally
	// Stall ends a campaign with ErrStalled when nothing moved (device
	// states, bytes received, the campaign's counters) for this long.
	// Default 3 minutes.
	Stall time.Duration
	// BrokerDown ends a campaign with ErrBrokerDown when a broker of
	// Brokers refuses TCP connections for this long. Default 15s.
	BrokerDown time.Duration
	// Brokers are the broker URLs watched while the campaign runs (Run
	// adds the stack's own).
	Brokers []string
	// UpTimeout bounds how long the devices may take to come up. Default
	// 5 minutes.
	UpTimeout time.Duration
	// Encrypt runs the campaign with v2 encrypted (issue 17): the
	// publisher gets a key-custody key, every device a key-encryption key
	// in its device file (registered with the publisher), and v2 is
	// uploaded encrypted for the devices' class: one ciphertext for all,
	// named by its digest, with each device's content key in its notice.
	Encrypt bool
	// HTTPListen, when set, serves the publisher's HTTP API and the
	// operator console there (port 0: a free port).
	HTTPListen string
	// OnConsole, when set with HTTPListen, is called once the backend is
	// up with the console's URL and a new read-only API key to sign in
	// with.
	OnConsole func(url, readKey string)
	// Hold, when set, is called after the campaign with its summary,
	// before anything stops: the console stays up until it returns.
	Hold func(ctx context.Context, sum Summary)
	// SmallChange makes v2 v1 with a few small changes (NextVersion)
	// rather than unrelated bytes: the images of a delta run.
	SmallChange bool
	// Delta uploads v1 too (SmallChange implied), so the campaign offers
	// the devices running v1 a delta (Summary.ViaDelta, DeltaSize).
	Delta bool
	// OtherSource, when positive, makes every OtherSource-th device run
	// v0 instead of v1, an image the server does not hold: those take
	// the full image in a delta run.
	OtherSource int
}

// ErrStalled: nothing moved in the campaign for Config.Stall.
var ErrStalled = errors.New("fleet: nothing moved")

// ErrBrokerDown: a broker stopped accepting connections mid-run.
var ErrBrokerDown = errors.New("fleet: broker down")

// ErrSimFailed: a share of the simulated fleet (a child process of
// Procs) stopped mid-run.
var ErrSimFailed = errors.New("fleet: simulator process failed")

func (c *Config) defaults() error {
	if c.Devices == 0 {
		c.Devices = 100
	}
	if c.Devices < 1 || c.Devices > publisher.MaxTargets {
		return fmt.Errorf("fleet: --devices %d: want 1..%d", c.Devices, publisher.MaxTargets)
	}
	if c.ImageSize == 0 {
		c.ImageSize = 1 << 20
	}
	if c.ImageSize < 1 || c.ImageSize > 64<<20 {
		return fmt.Errorf("fleet: --image-size %d: want 1 byte .. 64 MiB", c.ImageSize)
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 16 << 10
	}
	if c.FailRate < 0 || c.FailRate > 1 {
		return fmt.Errorf("fleet: --fail-rate %g: want 0..1", c.FailRate)
	}
	if c.MQTTURL == "" && c.NATSURL != "" {
		return errors.New("fleet: an external NATS needs an external device broker too")
	}
	if c.Dir == "" {
		return errors.New("fleet: no work directory")
	}
	if len(c.Phases) == 0 {
		c.Phases = []uint8{10, 50, 100}
	}
	if c.HoldBoots && len(c.Phases) > 1 {
		// A later phase opens on confirmations, which follow the boots.
		return fmt.Errorf("fleet: holding boots until the fleet has staged needs a campaign of one phase, not %v", c.Phases)
	}
	if c.FailPermille == 0 {
		c.FailPermille = 100
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Settle <= 0 {
		c.Settle = 20 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 200 * time.Millisecond
	}
	c.watchDefaults()
	return nil
}

func (c *Config) watchDefaults() {
	if c.Stall <= 0 {
		c.Stall = 3 * time.Minute
	}
	if c.BrokerDown <= 0 {
		c.BrokerDown = 15 * time.Second
	}
}

// Progress is a snapshot of a running demo.
type Progress struct {
	Devices   int
	ImageSize int
	// States counts devices by their agent's state (device side).
	States map[string]int
	// RxBytes are payload bytes received by all devices so far.
	RxBytes int64
	// Campaign is the backend's view.
	Campaign publisher.Status
}

// Run builds the whole system in-process (or against external brokers),
// runs a phased campaign from v1 to v2 and returns what happened, read
// from the devices. The error is nil whenever the campaign ran to an end
// (completed or aborted); Summary.Outcome says which.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.defaults(); err != nil {
		return Summary{}, err
	}
	t0 := time.Now()
	log := cfg.Logger
	sum := Summary{Devices: cfg.Devices, ImageSize: cfg.ImageSize, Dir: cfg.Dir, Seed: cfg.Seed, FailRate: cfg.FailRate}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return sum, err
	}
	// Keys and images.
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		return sum, err
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		return sum, err
	}
	if err := writeKeys(filepath.Join(cfg.Dir, "keys"), key); err != nil {
		return sum, err
	}
	v1, v2 := Image(cfg.Seed, "v1", cfg.ImageSize), cfg.V2
	switch {
	case cfg.SmallChange || cfg.Delta:
		v2 = NextVersion(v1, cfg.Seed)
	case len(v2) != cfg.ImageSize:
		v2 = Image(cfg.Seed, "v2", cfg.ImageSize)
	}
	var v0 []byte // the devices' other factory image, made only when some run it
	if cfg.OtherSource > 0 {
		v0 = Image(cfg.Seed, "v0", cfg.ImageSize)
	}
	files := map[string][]byte{"v1.bin": v1, "v2.bin": v2}
	if cfg.Encrypt {
		delete(files, "v2.bin") // the plaintext stays with the vendor (here: in memory)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(cfg.Dir, name), b, 0o644); err != nil {
			return sum, err
		}
	}
	d1, d2 := sha256.Sum256(v1), sha256.Sum256(v2)
	sum.V1 = hex.EncodeToString(d1[:])
	if !cfg.Encrypt {
		sum.V2 = hex.EncodeToString(d2[:]) // an encrypted v2 is named by its ciphertext (RunCampaign)
	}
	vendor, class := uuidFor("vendor"), uuidFor("class")

	// Backend.
	topics := schemas.MustTopics(schemas.DefaultRoot)
	ns, prefix := "firmcast", "dev"
	if cfg.MQTTURL != "" {
		// A shared broker: a fresh topic root, and device ids (the MQTT
		// client ids) no other client uses, or the broker would hand our
		// sessions over to them.
		run := randomHex(6)
		root := "fcdemo" + run
		topics, ns, prefix = schemas.MustTopics(root), root, "dev"+run[:6]
		sum.Broker, sum.NATS, sum.Root = cfg.MQTTURL, cfg.NATSURL, root
	} else {
		sum.Broker, sum.NATS = "embedded", "embedded"
	}
	pcfg := publisher.Config{
		Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: cfg.ChunkSize,
		MaxImageSize: int64(cfg.ImageSize), TickInterval: 100 * time.Millisecond, StartWindow: 500 * time.Millisecond,
		WaveInterval: 5 * time.Second, RepairWindow: 250 * time.Millisecond, WaveEcho: 32, MinPhaseDevices: 3,
		MaxDownloading: 1000, FailAction: publisher.FailAbort, Logger: log,
	}
	if cfg.Encrypt {
		pcfg.KeyCustody = make([]byte, 16)
		if _, err := crand.Read(pcfg.KeyCustody); err != nil {
			return sum, err
		}
	}
	if cfg.Publisher != nil {
		cfg.Publisher(&pcfg)
	}
	st, err := stack.Start(ctx, stack.Config{
		MQTTURL: cfg.MQTTURL, NATSURL: cfg.NATSURL, DataDir: filepath.Join(cfg.Dir, "nats"), Topics: topics, Namespace: ns,
		Publisher: pcfg, Logger: log, Cleanup: true, HTTPListen: cfg.HTTPListen,
	})
	if err != nil {
		return sum, err
	}
	if cfg.OnConsole != nil && st.HTTPURL != "" {
		tok, _, err := st.Pub.CreateAPIKey(ctx, st.Admin, "demo-console", []publisher.Scope{publisher.ScopeRead})
		if err != nil {
			st.Close(ctx)
			return sum, err
		}
		cfg.OnConsole(st.HTTPURL+"/", tok)
	}
	var ids []string
	defer func() { st.Close(ctx, ids...) }()
	sum.Broker, sum.NATS = st.MQTTURL, st.NATSURL
	cfg.Brokers = append(cfg.Brokers, st.MQTTURL, st.NATSURL)
	if st.EmbeddedMQTT {
		sum.Broker = "embedded " + st.MQTTURL
	}
	if st.EmbeddedNATS {
		sum.NATS = "embedded " + st.NATSURL
	}

	// Fleet.
	const devClass = "demo"
	var provision func(ctx context.Context, id string, kek []byte) (string, error)
	if cfg.Encrypt {
		provision = func(ctx context.Context, id string, kek []byte) (string, error) {
			info, err := st.Pub.SetDeviceKEK(ctx, st.Admin, id, kek)
			return info.KeyID, err
		}
	}
	cfg.tally = new(fetcher.Tally)
	fl, err := NewFleet(ctx, FleetConfig{ProvisionKEK: provision,
		Devices: cfg.Devices, Prefix: prefix, Class: devClass, Dir: filepath.Join(cfg.Dir, "devices"), MQTTURL: st.MQTTURL, Topics: topics,
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: v1, MaxImage: cfg.ImageSize,
		FailRate: cfg.FailRate, Seed: cfg.Seed, Logger: log, Agent: cfg.Agent, MemFlash: cfg.MemFlash, UpTimeout: cfg.UpTimeout,
		Loss: cfg.Loss, Tally: cfg.tally, HoldBoots: cfg.HoldBoots,
		FactoryOf: func(i int) []byte {
			if cfg.OtherSource > 0 && i%cfg.OtherSource == cfg.OtherSource-1 {
				return v0
			}
			return v1
		},
		Register: func(ctx context.Context, id, secret string) error {
			return st.RegisterDevice(ctx, id, devClass, secret)
		},
	})
	if err != nil {
		return sum, err
	}
	defer fl.Close()
	for _, d := range fl.Devices {
		ids = append(ids, d.ID)
	}
	defer fl.Stop()
	// Before the agents run: they own their bootloader from then on.
	if cfg.Touch {
		if err := fl.TouchFreeSlots(ctx); err != nil {
			return sum, err
		}
	}
	if err := fl.Run(ctx); err != nil {
		return sum, err
	}
	if cfg.Delta {
		if err := prepareDelta(ctx, st, v1, len(ids)); err != nil {
			return sum, err
		}
	}
	sum.SetupSeconds = time.Since(t0).Seconds()
	be := LocalBackend{S: st}
	if cfg.Encrypt {
		// Every device by id (each read on its own): the image is
		// encrypted for exactly the fleet.
		be.Recipients = &schemas.CampaignSpec{Devices: ids}
	}
	err = RunCampaign(ctx, fl, be, v2, devClass, &cfg, &sum)
	if c, cerr := st.Pub.Campaign(ctx, sum.Campaign); cerr == nil {
		for _, d := range c.Deltas {
			if img, ierr := st.Pub.Image(ctx, d); ierr == nil {
				sum.DeltaSize = max(sum.DeltaSize, img.Size)
			}
		}
	}
	if err == nil && cfg.Hold != nil {
		cfg.Hold(ctx, sum)
	}
	return sum, err
}

// prepareDelta uploads v1, the image the devices run, and waits until the
// registry knows what each of the n devices runs (from their reports), so
// that the campaign makes a delta from v1.
func prepareDelta(ctx context.Context, st *stack.Stack, v1 []byte, n int) error {
	if _, _, err := st.Pub.UploadImage(ctx, st.Admin, "v1.bin", bytes.NewReader(v1)); err != nil {
		return fmt.Errorf("fleet: upload v1: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		devs, err := st.Pub.Devices(ctx)
		known := 0
		for _, d := range devs {
			if d.Image != "" {
				known++
			}
		}
		if err == nil && known >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleet: the registry knows the running image of %d of %d devices: %w", known, n, ctx.Err())
		case <-tick.C:
		}
	}
}

// NextVersion returns the next version of image v as a small source
// change makes it: a few bytes changed in places and a block shifted, the
// size kept.
func NextVersion(v []byte, seed uint64) []byte {
	out := bytes.Clone(v)
	n := len(out)
	if n < 64 {
		return Image(seed, "v2", n)
	}
	// A block shifted by 16 bytes (code inserted), a constant changed,
	// a version string.
	lo, hi := n/4, min(n/4+n/16+64, n)
	copy(out[lo+16:hi], v[lo:hi-16])
	copy(out[lo:lo+16], Image(seed, "insert", 16))
	copy(out[n/2:], Image(seed, "const", min(256, n-n/2)))
	copy(out[n-min(32, n):], fmt.Appendf(nil, "v2 build %d", seed))
	return out
}

// Backend is what a campaign run needs of the firmcast backend: the
// in-process publisher (LocalBackend) or a server's API (sim).
type Backend interface {
	// Upload stores an image and returns its hex digest.
	Upload(ctx context.Context, name string, image []byte) (string, error)
	// Start creates and starts a campaign and returns its id.
	Start(ctx context.Context, req publisher.CampaignRequest) (string, error)
	// Status returns a campaign's status.
	Status(ctx context.Context, id string) (publisher.Status, error)
	// Egress returns the chunk bytes the publisher sent, or -1 if unknown.
	Egress() int64
}

// egressSplitter is a Backend that can split its egress into broadcast
// waves, repair broadcasts and unicast answers.
type egressSplitter interface {
	EgressSplit() (wave, repair, unicast int64)
}

// EgressSplit splits the publisher's chunk egress.
func (b LocalBackend) EgressSplit() (wave, repair, unicast int64) {
	return b.S.Pub.Egress()
}

// EgressTables is the part of the unicast egress that was chunk tables.
func (b LocalBackend) EgressTables() int64 { return b.S.Pub.EgressTables() }

// LocalBackend is a Stack's publisher as a Backend.
type LocalBackend struct {
	S *stack.Stack
	// Recipients, when set, makes Upload store the image encrypted for
	// these devices (publisher.UploadEncryptedImage).
	Recipients *schemas.CampaignSpec
}

func (b LocalBackend) Upload(ctx context.Context, name string, image []byte) (string, error) {
	if b.Recipients != nil {
		img, err := b.S.Pub.UploadEncryptedImage(ctx, b.S.Admin, publisher.ImageUpload{Name: name}, *b.Recipients, bytes.NewReader(image))
		return img.Digest, err
	}
	img, _, err := b.S.Pub.UploadImage(ctx, b.S.Admin, name, bytes.NewReader(image))
	return img.Digest, err
}

func (b LocalBackend) Start(ctx context.Context, req publisher.CampaignRequest) (string, error) {
	spec, err := req.Spec()
	if err != nil {
		return "", err
	}
	c, err := b.S.Pub.CreateCampaign(ctx, b.S.Admin, spec)
	return c.ID, err
}

func (b LocalBackend) Status(ctx context.Context, id string) (publisher.Status, error) {
	return b.S.Pub.CampaignStatus(ctx, id)
}

func (b LocalBackend) Egress() int64 {
	w, r, u := b.S.Pub.Egress()
	return w + r + u
}

// RunCampaign uploads image through be, rolls it out to every device of
// class in cfg's phases, waits for the campaign to end and the devices to
// settle, stops the fleet's agents, and fills sum from the devices. The
// fleet must be running (Fleet.Run, or StartProcs).
func RunCampaign(ctx context.Context, fl Sim, be Backend, image []byte, class string, cfg *Config, sum *Summary) error {
	if len(cfg.Phases) == 0 {
		cfg.Phases = []uint8{10, 50, 100}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 20 * time.Second
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = 200 * time.Millisecond
	}
	cfg.watchDefaults()
	digest, err := be.Upload(ctx, "v2.bin", image)
	if err != nil {
		return fmt.Errorf("fleet: upload: %w", err)
	}
	if lb, ok := be.(LocalBackend); ok && lb.Recipients != nil {
		// An encrypted image is named by its ciphertext digest; the
		// plaintext's is not shown.
		sum.V2, sum.Encrypted = digest, true
	}
	if cfg.OnReady != nil {
		cfg.OnReady(time.Duration(sum.SetupSeconds * float64(time.Second)))
	}
	t1 := time.Now()
	req := publisher.CampaignRequest{Name: "v1 to v2", Image: digest, Class: class, FailPermille: cfg.FailPermille, Start: true}
	for _, p := range cfg.Phases {
		req.Phases = append(req.Phases, int(p))
	}
	id, err := be.Start(ctx, req)
	if err != nil {
		return fmt.Errorf("fleet: create campaign: %w", err)
	}
	sum.Campaign = id
	st, werr := watch(ctx, be, fl, id, cfg)
	sum.CampaignState, sum.Reason, sum.Targeted = st.State, st.Reason, st.Targets
	sum.CampaignSeconds = time.Since(t1).Seconds()
	if werr == nil {
		// Let devices caught mid-update finish (a rollback, a stalled fetch).
		settle(ctx, fl, cfg.Settle)
	}
	sum.WallSeconds = time.Since(t1).Seconds()
	sum.PublisherBytes = be.Egress()
	if es, ok := be.(egressSplitter); ok {
		sum.Egress = map[string]int64{}
		sum.Egress["wave"], sum.Egress["repair"], sum.Egress["unicast"] = es.EgressSplit()
		if et, ok := be.(interface{ EgressTables() int64 }); ok {
			sum.Egress["unicast_tables"] = et.EgressTables()
		}
	}
	if sum.PublisherBytes >= 0 {
		sum.PublisherRatio = float64(sum.PublisherBytes) / float64(len(image))
	}
	fl.Stop()
	if cfg.tally != nil {
		rx := cfg.tally.Totals()
		sum.Receive = &rx
	}
	o, oerr := fl.Outcome(sha256.Sum256(image))
	sum.apply(o, t1)
	if oerr != nil && werr == nil {
		werr = oerr
	}
	if cfg.OnProgress != nil {
		cfg.OnProgress(snapshot(fl.Tally(), *cfg, st))
	}
	sum.Next = []string{
		fmt.Sprintf("firmcast boot inspect --flash %s", o.FirstFlash),
		fmt.Sprintf("logs: %s", filepath.Join(cfg.Dir, "firmcast.log")),
		"docs/BENCHMARKS.md (end to end) for larger fleets; firmcast bench to measure this machine",
	}
	return werr
}

// watch polls the campaign until it leaves created/running, feeding
// OnProgress. It never gives up on one failed status read: reads are
// retried until the campaign ends, Timeout passes (ctx), nothing moves
// for Stall (ErrStalled), or a broker refuses connections for BrokerDown
// (ErrBrokerDown). Every error names the devices that did not finish.
func watch(ctx context.Context, be Backend, fl Sim, id string, cfg *Config) (publisher.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	tk := time.NewTicker(cfg.ProgressEvery)
	defer tk.Stop()
	var (
		st        publisher.Status
		statusErr error
		last      string
		lastMove  = time.Now()
		probes    = newBrokerProbes(cfg.Brokers)
	)
	for {
		s, err := be.Status(ctx, id)
		if err == nil {
			st, statusErr = s, nil
		} else if ctx.Err() == nil {
			statusErr = err
			cfg.Logger.Warn("campaign status (retrying)", "campaign", id, "err", err)
		}
		t := fl.Tally()
		if t.Failed != "" {
			return st, fmt.Errorf("%w: %s; campaign %s %s", ErrSimFailed, t.Failed, id, st.State)
		}
		p := snapshot(t, *cfg, st)
		if cfg.OnProgress != nil && err == nil {
			cfg.OnProgress(p)
		}
		if err == nil && st.State != publisher.CampaignRunning && st.State != publisher.CampaignCreated {
			return st, nil
		}
		if fp := fingerprint(p); fp != last {
			last, lastMove = fp, time.Now()
		}
		if d := time.Since(lastMove); d >= cfg.Stall {
			return st, fmt.Errorf("%w for %s: campaign %s %s%s; %s", ErrStalled, d.Round(time.Second), id, st.State,
				errNote(statusErr), t.unfinished())
		}
		if url, down, perr := probes.check(cfg.BrokerDown); url != "" {
			return st, fmt.Errorf("%w: %s refused connections for %s (%v); campaign %s %s; %s", ErrBrokerDown, url,
				down.Round(time.Second), perr, id, st.State, t.unfinished())
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("fleet: campaign %s still %s after %s%s; %s: %w", id, st.State, cfg.Timeout, errNote(statusErr), t.unfinished(), ctx.Err())
		case <-tk.C:
		}
	}
}

func errNote(err error) string {
	if err == nil {
		return ""
	}
	return fmt.Sprintf(" (last status read: %v)", err)
}

// fingerprint is what watch compares to see whether anything moved.
func fingerprint(p Progress) string {
	keys := make([]string, 0, len(p.States))
	for k := range p.States {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d,", k, p.States[k])
	}
	c := p.Campaign
	fmt.Fprintf(&b, "rx=%d,%s,%d,%+v", p.RxBytes, c.State, c.Phase, c.Counts)
	return b.String()
}

// brokerProbes checks, at most once a second, that each broker accepts
// TCP connections, and remembers since when one has not.
type brokerProbes struct {
	addrs map[string][]string // URL -> host:port of each server
	down  map[string]time.Time
	err   map[string]error
	next  time.Time
}

func newBrokerProbes(urls []string) *brokerProbes {
	p := &brokerProbes{addrs: map[string][]string{}, down: map[string]time.Time{}, err: map[string]error{}}
	for _, raw := range urls {
		for _, one := range strings.Split(raw, ",") {
			u, err := url.Parse(strings.TrimSpace(one))
			if err != nil || u.Host == "" {
				continue
			}
			p.addrs[raw] = append(p.addrs[raw], u.Host)
		}
	}
	return p
}

// check probes the brokers (once a second at most) and returns the first
// one whose port has refused connections (ECONNREFUSED: no process
// listens) for at least grace, with how long and
// the last error; url is "" when all are up.
func (p *brokerProbes) check(grace time.Duration) (url string, down time.Duration, err error) {
	now := time.Now()
	if now.Before(p.next) {
		return "", 0, nil
	}
	p.next = now.Add(time.Second)
	for u, addrs := range p.addrs {
		var last error
		up := false
		for _, a := range addrs {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				up = true
				break
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				// A timeout is a busy broker or machine, not a dead one
				// (a dead broker's port refuses at once); a stuck one is
				// Stall's to catch.
				up = true
				break
			}
			last = err
		}
		if up {
			delete(p.down, u)
			continue
		}
		since, ok := p.down[u]
		if !ok {
			p.down[u] = now
			continue
		}
		if d := now.Sub(since); d >= grace {
			return u, d, last
		}
	}
	return "", 0, nil
}

// settle waits until no device is mid-update, or d passes.
func settle(ctx context.Context, fl Sim, d time.Duration) {
	deadline := time.After(d)
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		if t := fl.Tally(); t.Busy == 0 || t.Failed != "" {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-tk.C:
		}
	}
}

// final reports whether s ends a device's part in a campaign.
func final(s schemas.State) bool {
	switch s {
	case schemas.StateConfirmed, schemas.StateRolledBack, schemas.StateFailed, schemas.StateSkipped:
		return true
	}
	return false
}

func busyState(s schemas.State) bool {
	switch s {
	case schemas.StateIdle, schemas.StateConfirmed, schemas.StateRolledBack, schemas.StateFailed, schemas.StateSkipped:
		return false
	}
	return true
}

func snapshot(t Tally, cfg Config, st publisher.Status) Progress {
	return Progress{Devices: t.Devices, ImageSize: cfg.ImageSize, States: t.States, RxBytes: t.RxBytes, Campaign: st}
}

// Image returns n pseudo-random bytes determined by seed and name.
func Image(seed uint64, name string, n int) []byte {
	h := sha256.Sum256(fmt.Appendf(nil, "firmcast-image/%d/%s", seed, name))
	r := rand.NewChaCha8(h)
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

// uuidFor returns a fixed 16-byte identifier for name (the demo's vendor
// and class ids).
func uuidFor(name string) []byte {
	h := sha256.Sum256([]byte("firmcast-demo/" + name))
	u := h[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return u
}

// writeKeys writes the demo's signing key pair as dir/demo.pem and
// dir/demo.pub.pem (the files `firmcast keys gen` writes).
func writeKeys(dir string, key crypto.Signer) error {
	priv, err := suit.MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	pub, err := suit.MarshalPublicKeyPEM(key.Public())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "demo.pem"), priv, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "demo.pub.pem"), pub, 0o644)
}

// Summary is what a demo run did, read from the devices.
type Summary struct {
	Outcome       string         `json:"outcome"` // "completed", "aborted" or the campaign's state
	Devices       int            `json:"devices"`
	Targeted      int            `json:"targeted"`
	ConfirmedV2   int            `json:"confirmed_v2"`
	OnV1          int            `json:"on_v1"`
	RolledBack    int            `json:"rolled_back"`
	Failed        int            `json:"failed"`
	FailedBy      map[string]int `json:"failed_by_reason,omitempty"`
	InProgress    int            `json:"in_progress"`
	NotNotified   int            `json:"not_notified"`
	Campaign      string         `json:"campaign"`
	CampaignState string         `json:"campaign_state"`
	Reason        string         `json:"reason,omitempty"`
	ImageSize     int            `json:"image_size"`
	V1            string         `json:"v1_digest"`
	V2            string         `json:"v2_digest"`
	// Encrypted: v2 was encrypted, and V2 names its ciphertext.
	Encrypted      bool  `json:"encrypted,omitempty"`
	PublisherBytes int64 `json:"publisher_bytes"`
	// ViaDelta counts the devices confirmed on v2 that applied a delta;
	// DeltaSize is the size of the delta the campaign offered (0: none).
	ViaDelta       int     `json:"via_delta,omitempty"`
	DeltaSize      int64   `json:"delta_size,omitempty"`
	PublisherRatio float64 `json:"publisher_bytes_per_image"`
	// Egress splits PublisherBytes into wave, repair and unicast bytes.
	Egress map[string]int64 `json:"publisher_egress,omitempty"`
	// Receive sums what the devices' broker sources saw on their
	// receive paths: chunks shed at a full queue (in the source and in
	// the transport), parity refused, chunks rebuilt from parity,
	// requests and loss summaries sent, summaries suppressed.
	Receive      *fetcher.TallyTotals `json:"device_receive,omitempty"`
	DeviceBytes  int64                `json:"device_bytes"`
	SetupSeconds float64              `json:"setup_seconds"`
	WallSeconds  float64              `json:"wall_seconds"`
	// StagedSeconds: from the campaign's start until the last device held
	// a verified, staged candidate. DoneSeconds: until the last device
	// reached its final state (confirmed or rolled back). CampaignSeconds:
	// until the backend saw the campaign end (the last report applied).
	StagedSeconds   float64         `json:"staged_seconds"`
	DoneSeconds     float64         `json:"done_seconds"`
	CampaignSeconds float64         `json:"campaign_seconds"`
	Broker          string          `json:"broker"`
	NATS            string          `json:"nats"`
	Root            string          `json:"topic_root,omitempty"`
	Seed            uint64          `json:"seed"`
	FailRate        float64         `json:"fail_rate"`
	Dir             string          `json:"dir"`
	Problems        []DeviceOutcome `json:"problems,omitempty"`
	// Simulator is what the simulator's child processes used (sim
	// --procs).
	Simulator *ProcUsage `json:"simulator,omitempty"`
	Next      []string   `json:"next,omitempty"`
}

// DeviceOutcome is one device's end state (listed for devices that did
// not end confirmed on v2).
type DeviceOutcome struct {
	Device  string `json:"device"`
	State   string `json:"state"`
	Running string `json:"running"` // "v1", "v2" or "?"
	Code    string `json:"code,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Planned bool   `json:"fail_planned,omitempty"`
}
