package fleet

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Flash geometry of simulated devices (the same as `firmcast boot init`).
const (
	SectorSize  = 4096
	WriteAlign  = 16
	bootSectors = 2
	trialBoots  = 3
)

// ErrSelfTest is the simulated self-test failure of devices chosen by
// FleetConfig.FailRate.
var ErrSelfTest = errors.New("simulated self-test failure (--fail-rate)")

// FleetConfig configures a Fleet. It is taken by value.
type FleetConfig struct {
	// Devices is the number of devices. Required.
	Devices int
	// First is the index of this fleet's first device in a larger fleet
	// of FleetSize devices shared out among processes (Procs): devices
	// are named from Prefix-(First+1) on, and those chosen by FailRate
	// are the same as in one fleet of FleetSize. Default 0.
	First int
	// FleetSize is the size of the whole fleet. Default First+Devices.
	FleetSize int
	// Prefix names devices Prefix-0001, ... Default "dev".
	Prefix string
	// Class is the devices' class. Default "sim".
	Class string
	// Dir holds one directory per device (flash, device file, state).
	// Required.
	Dir string
	// MQTTURL is the broker devices connect to: mqtt:// (MQTT v5) or
	// nats:// (devices on NATS, as gateways). Required for Run.
	MQTTURL string
	// Topics is the topic root. Required.
	Topics schemas.Topics
	// VendorID and ClassID are the SUIT identifiers manifests are checked
	// against (16-byte UUIDs).
	VendorID, ClassID []byte
	// Trust are the manifest signing keys devices trust. Required.
	Trust suit.TrustAnchors
	// Factory is the image installed and confirmed on every device before
	// it starts, as version FactoryVersion (default 1). Required.
	Factory        []byte
	FactoryVersion uint64
	// Bootloader, when set, gives every device an upgradable bootloader
	// stage before the application: its own flash (in memory, the
	// application's geometry), with this image installed and confirmed as
	// version 1, updated by campaigns for the SUIT component
	// StageComponent. The agent boots the chain bootloader, application.
	Bootloader []byte
	// FactoryOf, when set, gives device i (from 0) its own factory image
	// (at most MaxImage bytes) instead of Factory: a fleet on several
	// versions. Nil means Factory.
	FactoryOf func(i int) []byte
	// MaxImage is the largest image a slot must hold. Default len(Factory).
	MaxImage int
	// FailRate is the fraction of devices whose self-test fails after the
	// new image boots, so the bootloader rolls them back.
	FailRate float64
	// Seed makes the choice of failing devices repeatable.
	Seed uint64
	// Register is called once per device with its id and secret before it
	// connects (the registry and the broker's credentials).
	Register func(ctx context.Context, id, secret string) error
	// ProvisionKEK, when set, gives every device a fresh key-encryption
	// key for encrypted images: it is called once per device, after
	// Register, with the key (to store at the publisher) and returns the
	// key id the publisher names it by. The key goes into the device file
	// (the secure element), from which the agent's Keys come.
	ProvisionKEK func(ctx context.Context, id string, kek []byte) (kid string, err error)
	// Logger receives the agents' logs. Default slog.Default().
	Logger *slog.Logger
	// ImageURL, when set, is the publisher's image URL prefix
	// ("https://host:port/images/"): each device sends its id and secret
	// as HTTP basic auth to the HTTP sources under it, as the
	// publisher's default image access policy asks (deviceagent.HTTPAuth).
	ImageURL string
	// Agent edits each agent's configuration before New (tuning, hooks).
	Agent func(*deviceagent.Config)
	// MemFlash keeps each device's flash in memory instead of a sparse
	// file (fast, but the fleet needs MaxImage*3 bytes of RAM per device
	// and `firmcast boot inspect` cannot read it).
	MemFlash bool
	// Parallel bounds concurrent device preparation and connection.
	// Default 16.
	Parallel int
	// UpTimeout bounds how long Run waits for the devices to come up
	// (connected and subscribed). Default 5 minutes.
	UpTimeout time.Duration
	// Loss is the fraction of chunks (and parity chunks) each device
	// drops at its receive path, independently per device and chunk
	// (seeded by Seed and the device), as if the broker had lost them:
	// chunk tables, markers,
	// notices and replies are never dropped. 0 (default) drops nothing.
	Loss float64
	// Tally, when set, sums what the devices' broker sources saw on their
	// receive paths (chunks shed, parity refused, chunks rebuilt,
	// requests, summaries suppressed).
	Tally *fetcher.Tally
	// BootsAtOnce bounds how many simulated devices run their bootloader
	// at once (deviceagent.Config.BootGate). A bootloader hashes the
	// candidate and copies two images; hundreds at once would take the
	// host's few cores from the devices still downloading, which real
	// devices, each with its own CPU, never do. 0: one (the default);
	// negative: no bound.
	BootsAtOnce int
	// HoldBoots holds every device's reboot until each device of the
	// fleet has staged its candidate or ended (failed, skipped): the
	// installs, bounded by BootsAtOnce, then run one after another
	// without taking the host's cores from the downloads still going
	// (firmcast bench --hold-boots). Real devices, each with its own CPU,
	// install beside the others' downloads at no cost to them; on a host
	// that simulates hundreds, the bench's staged time would otherwise
	// count other devices' installs. Only for campaigns of one phase: a
	// later phase waits for confirmations, which come after the boots.
	HoldBoots bool
}

// Device is one simulated device.
type Device struct {
	ID string
	// Dir holds flash (the flash file), flash.device.json (what `firmcast
	// boot inspect --flash` needs) and state/ (the agent's state).
	Dir string
	// FailHealth: this device's self-test fails.
	FailHealth bool

	secret string
	key    []byte
	kek    []byte // key-encryption key (ProvisionKEK), in the device file
	kid    string
	flash  *bootctl.Flash
	boot   *bootctl.Device
	// factory is the image the device runs from the factory.
	factory []byte
	// stage and stageFlash are the bootloader stage (FleetConfig.Bootloader).
	stage      *bootctl.Device
	stageFlash *bootctl.Flash
	agent      *deviceagent.Agent
	tr         broker.Transport

	state  atomic.Int32 // schemas.State, from OnState
	rx     atomic.Int64 // payload bytes received
	staged atomic.Int64 // unix ns when first staged
	// settled: counted in Fleet.settled (staged or ended).
	settled atomic.Bool
	done    atomic.Int64  // unix ns when a terminal state was reached
	subbed  chan struct{} // closed once the notice subscription is up
	once    sync.Once

	mu      sync.Mutex
	downErr error // why the device did not come up, or why its agent stopped
}

// setDown records why the device is not running.
func (d *Device) setDown(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.downErr == nil {
		d.downErr = err
	}
}

// Down returns why the device did not come up or why its agent stopped
// (nil while it runs).
func (d *Device) Down() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.downErr
}

// FlashPath is the device's flash file.
func (d *Device) FlashPath() string { return filepath.Join(d.Dir, "flash") }

// Fleet is a set of simulated devices. Build it with NewFleet, then Run.
type Fleet struct {
	cfg   FleetConfig
	boots chan struct{} // tokens of BootsAtOnce; nil: no bound
	// settled counts devices staged or ended; allSettled is closed when
	// it reaches len(Devices) (HoldBoots).
	settled    atomic.Int64
	allSettled chan struct{}
	Devices    []*Device
	geom       bootctl.Geometry
	layout     bootctl.Layout
	fdigest    [32]byte
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

// NewFleet prepares the devices: directories, flash files with the
// factory image installed and confirmed, credentials registered. It runs
// Config.Parallel devices at a time.
func NewFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	if cfg.Devices <= 0 {
		return nil, fmt.Errorf("fleet: %d devices, want at least 1", cfg.Devices)
	}
	if cfg.FleetSize == 0 {
		cfg.FleetSize = cfg.First + cfg.Devices
	}
	if cfg.First < 0 || cfg.First+cfg.Devices > cfg.FleetSize {
		return nil, fmt.Errorf("fleet: devices %d..%d of a fleet of %d", cfg.First+1, cfg.First+cfg.Devices, cfg.FleetSize)
	}
	if cfg.Dir == "" || len(cfg.Factory) == 0 || len(cfg.Trust) == 0 || cfg.Topics.Root() == "" {
		return nil, errors.New("fleet: config needs Dir, Factory, Trust and Topics")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "dev"
	}
	if cfg.Class == "" {
		cfg.Class = "sim"
	}
	if cfg.FactoryVersion == 0 {
		cfg.FactoryVersion = 1
	}
	cfg.MaxImage = max(cfg.MaxImage, len(cfg.Factory))
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.UpTimeout <= 0 {
		cfg.UpTimeout = 5 * time.Minute
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 16
	}
	region := (cfg.MaxImage+SectorSize-1)/SectorSize + 1
	l := bootctl.DefaultLayout(bootSectors, 2, region)
	g := bootctl.Geometry{SectorSize: SectorSize, Sectors: l.Sectors(), WriteAlign: WriteAlign}
	if err := l.Validate(g); err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, geom: g, layout: l, fdigest: sha256.Sum256(cfg.Factory), allSettled: make(chan struct{})}
	if cfg.BootsAtOnce >= 0 {
		f.boots = make(chan struct{}, max(cfg.BootsAtOnce, 1))
	}
	rng := rand.New(rand.NewChaCha8(seed32(cfg.Seed)))
	failing := int(float64(cfg.FleetSize)*cfg.FailRate + 0.5)
	perm := rng.Perm(cfg.FleetSize)[cfg.First:]
	for i := range cfg.Devices {
		id := fmt.Sprintf("%s-%04d", cfg.Prefix, cfg.First+i+1)
		d := &Device{ID: id, Dir: filepath.Join(cfg.Dir, id), subbed: make(chan struct{})}
		// Keys and secrets are random, never derived from the seed: a
		// simulated fleet may run against a real server and broker.
		d.key = make([]byte, 32)
		var sec [16]byte
		if _, err := crand.Read(d.key); err != nil {
			return nil, err
		}
		if _, err := crand.Read(sec[:]); err != nil {
			return nil, err
		}
		d.secret = hex.EncodeToString(sec[:])
		d.FailHealth = perm[i] < failing
		d.factory = cfg.Factory
		if cfg.FactoryOf != nil {
			d.factory = cfg.FactoryOf(i)
		}
		f.Devices = append(f.Devices, d)
	}
	err := f.each(ctx, func(ctx context.Context, d *Device) error {
		if err := f.prepare(ctx, d); err != nil {
			return fmt.Errorf("fleet: device %s: %w", d.ID, err)
		}
		if cfg.Register != nil {
			if err := cfg.Register(ctx, d.ID, d.secret); err != nil {
				return fmt.Errorf("fleet: register %s: %w", d.ID, err)
			}
		}
		if cfg.ProvisionKEK != nil {
			if err := f.provisionKEK(ctx, d); err != nil {
				return fmt.Errorf("fleet: device key of %s: %w", d.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	// Installed: the fleet holds no factory image from now on (an image
	// per version for the campaign's length, in a bench counted against
	// the devices' memory).
	for _, d := range f.Devices {
		d.factory = nil
	}
	f.cfg.Factory, f.cfg.FactoryOf = nil, nil
	return f, nil
}

// each runs fn for every device, Parallel at a time, and returns the
// first error.
func (f *Fleet) each(ctx context.Context, fn func(context.Context, *Device) error) error {
	return forEachLimit(ctx, len(f.Devices), f.cfg.Parallel, func(ctx context.Context, i int) error {
		return fn(ctx, f.Devices[i])
	})
}

// forEachLimit runs fn for i in [0, n), at most limit at a time; the
// first error cancels the rest and is returned.
func forEachLimit(ctx context.Context, n, limit int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// prepare creates the device's flash and installs the factory image the
// way a production line would: stage, boot (install), confirm.
func (f *Fleet) prepare(ctx context.Context, d *Device) error {
	if err := os.MkdirAll(filepath.Join(d.Dir, "state"), 0o700); err != nil {
		return err
	}
	// The device file `firmcast boot` and firmcast-agent open; without
	// fsync, like the agents' state (a fleet is thousands of devices).
	if err := f.writeDeviceFile(d); err != nil {
		return err
	}
	var fl *bootctl.Flash
	var err error
	if f.cfg.MemFlash {
		fl, err = bootctl.NewMemFlash(f.geom)
	} else {
		fl, err = bootctl.CreateFileFlash(d.FlashPath(), f.geom)
	}
	if err != nil {
		return err
	}
	d.flash = fl
	if d.boot, err = bootctl.Open(fl, f.layout, bootctl.RootOfTrust{DeviceKey: d.key}, bootctl.WithTrialBoots(trialBoots)); err != nil {
		return err
	}
	if f.cfg.Bootloader != nil {
		if d.stageFlash, err = bootctl.NewMemFlash(f.geom); err != nil {
			return err
		}
		if d.stage, err = bootctl.Open(d.stageFlash, f.layout, bootctl.RootOfTrust{DeviceKey: d.key}, bootctl.WithTrialBoots(trialBoots)); err != nil {
			return err
		}
		if err := factoryInstall(ctx, d.stage, f.cfg.Bootloader, 1, "factory"); err != nil {
			return fmt.Errorf("bootloader stage: %w", err)
		}
	}
	slot, err := d.boot.FreeSlot()
	if err != nil {
		return err
	}
	cand, err := d.boot.OpenCandidate(ctx, slot, uint64(len(d.factory)))
	if err != nil {
		return err
	}
	if _, err := cand.WriteAt(d.factory, 0); err != nil {
		return err
	}
	digest := sha256.Sum256(d.factory)
	info := bootctl.CandidateInfo{Version: f.cfg.FactoryVersion, SecurityCounter: f.cfg.FactoryVersion, Digest: digest, Campaign: "factory"}
	if err := cand.Commit(ctx, info); err != nil {
		return err
	}
	dec, err := d.boot.Boot(ctx)
	if err != nil {
		return err
	}
	if !dec.Booted || dec.Digest != digest {
		return fmt.Errorf("factory image did not boot: %s %s", dec.Action, dec.Reason)
	}
	return d.boot.Confirm()
}

// StartFleet prepares the devices (NewFleet) and runs them (Run) with
// ctx. When Run fails it stops the agents that started and closes the
// flash files before it returns the error; otherwise the caller stops
// the fleet (Stop) and then closes it (Close).
func StartFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	f, err := NewFleet(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := f.Run(ctx); err != nil {
		f.Stop()
		f.Close()
		return nil, err
	}
	return f, nil
}

// Run connects every device with its own credentials and starts its
// agent; it returns once every agent has subscribed to its notices, or
// with the first connection error. The agents run until Stop (or until
// ctx ends).
func (f *Fleet) Run(ctx context.Context) error {
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.stop = cancel
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-life.Done():
		}
	}()
	// Every device gets its chance: one that does not come up does not
	// stop the others; the error names them all.
	up, upCancel := context.WithTimeout(ctx, f.cfg.UpTimeout)
	defer upCancel()
	_ = f.each(up, func(cctx context.Context, d *Device) error {
		if err := f.start(life, cctx, d, &f.wg); err != nil {
			d.setDown(fmt.Errorf("did not come up: %w", err))
			return nil
		}
		select {
		case <-d.subbed:
		case <-cctx.Done():
			d.setDown(fmt.Errorf("not subscribed to its notices: %w", cctx.Err()))
		}
		return nil
	})
	if err := f.downError("did not come up"); err != nil {
		return err
	}
	return ctx.Err()
}

// ErrDevicesDown: devices of the fleet did not come up, or their agents
// stopped.
var ErrDevicesDown = errors.New("fleet: devices down")

// downError lists the devices that are down (at most 10 by name), or nil.
func (f *Fleet) downError(what string) error {
	var names []string
	n := 0
	for _, d := range f.Devices {
		if err := d.Down(); err != nil {
			n++
			if len(names) < 10 {
				names = append(names, fmt.Sprintf("%s (%v)", d.ID, err))
			}
		}
	}
	if n == 0 {
		return nil
	}
	more := ""
	if n > len(names) {
		more = fmt.Sprintf(", and %d more", n-len(names))
	}
	return fmt.Errorf("%w: %d of %d devices %s: %s%s", ErrDevicesDown, n, len(f.Devices), what, strings.Join(names, "; "), more)
}

// Stop stops the agents and waits for them; the devices' bootctl state
// and agent state can then be read. Safe to call more than once.
func (f *Fleet) Stop() {
	if f.stop != nil {
		f.stop()
	}
	f.wg.Wait()
}

// settle counts d, once, as staged or ended, and opens the held boots
// when every device is (HoldBoots).
func (f *Fleet) settle(d *Device) {
	if d.settled.Swap(true) {
		return
	}
	if f.settled.Add(1) == int64(len(f.Devices)) {
		close(f.allSettled)
	}
}

// bootGate is the devices' deviceagent.Config.BootGate: a token of
// f.boots for each bootloader run.
func (f *Fleet) bootGate(ctx context.Context) (func(), error) {
	if f.cfg.HoldBoots {
		select {
		case <-f.allSettled:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.boots == nil {
		return func() {}, nil
	}
	select {
	case f.boots <- struct{}{}:
		return func() { <-f.boots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *Fleet) start(life, ctx context.Context, d *Device, wg *sync.WaitGroup) error {
	tr, err := broker.Dial(ctx, broker.Config{
		URL: f.cfg.MQTTURL, Username: d.ID, Password: d.secret, ClientID: d.ID, Topics: f.cfg.Topics, Logger: f.cfg.Logger,
		ReceiveMaximum: broker.DeviceReceiveMaximum,
	})
	if err != nil {
		return err
	}
	d.tr = tr
	ac := deviceagent.Config{
		DeviceID: d.ID, Class: f.cfg.Class, Transport: newCounting(tr, d, f.cfg.Loss, f.cfg.Seed), Topics: f.cfg.Topics,
		Identity: suit.Identity{VendorID: f.cfg.VendorID, ClassIDs: [][]byte{f.cfg.ClassID}, DeviceID: []byte(d.ID)},
		Boot:     d.boot, StateDir: filepath.Join(d.Dir, "state"), Trust: f.cfg.Trust, Logger: f.cfg.Logger,
		RetryBase: 500 * time.Millisecond, Keys: d.keys(), FetchTally: f.cfg.Tally, BootGate: f.bootGate,
		OnState: func(r deviceagent.Record) {
			d.state.Store(int32(r.State))
			now := time.Now().UnixNano()
			switch r.State {
			case schemas.StateStaged:
				d.staged.CompareAndSwap(0, now)
				f.settle(d)
			case schemas.StateConfirmed, schemas.StateRolledBack, schemas.StateFailed, schemas.StateSkipped:
				d.done.CompareAndSwap(0, now)
				f.settle(d)
			}
		},
	}
	if d.stage != nil {
		ac.Stages = []deviceagent.Stage{{Component: StageComponent, Boot: d.stage}}
	}
	if f.cfg.ImageURL != "" {
		ac.HTTPAuth = &deviceagent.HTTPAuth{URLPrefix: f.cfg.ImageURL, Username: d.ID, Password: d.secret}
	}
	if d.FailHealth {
		ac.SelfTest = func(context.Context) error { return ErrSelfTest }
	}
	if f.cfg.Agent != nil {
		f.cfg.Agent(&ac)
	}
	a, err := deviceagent.New(ac)
	if err != nil {
		return err
	}
	d.agent = a
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.Run(life); err != nil && life.Err() == nil {
			d.setDown(fmt.Errorf("agent stopped: %w", err))
			f.cfg.Logger.Error("agent stopped", "device", d.ID, "err", err)
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(life), 5*time.Second)
		defer cancel()
		_ = tr.Close(cctx)
	}()
	return nil
}

// Close closes the devices' flash files. Call it after the agents stopped.
func (f *Fleet) Close() {
	for _, d := range f.Devices {
		if d.flash != nil {
			_ = d.flash.Close()
		}
		if d.stageFlash != nil {
			_ = d.stageFlash.Close()
		}
	}
}

// StageComponent is the SUIT component of the devices' bootloader stage
// (FleetConfig.Bootloader).
const StageComponent = "bootloader"

// factoryInstall installs img into d as version v, boots and confirms it.
func factoryInstall(ctx context.Context, d *bootctl.Device, img []byte, v uint64, campaign string) error {
	digest := sha256.Sum256(img)
	if err := d.Stage(ctx, 0, img, bootctl.CandidateInfo{Version: v, SecurityCounter: v, Digest: digest, Campaign: campaign}); err != nil {
		return err
	}
	dec, err := d.Boot(ctx)
	if err != nil {
		return err
	}
	if !dec.Booted || dec.Digest != digest {
		return fmt.Errorf("factory image did not boot: %s %s", dec.Action, dec.Reason)
	}
	return d.Confirm()
}

// Stage returns the bootloader stage's status (FleetConfig.Bootloader).
func (d *Device) Stage() (bootctl.Status, error) {
	if d.stage == nil {
		return bootctl.Status{}, errors.New("fleet: the device has no bootloader stage")
	}
	return d.stage.Status()
}

// Active returns the application's status.
func (d *Device) Active() (bootctl.Status, error) { return d.boot.Status() }

// FactoryDigest is the SHA-256 of the factory image.
func (f *Fleet) FactoryDigest() [32]byte { return f.fdigest }

// counting is a device's transport that counts the payload bytes it
// receives, tells the fleet when the notice subscription is up, and drops
// a fraction loss of the chunks it receives (Config.Loss).
type counting struct {
	broker.Transport
	d    *Device
	loss float64
	mu   sync.Mutex // guards rng: the subscriptions' handlers run apart
	rng  *rand.Rand
	lost atomic.Int64
}

func newCounting(tr broker.Transport, d *Device, loss float64, seed uint64) *counting {
	h := fnv.New64a()
	h.Write([]byte(d.ID))
	return &counting{Transport: tr, d: d, loss: loss, rng: rand.New(rand.NewPCG(seed, h.Sum64()))}
}

// drop decides whether the chunk or parity chunk message b is lost.
func (c *counting) drop(b []byte) bool {
	if c.loss <= 0 || !(schemas.IsChunk(b) || schemas.IsParityChunk(b)) {
		return false
	}
	c.mu.Lock()
	lose := c.rng.Float64() < c.loss
	c.mu.Unlock()
	if lose {
		c.lost.Add(1)
	}
	return lose
}

func (c *counting) Subscribe(ctx context.Context, filter schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	s, err := c.Transport.Subscribe(ctx, filter, func(ctx context.Context, m broker.Message) {
		c.d.rx.Add(int64(len(m.Payload)))
		if o.Family == broker.FamilyChunk && c.drop(m.Payload) {
			return
		}
		h(ctx, m)
	}, o)
	if err == nil && o.Family == broker.FamilyNotice {
		c.d.once.Do(func() { close(c.d.subbed) })
	}
	return s, err
}

func seed32(s uint64) [32]byte {
	var b [32]byte
	for i := range 4 {
		v := s*0x9e3779b97f4a7c15 + uint64(i)*0xbf58476d1ce4e5b9
		for j := range 8 {
			b[i*8+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// writeDeviceFile writes the device file `firmcast boot` and
// firmcast-agent open (without fsync, like the agents' state: a fleet is
// thousands of devices).
func (f *Fleet) writeDeviceFile(d *Device) error {
	file := devicefile.File{Geometry: f.geom, Layout: f.layout, TrialBoots: trialBoots, DeviceKey: hex.EncodeToString(d.key)}
	if d.kek != nil {
		file.KEK, file.KEKID = hex.EncodeToString(d.kek), d.kid
	}
	df, err := devicefile.Encode(file)
	if err != nil {
		return err
	}
	return atomicfile.WriteFileNoSync(devicefile.Path(d.FlashPath()), df, 0o600)
}

// provisionKEK draws the device's key-encryption key, has the publisher
// store it (ProvisionKEK) and puts it in the device file.
func (f *Fleet) provisionKEK(ctx context.Context, d *Device) error {
	kek := make([]byte, 16)
	if _, err := crand.Read(kek); err != nil {
		return err
	}
	kid, err := f.cfg.ProvisionKEK(ctx, d.ID, kek)
	if err != nil {
		return err
	}
	d.kek, d.kid = kek, kid
	return f.writeDeviceFile(d)
}

// keys is the agent's content-key unwrapper: the device file's KEK.
func (d *Device) keys() suit.KeyUnwrapper {
	if d.kek == nil {
		return nil
	}
	return suit.KEK{KeyID: []byte(d.kid), Key: d.kek}
}
