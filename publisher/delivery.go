package publisher

import (
	"context"
	"log/slog"
	"sync"
)

// Chunk delivery: how an image's chunks reach the devices of its
// campaigns. delivery owns all of it, and the Publisher holds one.
//
// Who does what:
//
//   - Waves (chunks.go): the leader's tick asks maybeWave (and
//     maybeDeltaWaves, delta.go) whether a broadcast wave of a campaign's
//     image is due; wave sends the image's carousel on its chunk topic,
//     pass by pass, with chunk table copies (castTable) and an end marker
//     per pass (endWave), paced by the broker's echo (followEcho) and by
//     the designated receivers' progress (wavepace.go, observeProgress).
//   - Requests (requests.go): handleChunkRequest checks who asks (a device
//     notified in a running or paused campaign of the image, on its own
//     topic, within its rate and byte budget: admit, charge, affordable)
//     and queues what passes for chunkServer.
//   - Repair (chunks.go): chunkServer answers a request at once (serve) or
//     adds it to the image's repair batch (batch), flushed RepairWindow
//     later (a batch that began while this instance's wave of the image
//     flows: RepairWindow after the wave's end, flowing), one round per
//     image at a time (flusher, flushRepair): chunks
//     enough requesters lack are broadcast again, the rest unicast; a
//     coded image's batch is repaired with fresh parity (repairCoded,
//     announce, parityLog), kept in parityCache (paritycache.go).
//   - Tables (tables.go): each device is sent the table of its delivery
//     protocol (tableFor, plainTableBytes), by unicast (sendTable) or in
//     the wave it listens to (tableByWave).
//   - Egress (pacer, egressCounters in chunks.go): every chunk-family
//     message goes through send, which bounds what is in flight and the
//     byte rate, and counts it.
//
// delivery reads images through imageSource and asks about campaigns
// through campaignSource; the Publisher provides both (deliveryHost), and
// its config, logger and metrics. Its goroutines (waves started by the
// tick, repair rounds) run under the contexts they were started with;
// wait blocks until they have ended.
type delivery struct {
	cfg    Config
	log    *slog.Logger
	met    *metrics
	images imageSource
	camps  campaignSource

	// parity keeps coded repair's parity chunks (paritycache.go).
	parity *parityCache
	pace   *pacer
	// egress counts chunk bytes sent (read by Publisher.Egress).
	egress egressCounters
	// chunkQ holds the admitted requests for the chunk servers.
	chunkQ chan queuedRequest

	waveMu sync.Mutex
	waves  map[string]*waveState // by image digest

	repairMu sync.Mutex
	repairs  map[string]*repairBatch // by image digest
	// flushing serialises each image's repair rounds (flusher).
	flushing map[string]chan struct{}

	reqs requesters // per-device chunk request accounts (requests.go)

	// recheck asks the leader's loop for a tick soon (Publisher.kick):
	// a held wave looks again once its hold may be over (armRecheck),
	// not at the next TickInterval. Nil: ticks only.
	recheck func()

	wg sync.WaitGroup // waves started by maybeWave, repair rounds
}

// imageSource is the image store as delivery reads it (images.go,
// imageread.go).
type imageSource interface {
	// loadImage returns the record and chunk table of the image digest
	// (ErrNotFound when none is stored).
	loadImage(ctx context.Context, digest string) (*imageData, error)
	// readChunk reads chunk i of d, checked against its table.
	readChunk(ctx context.Context, d *imageData, i int) ([]byte, error)
	// newChunkReader returns a reader of d's chunks with reads ahead.
	newChunkReader(ctx context.Context, d *imageData, ahead int) *chunkReader
}

// campaignSource answers delivery's questions about campaigns and their
// devices (the index, state.go; owner.go).
type campaignSource interface {
	// campaignIDs returns the known campaigns' IDs, in no order.
	campaignIDs() []string
	// campaign returns campaign id, false when it is not known.
	campaign(id string) (Campaign, bool)
	// counts returns the campaign's device counts by bucket (see bucket).
	counts(id string) (map[string]uint64, uint64)
	// devs returns the campaign's device states this instance holds.
	devs(id string) []devEntry
	// notifiedIn reports whether dev has been notified in the campaign.
	notifiedIn(campaign, dev string) bool
}

// deliveryHost is what the Publisher provides delivery.
type deliveryHost interface {
	imageSource
	campaignSource
}

// newDelivery returns the chunk delivery of a publisher of config cfg
// (with its defaults applied), which reads from host.
func newDelivery(cfg Config, log *slog.Logger, met *metrics, host deliveryHost) *delivery {
	return &delivery{
		cfg: cfg, log: log, met: met, images: host, camps: host,
		parity:  newParityCache(parityCacheBytes),
		pace:    newPacer(cfg),
		chunkQ:  make(chan queuedRequest, 1024),
		waves:   map[string]*waveState{},
		repairs: map[string]*repairBatch{},
	}
}

// wait blocks until the waves and repair rounds delivery started have
// ended (their contexts ended, or they were sent).
func (dl *delivery) wait() { dl.wg.Wait() }

// forget drops what delivery keeps of image (deleted): its cached parity.
func (dl *delivery) forget(image string) { dl.parity.forget(image) }

// publisherHost is the Publisher as delivery's host: its image store
// (images.go) and its campaign index (state.go), with the notified check
// that may read the KV (owner.go). It forwards these and nothing else.
type publisherHost struct{ p *Publisher }

var _ deliveryHost = publisherHost{}

func (h publisherHost) loadImage(ctx context.Context, digest string) (*imageData, error) {
	return h.p.loadImage(ctx, digest)
}

func (h publisherHost) readChunk(ctx context.Context, d *imageData, i int) ([]byte, error) {
	return h.p.readChunk(ctx, d, i)
}

func (h publisherHost) newChunkReader(ctx context.Context, d *imageData, ahead int) *chunkReader {
	return h.p.newChunkReader(ctx, d, ahead)
}

func (h publisherHost) campaignIDs() []string                        { return h.p.idx.campaignIDs() }
func (h publisherHost) campaign(id string) (Campaign, bool)          { return h.p.idx.campaign(id) }
func (h publisherHost) counts(id string) (map[string]uint64, uint64) { return h.p.idx.counts(id) }
func (h publisherHost) devs(id string) []devEntry                    { return h.p.idx.devs(id) }
func (h publisherHost) notifiedIn(campaign, dev string) bool         { return h.p.notifiedIn(campaign, dev) }
