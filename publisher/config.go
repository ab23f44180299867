package publisher

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Clock tells the time. Campaign deadlines, no-progress timeouts and leases
// are judged by it, so tests inject a fake one.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// FailAction is what a campaign does when its failure threshold is reached.
type FailAction string

// Fail actions.
const (
	FailAbort FailAction = "abort"
	FailPause FailAction = "pause"
)

// Config configures a Publisher. It is taken by value; New never modifies
// the caller's copy. Zero fields take the default stated.
type Config struct {
	// JetStream is the handle on the NATS server holding all state. Required.
	JetStream jetstream.JetStream
	// Transport carries device traffic (notices, reports, chunks) and the
	// request/reply API. Required.
	Transport broker.Transport
	// Topics names every topic; the zero value means schemas.DefaultRoot.
	Topics schemas.Topics
	// Namespace prefixes every JetStream bucket and stream name, so several
	// installations (or tests) share one NATS. Default "firmcast".
	Namespace string
	// Replicas is the JetStream replication factor of every bucket and
	// stream the publisher creates (3 on a three-node cluster). Default 1.
	Replicas int
	// Partitions is the number of buckets the per-device campaign state
	// is spread over by device (partition.go), so that report writes go
	// to as many stream leaders. It is fixed for a namespace by the first
	// publisher that starts there (others with another count refuse to
	// start); an installation from before partitioning has one. With more
	// than one, each partition is owned by one running instance at a time
	// (a lease; owner.go), whose index alone holds its devices and which
	// does their per-device work; the leader judges campaigns on the
	// partitions' count records. Default 1: one bucket, <ns>_campdev,
	// every instance's index holding every device. At most MaxPartitions.
	Partitions int
	// Instance names this publisher in leases and logs. Default: random.
	Instance string
	// Signer signs manifests for campaigns created without an envelope.
	// Nil: only campaigns with an already signed envelope can be created.
	Signer ManifestSigner
	// NoticeSigners sign every notice: the campaign authority's statement
	// that this campaign sends this envelope to this device (or class),
	// separate from the firmware signature inside the envelope (see
	// docs/SECURITY.md, "Campaign binding"). Devices check it with their
	// notice trust anchors before they act on anything in a notice.
	// Default: the signers of Signer when it was made by SUITSigner. With
	// neither, no campaign can be created (ErrNoSigner).
	NoticeSigners []suit.Signer
	// KeyCustody is the publisher's key-custody key for encrypted images
	// (16 or 32 bytes): device key-encryption keys are stored wrapped
	// with it, and each encrypted image's content key is wrapped with it
	// into its manifests (see encrypt.go). Nil: no encrypted images.
	KeyCustody []byte
	// VendorID and ClassID (16-byte UUIDs) go into server-signed manifests.
	VendorID, ClassID []byte
	// Clock tells the time. Default: the system clock.
	Clock Clock
	// Logger logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics. Default: a private
	// registry served on /metrics.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics when Registerer is set.
	Gatherer prometheus.Gatherer

	// ChunkSize of uploaded images. Default 16 KiB.
	ChunkSize uint32
	// MaxImageSize bounds an upload. Default 64 MiB.
	MaxImageSize int64
	// DeltaSources is how many deltas a campaign the server signs offers
	// at most: from the images its targets report running, most common
	// first (see MakeDelta). Default DefaultDeltaSources; negative: none.
	DeltaSources int
	// PublicURL, when set, is the base URL devices can fetch images from
	// (GET PublicURL/images/{digest}); notices carry it as an "http" source.
	PublicURL string
	// ImageAccess is who may download images over HTTP (GET
	// /images/{digest} and its chunk table). Default ImageAccessKey: an
	// API key, or a registered device's id and secret.
	ImageAccess ImageAccess

	// TickInterval is how often the leader runs campaign work. Default 1s.
	TickInterval time.Duration
	// LeaseTTL is how long a leader lease lasts unrenewed. Default 10s.
	LeaseTTL time.Duration
	// MinPhaseDevices is the least number of devices a phase adds, however
	// small its percentage of the fleet. Default 3.
	MinPhaseDevices int
	// MaxDownloading caps devices notified but not yet finished; the next
	// ones are notified as earlier ones finish. With Partitions above 1
	// each partition's owner keeps its share, in proportion to its
	// devices among the opened ones and rounded up, so the cap can be
	// passed by up to Partitions-1. Default 500.
	MaxDownloading int
	// StartWindow is the random start delay window carried in notices.
	// Default 30s; negative means none.
	StartWindow time.Duration
	// NoProgress is how long a notified device may go without a report
	// before it is marked timed out. Default 30m.
	NoProgress time.Duration
	// DeviceDeadline is how long a notified device may take to reach an
	// outcome (confirmed, failed, rolled back, skipped), however often it
	// reports (a device deferring the install keeps reporting), before it
	// is marked timed out; time the campaign spends paused does not count.
	// A timed-out device that reports an outcome later is still counted
	// with it. Default 24h (a day's maintenance window).
	DeviceDeadline time.Duration
	// Reconcile is how long a notified device may stay silent before the
	// leader sends its notice again: a device that already finished
	// answers with its outcome (a report lost in a failover is recovered),
	// one still working ignores it. At most once per Reconcile per device.
	// Default 1m.
	Reconcile time.Duration
	// DefaultSuccessPermille applies when a spec leaves it zero. Default 900.
	DefaultSuccessPermille uint16
	// DefaultFailPermille applies when a spec leaves it zero. Default 100.
	DefaultFailPermille uint16
	// FailAction on reaching the failure threshold. Default FailAbort.
	FailAction FailAction

	// BroadcastMin is the number of devices downloading an image from
	// which the leader sends broadcast waves. Default 2.
	BroadcastMin int
	// WaveInterval is the least time between the starts of two broadcast
	// waves of one image. Default 30s.
	WaveInterval time.Duration
	// WaveHold is the longest a due wave is held back so that the devices
	// it is for listen from its first chunk: until none of the campaign's
	// notified devices is still pending and every downloading one has
	// been sent the chunk table, plus WaveSettle. Chunk requests that
	// arrive meanwhile are left to the wave, and later waves are only for
	// devices that joined since the last one started. Keep it well under
	// the devices' stall limit (fetcher: ListenFirst + MaxIdle*Idle, 7s by
	// default). Default 3s; negative means no hold (every due wave starts
	// at once, for every downloading device). It is capped at NoProgress/2,
	// so that a device waiting for a held wave is never timed out for it.
	WaveHold time.Duration
	// WaveSettle is the time left after the last chunk table was sent
	// before a held wave starts: the device's subscription to the
	// broadcast topic (one round trip to the broker). Default 250ms.
	WaveSettle time.Duration
	// WaveEcho paces broadcast waves at the broker's fan-out: while a wave
	// runs the publisher subscribes to the image's chunk topic, and sends
	// chunk i only once chunk i-WaveEcho came back (what came back, the
	// broker has handed to every subscriber). A broker that echoes nothing
	// for 2s leaves the wave unpaced. 0: no pacing. Default 0.
	WaveEcho int
	// WaveBurst is how many chunks an echo-paced wave sends at a time
	// (at most WaveEcho): it waits until at most WaveEcho-WaveBurst are
	// in flight, then sends WaveBurst back to back, so that the broker
	// writes them to each subscriber together. Sent one at a time, as
	// each echo came back, a NATS server wrote each chunk to each
	// subscriber on its own: 13.0 of its core-seconds for a 500-device
	// campaign of 8 MiB, against 9.6 to 12.4 in bursts of 8 (a raw
	// fan-out's: 8.7 to 10.1; docs/BENCHMARKS.md). In bursts of 16 (six
	// runs) the devices shed 0 to 47 chunks a run, against 0 to 2,641
	// in bursts of 8 (six runs the same day), and the egress stayed at
	// most 1.037 images (1.146). Mosquitto used less CPU for a campaign
	// than for the raw fan-out already. Default 1.
	WaveBurst int
	// WaveReady is the longest a wave's first chunk waits, after its
	// first chunk table copy, for the devices it is for to report that
	// they took the table (their source decision, a downloading report):
	// chunks sent while they check and record it queue in every device's
	// receive path (see awaitReady). 0: no wait. Default 0.
	WaveReady time.Duration
	// WavePace is how often a wave in flight revises its rate from the
	// download progress the devices report while it flows, so that it
	// sends no faster than its slow devices take it (wavepace.go); it
	// needs devices that report often (deviceagent ProgressInterval of a
	// few designated receivers). Default 0: waves are not paced from
	// reports (experimental: under a machine's full load the reported
	// rates are noisy enough to hold waves back, docs/BENCHMARKS.md).
	WavePace time.Duration
	// RepairWindow batches chunk requests: after it, chunks asked for by at
	// least RepairBroadcastMin devices are broadcast, the rest sent to each
	// requester. Zero answers each request at once (pure request mode).
	// Default 0.
	RepairWindow time.Duration
	// InTransit is how long a broadcast chunk may still be on its way to
	// devices through the broker (queued for slow subscribers): a repair
	// batch leaves out the chunks broadcast within InTransit before its
	// first request, or since; a device that lost one asks again (after
	// its fetcher's Idle). Default 0: only those broadcast since the
	// batch's first request; about 1s suits a loaded broker.
	InTransit time.Duration
	// RepairBroadcastMin, default 2.
	RepairBroadcastMin int
	// CodedRepair gives images uploaded from now on a coded chunk table
	// (internal/blockcode: blocks of CodedBlock chunks, CodedParity
	// parity chunks committed per block), and
	// repairs their waves with parity: a repair batch broadcasts, per
	// block, as many fresh parity chunks as the requester lacking most in
	// it lacks (blocks interleaved); chunks a block's spent parity cannot
	// cover go the uncoded way. Such an image is served with two tables
	// (tables.go): the coded one to devices of delivery protocol 2, the
	// plain one (the same chunk hashes) to agents of protocol 1, which are
	// repaired by chunks in the same campaign and waves; a manifest the
	// server signs commits both digests (the plain one where protocol 1
	// agents read it). `firmcast serve` turns it on unless
	// --coded-repair=false. Default false here, so that embedders and
	// tests opt in (a decode's cost grows as K^3).
	CodedRepair bool
	// CodedBlock and CodedParity are the block size K and the parity
	// chunks per block P of coded tables (K+P <= 256). Defaults
	// blockcode.DefaultBlock (128) and blockcode.DefaultParity (32),
	// chosen by measurement (docs/BENCHMARKS.md, "Coded repair"); a
	// device's decode time and memory grow with K.
	CodedBlock, CodedParity int
	// MaxBytesPerSecond paces chunk egress (waves, repairs and answers
	// together); 0 means unlimited. Default 0.
	MaxBytesPerSecond int64
	// MaxInFlightBytes caps chunk bytes handed to the transport and not yet
	// acknowledged by it. Default 4 MiB.
	MaxInFlightBytes int64
	// DeviceRequestRate is how many chunk requests per second one device
	// may make (a token bucket of DeviceRequestBurst); the rest are
	// refused ("rate-limited") and the device asks again after its idle
	// period. Default 20.
	DeviceRequestRate float64
	// DeviceRequestBurst is the token bucket's size. Default
	// 2*DeviceRequestRate, at least 1.
	DeviceRequestBurst int
	// DeviceImageBudget caps what one device can make this instance send
	// by request in one campaign, as a multiple of the image (chunk table
	// included): chunks and tables sent to it, and re-broadcast chunks it
	// asked for. Past it, its requests are refused ("over-budget") for the
	// rest of the campaign; broadcast waves still reach it. Default 4.
	DeviceImageBudget float64

	// ReservedNames are user names of the deployment's backend broker
	// identities (the credentials file's backend accounts): no device may
	// be registered under one, nor under a built-in reserved name (see
	// CheckDeviceID). Default none.
	ReservedNames []string
	// OnDeviceRemoved, when set, is called with a device's id once its
	// removal from the registry is persisted (on the instance that removed
	// it), so that the stack ends the device's live broker sessions:
	// broker.MQTTServer.Disconnect and broker.NATSServer.Disconnect for the
	// embedded brokers; for a mosquitto fed from the registry, rewrite its
	// password file (MosquittoPasswordLines) and send it SIGHUP. It must
	// not block for long. Default nil.
	OnDeviceRemoved func(id string)
	// OnDeviceAdded, when set, is called with a device's id once its
	// registration is persisted (on the instance that added it), so that
	// a broker fed from the registry learns it: for a mosquitto password
	// file, rewrite it and send mosquitto SIGHUP. It must not block for
	// long. Default nil.
	OnDeviceAdded func(id string)

	// BootstrapKey, when set, is registered as an admin API key when no
	// key with its id exists (the id a fck_<id>_<secret> token names, or
	// "bootstrap"); an existing one, revoked or not, is left as it is.
	// It must hold at least 128 random bits (CheckBootstrapKey); it is
	// stored salted, like every key.
	BootstrapKey string
}

// ImageAccess is the policy of HTTP image downloads: who may read an
// image's bytes and chunk table from GET /images/{digest}.
type ImageAccess string

// Image access policies.
const (
	// ImageAccessKey lets a request through when it carries an API key
	// of any scope ("Authorization: Bearer <key>"; read is the least), or
	// the credentials of a registered device as HTTP basic auth: its id as
	// the user name and its broker secret as the password (what the
	// device's HTTP fetch source sends). Anyone else gets 401.
	ImageAccessKey ImageAccess = "key"
	// ImageAccessPublic serves images to anyone who reaches the HTTP API,
	// as a CDN would: for firmware that is not secret (firmcast does not
	// encrypt images) behind a network the operator trusts with it.
	ImageAccessPublic ImageAccess = "public"
)

// ParseImageAccess parses "key" or "public". Errors: ErrInvalid.
func ParseImageAccess(s string) (ImageAccess, error) {
	switch a := ImageAccess(s); a {
	case ImageAccessKey, ImageAccessPublic:
		return a, nil
	}
	return "", fmt.Errorf("%w: image access %q, want key or public", ErrInvalid, s)
}

func (c Config) withDefaults() (Config, error) {
	if c.JetStream == nil {
		return c, fmt.Errorf("%w: config: JetStream is required", ErrInvalid)
	}
	if c.Transport == nil {
		return c, fmt.Errorf("%w: config: Transport is required", ErrInvalid)
	}
	if c.Topics.Root() == "" {
		c.Topics = schemas.MustTopics(schemas.DefaultRoot)
	}
	if c.Namespace == "" {
		c.Namespace = "firmcast"
	}
	if !kvSafe(c.Namespace) {
		return c, fmt.Errorf("%w: config: namespace %q must be letters, digits, '-' or '_'", ErrInvalid, c.Namespace)
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Partitions <= 0 {
		c.Partitions = 1
	}
	if c.Partitions > MaxPartitions {
		return c, fmt.Errorf("%w: config: partitions %d, at most %d", ErrInvalid, c.Partitions, MaxPartitions)
	}
	if c.Instance == "" {
		c.Instance = randomID("pub")
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	c.NoticeSigners = append([]suit.Signer(nil), c.NoticeSigners...)
	if s, ok := c.Signer.(interface{ noticeSigners() []suit.Signer }); ok && len(c.NoticeSigners) == 0 {
		c.NoticeSigners = append(c.NoticeSigners, s.noticeSigners()...)
	}
	if n := len(c.KeyCustody); n != 0 && n != 16 && n != 32 {
		return c, fmt.Errorf("%w: config: key-custody key of %d bytes (want 16 or 32)", ErrInvalid, n)
	}
	c.KeyCustody = slices.Clone(c.KeyCustody)
	if len(c.NoticeSigners) > suit.MaxAuthBlocks {
		return c, fmt.Errorf("%w: config: %d notice signers, max %d", ErrInvalid, len(c.NoticeSigners), suit.MaxAuthBlocks)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	defInt := func(p *int, d int) {
		if *p <= 0 {
			*p = d
		}
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 16 << 10
	}
	if c.ChunkSize < schemas.MinChunkSize || c.ChunkSize > schemas.MaxChunkSize {
		return c, fmt.Errorf("%w: config: chunk size %d outside [%d, %d]", ErrInvalid, c.ChunkSize, schemas.MinChunkSize, schemas.MaxChunkSize)
	}
	if c.ImageAccess == "" {
		c.ImageAccess = ImageAccessKey
	}
	if _, err := ParseImageAccess(string(c.ImageAccess)); err != nil {
		return c, fmt.Errorf("%w: config: image access %q, want key or public", ErrInvalid, c.ImageAccess)
	}
	if c.MaxImageSize <= 0 {
		c.MaxImageSize = 64 << 20
	}
	def(&c.TickInterval, time.Second)
	def(&c.LeaseTTL, 10*time.Second)
	defInt(&c.MinPhaseDevices, 3)
	defInt(&c.MaxDownloading, 500)
	def(&c.StartWindow, 30*time.Second)
	def(&c.NoProgress, 30*time.Minute)
	def(&c.DeviceDeadline, 24*time.Hour)
	if c.DeviceDeadline < 0 {
		return c, fmt.Errorf("%w: config: negative device deadline %v", ErrInvalid, c.DeviceDeadline)
	}
	def(&c.Reconcile, time.Minute)
	if c.DefaultSuccessPermille == 0 {
		c.DefaultSuccessPermille = 900
	}
	if c.DefaultFailPermille == 0 {
		c.DefaultFailPermille = 100
	}
	switch c.FailAction {
	case "":
		c.FailAction = FailAbort
	case FailAbort, FailPause:
	default:
		return c, fmt.Errorf("%w: config: fail action %q, want abort or pause", ErrInvalid, c.FailAction)
	}
	defInt(&c.BroadcastMin, 2)
	def(&c.WaveInterval, 30*time.Second)
	def(&c.WaveHold, 3*time.Second)
	c.WaveHold = min(c.WaveHold, c.NoProgress/2)
	def(&c.WaveSettle, 250*time.Millisecond)
	defInt(&c.RepairBroadcastMin, 2)
	defInt(&c.CodedBlock, blockcode.DefaultBlock)
	defInt(&c.CodedParity, blockcode.DefaultParity)
	if err := blockcode.CheckParams(c.CodedBlock, c.CodedParity); err != nil {
		return c, fmt.Errorf("%w: config: %v", ErrInvalid, err)
	}
	c.InTransit = max(c.InTransit, 0)
	c.WaveEcho = max(c.WaveEcho, 0)
	c.WaveBurst = max(min(c.WaveBurst, c.WaveEcho), 1)
	c.WavePace = max(c.WavePace, 0)
	if c.MaxInFlightBytes <= 0 {
		c.MaxInFlightBytes = 4 << 20
	}
	if c.DeviceRequestRate <= 0 {
		c.DeviceRequestRate = 20
	}
	if c.DeviceRequestBurst <= 0 {
		c.DeviceRequestBurst = max(1, int(2*c.DeviceRequestRate))
	}
	if c.DeviceImageBudget <= 0 {
		c.DeviceImageBudget = 4
	}
	return c, nil
}
