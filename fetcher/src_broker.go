package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// BrokerConfig configures a BrokerSource.
type BrokerConfig struct {
	// Transport is the device's broker connection. Required. A chunk
	// request names its reply address in the transport's Dialect.
	Transport broker.Transport
	// Topics is the topic builder (root). Required.
	Topics schemas.Topics
	// Device is the device id (requester, reply topic). Required.
	Device string
	// Campaign is put into chunk requests; optional.
	Campaign string
	// Price per byte. Default 0.
	Price float64
	// Idle is how long to wait for a wanted chunk before asking again for
	// what is still missing. Default 2s.
	Idle time.Duration
	// MaxIdle is the number of consecutive idle periods without any new
	// chunk after which Fetch gives up with ErrStalled. Default 3.
	MaxIdle int
	// Queue is the most received chunks buffered between the
	// transport's handlers and the writer; beyond it arriving chunks are
	// dropped (see QueueBytes). Default QueueBytes/2048, at least 64
	// (512 at the default QueueBytes): the byte bound is the one that
	// matters, and a burst of small chunks (a summary's unicast answer)
	// must not be shed for its count. An image's fetch buffers no more
	// chunks than QueueBytes holds at its chunk size, plus 16 (its
	// buffer's slots are allocated up front: 500 devices' 512 slots
	// each, unused at 16 KiB chunks, were 10 MB of a fleet simulator's
	// heap).
	Queue int
	// QueueBytes bounds the memory of the receive path: the bytes of
	// chunks and parity chunks buffered between the transport and the
	// writer. The source's handlers run inline on the transport's
	// receiving goroutines (broker.SubscribeOptions.Inline) and only copy
	// into this buffer, so there is no second queue in front of it (one
	// of 128 KiB there, overrun whenever a loaded scheduler left its
	// goroutine waiting, shed 1.5 chunks per chunk broadcast at 200
	// devices on 2 cores). Beyond the bound an arriving chunk is
	// dropped, to be repaired later like any QoS 0 loss (counted in
	// Shed): a writer slower than the broadcast (a slow flash) costs
	// losses, not memory, at most QueueBytes plus the message in hand. A chunk larger than a bound is taken when nothing else is
	// buffered, so any chunk size gets through. Tables, wave end markers
	// and repair announcements are never dropped. Default 1 MiB.
	QueueBytes int
	// Window is the number of chunks asked for and not yet received at any
	// time (flow control). Default 64.
	Window int
	// Name overrides the source name. Default "broker".
	Name string
	// ListenFirst is how long Fetch only listens on the broadcast chunk
	// topic before it sends its first chunk request, so that a device that
	// joins while (or just before) a broadcast wave takes the wave instead
	// of asking for the image chunk by chunk. While broadcast chunks it
	// wants keep arriving it goes on listening, and asks only once the
	// stream has been quiet for Quiet. Default 1s, but at most Idle;
	// negative: ask at once.
	ListenFirst time.Duration
	// Quiet is the gap in wanted broadcast chunks that ends the listening
	// period once chunks have arrived; later too, while wanted broadcast
	// chunks come closer together than Quiet, no new chunk is asked for.
	// Default 500ms, but at most Idle.
	Quiet time.Duration
	// WaveGap replaces Quiet once wanted chunks came by broadcast and
	// the wave's end marker (schemas.WaveEnd) has not: a wave is flowing,
	// and its marker says when it is over, so a gap in it (a loaded
	// broker or publisher, this device's own receive path behind) is no
	// reason to ask; only a gap of WaveGap (the marker lost, the wave
	// stopped) is. With Quiet there, a pause of the wave under load made
	// most of a fleet send requests at once, mid-wave, and spend the
	// coded parity of blocks the wave was still sending. Even then the
	// first gap of WaveGap asks only for the chunks missing before the
	// last one the wave brought, in carousel order (the broker passed
	// them: they are lost; the rest may still be queued for this device);
	// a second gap with no broadcast chunk in between ends the wave, and
	// the device asks for what is still missing. Default Idle, at least
	// Quiet.
	WaveGap time.Duration
	// SummaryBackoff bounds the random delay after a wave's end marker
	// (schemas.WaveEnd) before the device sends its loss summary, so
	// that a fleet's summaries spread out; the delay is shorter for a
	// device that lacks more (the neediest speak first). Default Quiet,
	// and for a fetch with coded repair defaultCodedBackoff (at most
	// Idle): its delays are spread exponentially (summaryDelay), so that
	// the publisher's repair announcement, sized by the first few,
	// arrives while most of a fleet is still waiting.
	SummaryBackoff time.Duration
	// SummaryMax is the most chunks the loss summary after a wave's end
	// marker asks for in one request (later requests keep to Window).
	// Default Window: a larger summary arrives as a burst of unicast
	// chunks that a slow device's bounded receive queue may shed.
	SummaryMax int
	// Protocol is the delivery protocol the device speaks, put into its
	// chunk requests (schemas.ChunkRequest.Protocol). With
	// schemas.ProtocolCoded (the default) it asks for the coded chunk
	// table when the manifest names one (Image.CodedTableDigest) and takes
	// parity repair; with schemas.ProtocolPlain it behaves as the agents
	// of the previous protocol: it takes only the plain table
	// (Image.TableDigest) and is repaired by chunks. Higher than
	// schemas.MaxProtocol is refused (ErrConfig).
	Protocol int
	// Tally, when set, is added what this source's fetches saw on the
	// receive path (chunks shed, parity refused, chunks rebuilt, requests,
	// summaries suppressed): a fleet's totals.
	Tally *Tally
	// Logger receives the source's debug lines (a fetch's wave joined,
	// its requests while a wave flows, its end). Default: none.
	Logger *slog.Logger
}

// BrokerSource fetches chunks over the broker: it listens on the image's
// broadcast chunk topic and on the device's chunk reply topic, and asks for
// what it still lacks with chunk requests carrying its bitmap, on the
// device's own request topic (schemas.Topics.ChunkRequestsFrom). Received
// messages that are not a chunk of the image (garbage, another image, an
// index out of range) are counted in Dropped and ignored.
type BrokerSource struct {
	cfg BrokerConfig

	// Dropped counts received messages ignored as not a chunk of the
	// image being fetched: Garbage (not a valid chunk message), Foreign
	// (a chunk of another image) and OutOfRange (an index beyond the
	// image). Read them after Fetch returns.
	Dropped, Garbage, Foreign, OutOfRange int
	// BadParity counts the parity chunks refused on arrival by a fetch
	// with coded repair (FetchRepair): not committed by the signed table
	// (forged, corrupt), a wrong block or parity index, a wrong length, or
	// another image's. They are counted in Dropped too.
	BadParity int
	// Rebuilt counts the chunks rebuilt from parity chunks.
	Rebuilt int
	// Requests counts chunk requests sent.
	Requests int
	// Suppressed counts the loss summaries not sent because a repair
	// announcement (schemas.RepairAnnounce) covered the device's need.
	Suppressed int
	// Shed counts the chunks and parity chunks dropped on arrival because
	// the receive buffer held QueueBytes (or Queue chunks) already: the
	// writer was behind. They are repaired as losses. PeakQueued is the
	// most bytes of chunks the receive buffer held. Read them after Fetch
	// returns.
	Shed       int64
	PeakQueued int
	// Waited counts the chunks that arrived at a full receive buffer and
	// waited for room rather than being dropped (see broker.Transport.ReceiveQueue).
	Waited int64
	// Skipped counts the chunks and parity chunks dropped on arrival,
	// before they were queued, because the fetch had no use for them: a
	// chunk it held, parity for a block beyond what the block lacks (a
	// repair round is sized for the neediest device). Not losses.
	Skipped int64

	// held is the subscription Table leaves open for the Fetch of the
	// same image that follows (the table may come at a wave's start, with
	// its chunks right behind it); released unclaimed after heldFor.
	heldMu sync.Mutex
	held   *heldSub

	// codedBackoff is SummaryBackoff for a fetch with coded repair.
	codedBackoff time.Duration
}

// defaultCodedBackoff is the default SummaryBackoff of a fetch with coded
// repair: long enough that the publisher's repair window (250ms in the
// demo and bench fleets), its announcement's way back and a loaded
// device's loop fit in its first tenth or so, where summaryDelay puts the
// first few of a fleet of hundreds. It costs a fleet without loss up to
// that long after a wave for its devices that shed a burst (NATS, N =
// 500: 1.98x to 2.05x the raw fan-out to staged, against 1.72x to 1.99x
// at 1s); but at 1s, with 5% loss, the first batch held more devices
// that had shed, sized a first round that spent a block's parity, and
// the egress reached up to 1.48 images (docs/BENCHMARKS.md).
const defaultCodedBackoff = 2 * time.Second

// afterRoundBackoff divides the coded summary back-off after the end
// marker of a repair round for the device's blocks. With the whole
// back-off (2s then) a straggler that lost some of a round's parity
// waited up to 2s a round (one NATS device took 7s of rounds at N = 500
// with 5% loss, docs/BENCHMARKS.md).
const afterRoundBackoff = 4

// heldSub is an open subscription of one image, between Table and Fetch.
type heldSub struct {
	digest []byte
	in     *inbox
	unsub  func()
	timer  *time.Timer
}

// NewBrokerSource returns a broker source; errors wrap ErrConfig.
func NewBrokerSource(cfg BrokerConfig) (*BrokerSource, error) {
	if cfg.Transport == nil {
		return nil, fmt.Errorf("%w: broker source without transport", ErrConfig)
	}
	if _, err := cfg.Topics.ChunkReply(cfg.Device); err != nil {
		return nil, fmt.Errorf("%w: broker source: %v", ErrConfig, err)
	}
	if cfg.Idle <= 0 {
		cfg.Idle = 2 * time.Second
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = 3
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 1 << 20
	}
	if cfg.Queue <= 0 {
		cfg.Queue = max(cfg.QueueBytes/2048, 64)
	}
	if cfg.Window <= 0 {
		cfg.Window = 64
	}
	if cfg.Name == "" {
		cfg.Name = "broker"
	}
	if cfg.ListenFirst == 0 {
		cfg.ListenFirst = min(time.Second, cfg.Idle)
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = min(500*time.Millisecond, cfg.Idle)
	}
	if cfg.WaveGap < cfg.Quiet {
		cfg.WaveGap = max(cfg.Idle, cfg.Quiet)
	}
	codedBackoff := cfg.SummaryBackoff
	if cfg.SummaryBackoff <= 0 {
		cfg.SummaryBackoff = cfg.Quiet
		codedBackoff = min(defaultCodedBackoff, cfg.Idle)
	}
	if cfg.SummaryMax <= 0 {
		cfg.SummaryMax = cfg.Window
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Protocol == 0 {
		cfg.Protocol = schemas.MaxProtocol
	}
	if cfg.Protocol < schemas.ProtocolPlain || cfg.Protocol > schemas.MaxProtocol {
		return nil, fmt.Errorf("%w: broker source: delivery protocol %d outside [%d, %d]", ErrConfig, cfg.Protocol, schemas.ProtocolPlain, schemas.MaxProtocol)
	}
	return &BrokerSource{cfg: cfg, codedBackoff: codedBackoff}, nil
}

func (s *BrokerSource) Name() string   { return s.cfg.Name }
func (s *BrokerSource) Kind() string   { return "broker" }
func (s *BrokerSource) Price() float64 { return s.cfg.Price }

// Probe returns CanServe: whether the publisher serves the image shows
// only when chunks arrive.
func (s *BrokerSource) Probe(ctx context.Context, im Image) (Availability, error) {
	return CanServe, nil
}

// inbox receives copies of messages from transport handlers. Chunks and
// parity chunks are taken while it holds fewer than its chunk bound
// (count and bytes) and dropped (shed) beyond, so that a writer that
// falls behind the broadcast costs losses, never memory; a handler never
// waits for one. Other messages (tables, wave end markers, repair
// announcements, garbage) are few: a handler waits while the channel is
// full, until the fetch ends, then drops.
type inbox struct {
	ch   chan inMsg
	done chan struct{}

	// maxChunks and maxBytes bound the chunks queued in ch.
	maxChunks, maxBytes int
	mu                  sync.Mutex
	// chunks and bytes count the chunks queued in ch; peak is the most
	// bytes they held; shed counts those dropped. Guarded by mu.
	chunks, bytes, peak int
	shed                int64
	// wait: a chunk arriving at a full buffer waits for room while the
	// reader takes chunks (taken within takeStall), instead of being
	// dropped; set where the transport then pushes back on the broker
	// (MQTT: paho stops reading the socket once its queue of
	// broker.Config.ReceiveMaximum messages is full). taken is when the
	// reader last took a chunk; waited counts the waits. Guarded by mu.
	wait  bool
	taken time.Time
	// fullSince is when a chunk last found the buffer full after the
	// reader's last take (see handle).
	fullSince time.Time
	// working: the fetch loop is at work on a message it took (take),
	// not waiting for one (idle).
	working bool
	waited  int64
	room    chan struct{} // a chunk was taken
	// onWait, when set (tests), is called as a chunk starts waiting.
	onWait func()
	// use, once the fetch loop sets it, drops on arrival the chunks and
	// parity chunks the loop has no use for (useful).
	use atomic.Pointer[useful]
	// lastArrival is when a message last arrived on the broadcast topic
	// (unix nanoseconds), taken or dropped: the stream is still flowing.
	lastArrival atomic.Int64
}

// takeStall is how long a reader may go without taking a chunk before
// arriving chunks are dropped rather than waited for: a reader that
// stopped (its own request's acknowledgement, which comes behind the
// chunks, awaited) must not hold the connection.
const takeStall = time.Second

// busyStall is how long a fetch loop at work on a message (see handle)
// may leave the buffer full before arriving chunks are shed.
const busyStall = 30 * time.Second

// maxPushbackQueue is the largest broker.Transport.ReceiveQueue with which the receive
// buffer waits for room instead of dropping (broker.DeviceReceiveMaximum
// is 16): the messages queued there are memory on top of QueueBytes.
const maxPushbackQueue = 64

// maxBacklog is the most bytes a chunk arriving at a full buffer may find
// queued in the transport behind it (broker.Message.Backlog) and still
// wait for room rather than be shed: 8 chunks of 16 KiB, so that a reader
// descheduled for a moment costs no loss on NATS either, while a slow
// flash still costs losses, not memory (the receive path stays under
// 2 MiB: TestBrokerSlowFlashBoundedMemory).
const maxBacklog = 128 << 10

// nonChunkRoom is how many messages other than chunks an inbox's channel
// holds beyond its chunk bound, so that a table or marker arriving behind
// a full queue of chunks is queued rather than waiting.
const nonChunkRoom = 16

func newInbox(maxChunks, maxBytes int) *inbox {
	return &inbox{ch: make(chan inMsg, maxChunks+nonChunkRoom), done: make(chan struct{}), maxChunks: maxChunks, maxBytes: maxBytes, room: make(chan struct{}, 1)}
}

// inMsg is a received message; bcast: it came on the broadcast topic;
// chunk: it is counted in the inbox's chunk bound; pblk: a parity chunk
// admitted by the inbox's useful filter, of block pblk-1 (0: none).
type inMsg struct {
	b     []byte
	bcast bool
	chunk bool
	pblk  int
	// own: b is the transport's (broker.Message.Owned), not bufPool's.
	own bool
}

// release gives m's buffer back to bufPool once its bytes are used; one
// the transport allocated is left to the collector (pooled, it would
// outlive the download by up to two collections, unused).
func (m inMsg) release() {
	if !m.own {
		putBuf(m.b)
	}
}

func (in *inbox) handle(ctx context.Context, m broker.Message, bcast bool) {
	if bcast {
		in.lastArrival.Store(time.Now().UnixNano())
	}
	chunk := schemas.IsChunk(m.Payload) || schemas.IsParityChunk(m.Payload)
	pblk := 0
	if u := in.use.Load(); chunk && u != nil {
		ok, blk := u.admit(m.Payload)
		if !ok {
			return // of no use to the fetch: not a loss
		}
		pblk = blk + 1
		if pblk > 0 {
			// Given back if it is shed below.
			defer func() {
				if pblk > 0 {
					u.taken(pblk - 1)
				}
			}()
		}
	}
	if chunk {
		in.mu.Lock()
		waited := false
		for in.chunks >= in.maxChunks || (in.chunks > 0 && in.bytes+len(m.Payload) > in.maxBytes) {
			// The reader is stuck when the buffer has stayed full for
			// takeStall with nothing taken: measured from the later of
			// its last take and when the buffer was found full, so that
			// a burst after a pause (a repair round after a quiet
			// spell) waits for a reader about to run instead of being
			// shed at once.
			now := time.Now()
			if !in.fullSince.After(in.taken) {
				in.fullSince = now
			}
			// A transport that pushes back (wait) holds the rest at the
			// broker; one that reports its backlog holds it in memory
			// of its own, up to maxBacklog.
			canWait := in.wait || (m.Backlog != nil && m.Backlog() < maxBacklog)
			// A fetch loop at work on what it took (a block's rebuild
			// on a loaded machine takes seconds) is not stuck: it never
			// waits on the network, so waiting for it cannot hold up
			// what it waits for; but not forever (busyStall).
			full := now.Sub(in.fullSince)
			stuck := full > takeStall && (!in.working || full > busyStall)
			if !canWait || stuck {
				in.shed++
				in.mu.Unlock()
				return // a loss: repaired later
			}
			// The writer is taking chunks, only slower than they come:
			// wait for room, so that the transport stops reading and
			// the broker holds the rest, as it would for any slow
			// subscriber.
			onWait := in.onWait
			in.mu.Unlock()
			if onWait != nil {
				onWait()
			}
			t := time.NewTimer(takeStall)
			select {
			case <-in.room:
			case <-t.C:
			case <-in.done:
				t.Stop()
				return
			case <-ctx.Done():
				t.Stop()
				return
			}
			t.Stop()
			in.mu.Lock()
			if !waited {
				waited = true
				in.waited++ // once per chunk, however often it woke
			}
		}
		in.chunks++
		in.bytes += len(m.Payload)
		in.peak = max(in.peak, in.bytes)
		in.mu.Unlock()
	}
	// A payload the transport gave away is kept as it is: a copy per
	// chunk was 16 KiB of memmove and a pooled buffer beside nats.go's.
	im := inMsg{b: m.Payload, bcast: bcast, chunk: chunk, own: m.Owned}
	if !m.Owned {
		im.b = append(getBuf(len(m.Payload)), m.Payload...)
	}
	if chunk {
		// Room is reserved above: the channel holds at most maxChunks
		// chunks and nonChunkRoom others before a handler waits, and
		// only other messages wait.
		im.pblk = pblk
		select {
		case in.ch <- im:
			pblk = 0 // the loop gives it back (take)
		default:
			in.got(im)
			in.mu.Lock()
			in.shed++
			in.mu.Unlock()
			im.release()
		}
		return
	}
	select {
	case in.ch <- im:
	case <-in.done: // fetch over: dropped
		im.release()
	case <-ctx.Done():
		im.release()
	}
}

// take is got for the fetch loop: it also marks the loop at work on m
// until it next waits (idle).
func (in *inbox) take(m inMsg) {
	in.mu.Lock()
	in.working = true
	in.mu.Unlock()
	if m.pblk > 0 {
		if u := in.use.Load(); u != nil {
			u.taken(m.pblk - 1)
		}
	}
	in.got(m)
}

// idle marks the fetch loop waiting for messages (or gone).
func (in *inbox) idle() {
	in.mu.Lock()
	in.working = false
	in.mu.Unlock()
}

// got releases m's place in the chunk bound; the reader calls it for
// every message it takes from ch.
func (in *inbox) got(m inMsg) {
	if !m.chunk {
		return
	}
	in.mu.Lock()
	in.chunks--
	in.bytes -= len(m.b)
	in.taken = time.Now()
	in.mu.Unlock()
	select {
	case in.room <- struct{}{}:
	default:
	}
}

// stats returns the chunks shed, the peak bytes queued and the waits for
// room so far.
func (in *inbox) stats() (shed int64, peak int, waited int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.shed, in.peak, in.waited
}

func (in *inbox) handler(ctx context.Context, m broker.Message)      { in.handle(ctx, m, false) }
func (in *inbox) bcastHandler(ctx context.Context, m broker.Message) { in.handle(ctx, m, true) }

// bufPool recycles the copies of received messages, so that a long
// download does not allocate one per chunk.
var bufPool sync.Pool

func getBuf(n int) []byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]byte, 0, n)
}

func putBuf(b []byte) {
	if cap(b) > 2*schemas.MaxChunkSize {
		return // a chunk table: not worth keeping
	}
	bufPool.Put(&b)
}

func (s *BrokerSource) subscribe(ctx context.Context, im Image, broadcast bool) (*inbox, func(), error) {
	in := newInbox(min(s.cfg.Queue, s.cfg.QueueBytes/max(int(im.ChunkSize), 1)+16), s.cfg.QueueBytes)
	// Where the transport pushes back on the broker with little queued
	// (MQTT with a device's Receive Maximum), a full buffer waits for
	// room and the broker holds the rest; elsewhere it drops: nats.go
	// reads on regardless, into memory, and a large paho queue would
	// hold up to ReceiveQueue messages here.
	if q := s.cfg.Transport.ReceiveQueue(); q > 0 && q <= maxPushbackQueue {
		in.wait = true
	}
	var subs []broker.Subscription
	unsub := func() {
		close(in.done)
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, sub := range subs {
			_ = sub.Unsubscribe(uctx)
		}
	}
	reply, _ := s.cfg.Topics.ChunkReply(s.cfg.Device)
	topics := []schemas.Topic{reply}
	if broadcast {
		bt, err := s.cfg.Topics.Chunks(im.Hex())
		if err != nil {
			return nil, nil, err
		}
		topics = append(topics, bt)
	}
	for k, t := range topics {
		h := in.handler
		if k > 0 {
			h = in.bcastHandler
		}
		sub, err := s.cfg.Transport.Subscribe(ctx, t, h, broker.SubscribeOptions{Family: broker.FamilyChunk, Inline: true})
		if err != nil {
			unsub()
			return nil, nil, fmt.Errorf("subscribe %s: %w", t.MQTT, err)
		}
		subs = append(subs, sub)
	}
	return in, unsub, nil
}

// hold keeps in (subscribed to im's broadcast and reply topics) for the
// Fetch that follows, replacing and closing any held before; it is closed
// if no Fetch of im claims it within Idle x MaxIdle.
func (s *BrokerSource) hold(im Image, in *inbox, unsub func()) {
	h := &heldSub{digest: im.Digest, in: in, unsub: unsub}
	s.heldMu.Lock()
	old := s.held
	s.held = h
	h.timer = time.AfterFunc(s.cfg.Idle*time.Duration(s.cfg.MaxIdle), func() {
		s.heldMu.Lock()
		mine := s.held == h
		if mine {
			s.held = nil
		}
		s.heldMu.Unlock()
		if mine {
			unsub()
		}
	})
	s.heldMu.Unlock()
	if old != nil && old.timer.Stop() {
		old.unsub()
	}
}

// claim returns the held subscription of im, if any, and closes one of
// another image.
func (s *BrokerSource) claim(im Image) (*inbox, func()) {
	s.heldMu.Lock()
	h := s.held
	s.held = nil
	s.heldMu.Unlock()
	if h == nil || !h.timer.Stop() {
		return nil, nil // none, or released meanwhile
	}
	if !bytes.Equal(h.digest, im.Digest) {
		h.unsub()
		return nil, nil
	}
	return h.in, h.unsub
}

// request asks for the chunks set in want (and the chunk table when
// table); seen is the last end marker of im heard (ChunkRequest.Seen),
// sent only for a coded image.
func (s *BrokerSource) request(ctx context.Context, im Image, want []byte, table bool, seen uint32) error {
	reply, _ := s.cfg.Topics.ChunkReply(s.cfg.Device)
	// The device's own request topic: the only one the broker lets it
	// publish requests on, and the one that tells the publisher who asks.
	rt, err := s.cfg.Topics.ChunkRequestsFrom(s.cfg.Device)
	if err != nil {
		return err
	}
	req := schemas.ChunkRequest{
		V: schemas.Version, Image: im.Digest, ChunkSize: im.ChunkSize, Bitmap: want,
		ReplyTo: s.cfg.Transport.Dialect().Native(reply), Requester: s.cfg.Device, Campaign: s.cfg.Campaign, WantTable: table,
		Listening: table, // Table listens on the broadcast topic too
	}
	// The protocol spoken for this image: coded only when the manifest
	// names a coded table (protocol 1 is written as absent). It chooses
	// the table the publisher answers with and the repair path.
	if s.speaksCoded(im) {
		req.Protocol = uint8(s.cfg.Protocol)
		req.Seen = seen
	}
	b, err := schemas.Encode(&req)
	if err != nil {
		return err
	}
	s.Requests++
	return s.cfg.Transport.Publish(ctx, rt, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
}

// Table asks the publisher for the chunk table (a chunk request with
// WantTable and Listening, no chunks) and waits for it on the reply topic
// and on the image's broadcast topic, where a wave brings copies of it:
// the publisher sends it by unicast only when no wave is coming or the
// device asks again after a copy went out. It asks again after each Idle
// period. The subscriptions stay open for the Fetch of the image that
// follows, so that the wave's chunks behind the table are not missed.
func (s *BrokerSource) Table(ctx context.Context, im Image) ([]byte, error) {
	in, unsub, err := s.subscribe(ctx, im, true)
	if err != nil {
		return nil, err
	}
	kept := false
	defer func() {
		if !kept {
			unsub()
		}
	}()
	start, before := time.Now(), 0 // before: broadcast chunks dropped before the table
	for try := 0; try < s.cfg.MaxIdle; try++ {
		if err := s.request(ctx, im, nil, true, 0); err != nil {
			return nil, err
		}
		timer := time.NewTimer(s.cfg.Idle)
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil, ctx.Err()
			case <-timer.C:
				break wait
			case m := <-in.ch:
				in.got(m)
				b := m.b
				if m.bcast && (schemas.IsChunk(b) || schemas.IsParityChunk(b) || isWaveEnd(b, im)) {
					before++
					m.release() // the wave's chunks before the table: repaired later
					continue
				}
				// On the broadcast topic, the answer is the table the
				// manifest names (its digest): it may carry another table
				// of the image (a coded one, or an uncoded one for agents
				// that do not take coded repair) or a forged one; those
				// are skipped, not returned to fail authentication and be
				// asked for again. Whatever decodes on the reply topic
				// (this device's) is the answer; the fetcher authenticates
				// it, and a wrong one is reported as such.
				if m.bcast {
					if sum := sha256.Sum256(b); subtle.ConstantTimeCompare(sum[:], s.tableDigest(im)) != 1 {
						if !schemas.IsChunkTable(b) {
							s.Dropped++
						}
						m.release()
						continue
					}
				} else if !isTable(b) {
					s.Dropped++
					continue
				}
				timer.Stop()
				kept = true
				s.cfg.Logger.Debug("chunk table received", "broadcast", m.bcast, "tries", try+1, "dropped_before", before, "after", time.Since(start).Seconds())
				s.hold(im, in, unsub)
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: no chunk table after %d requests", ErrStalled, s.cfg.MaxIdle)
}

// Fetch subscribes, listens, asks for the wanted chunks and writes what
// arrives. It first only listens for broadcast chunks (ListenFirst, then
// for as long as wanted chunks keep arriving with gaps under Quiet), then
// asks for what is still missing. It keeps at most Window chunks requested and not yet received (flow
// control: whatever the transport buffers stays bounded), asking for more
// as they arrive, and asks again for what is outstanding after each idle
// period. Broadcast chunks that happen to be wanted are taken too. It gives
// up with ErrStalled after MaxIdle idle periods in a row.
func (s *BrokerSource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	return s.fetch(ctx, im, want, deliver, nil)
}

// FetchRepair is Fetch that also takes the parity chunks broadcast on the
// image's topic (RepairSource): each is checked against r.Table on
// arrival (a forged, corrupt or misnumbered one is dropped and counted in
// BadParity, never used), at most as many per block as the block lacks
// are kept (internal/blockcode.Collector), and once a block holds as many
// as it lacks, its lost chunks are rebuilt, reading the chunks it holds
// back from r.Slot, and handed to deliver.
func (s *BrokerSource) FetchRepair(ctx context.Context, im Image, want Chunks, deliver Deliver, r Repair) error {
	if r.Table == nil || !r.Table.Coded() || r.Slot == nil {
		return s.fetch(ctx, im, want, deliver, nil)
	}
	return s.fetch(ctx, im, want, deliver, &r)
}

func (s *BrokerSource) fetch(ctx context.Context, im Image, want Chunks, deliver Deliver, rep *Repair) error {
	var col *blockcode.Collector
	if rep != nil {
		var err error
		if col, err = blockcode.NewCollector(rep.Table, 0); err != nil {
			return err
		}
		if rep.Scratch != nil {
			col.UseScratch(rep.Scratch)
		}
	}
	in, unsub := s.claim(im)
	if in == nil {
		var err error
		if in, unsub, err = s.subscribe(ctx, im, true); err != nil {
			return err
		}
	}
	defer unsub()
	before := s.counts()
	var use *useful
	log := s.cfg.Logger
	start := time.Now()
	// firstPos is the carousel position of the first broadcast chunk
	// this fetch took (-1: none yet), for the debug log.
	firstPos := -1
	defer func() {
		shed, peak, waited := in.stats()
		log.Debug("broker fetch ended", "seconds", time.Since(start).Seconds(), "first_pos", firstPos, "shed", shed, "waited", waited, "requests", s.Requests-before.Requests)
		s.Shed += shed
		s.Waited += waited
		var skipped int64
		if use != nil {
			skipped = use.skipped.Load()
			s.Skipped += skipped
			bad := int(use.bad.Load())
			s.BadParity += bad
			s.Dropped += bad
		}
		s.PeakQueued = max(s.PeakQueued, peak)
		if t := s.cfg.Tally; t != nil {
			after := s.counts()
			t.Shed.Add(shed)
			t.Waited.Add(waited)
			t.Skipped.Add(skipped)
			t.BadParity.Add(int64(after.BadParity - before.BadParity))
			t.Rebuilt.Add(int64(after.Rebuilt - before.Rebuilt))
			t.Requests.Add(int64(after.Requests - before.Requests))
			t.Suppressed.Add(int64(after.Suppressed - before.Suppressed))
		}
	}()
	n := want.b.n
	rs := s.startRequests(ctx, im, n)
	defer rs.stop()
	missing := want.b.clone()
	left := missing.count()
	// What the fetch holds already, and with coded repair what each
	// block lacks, tell the receive path what to drop unqueued.
	var lackBlk []int
	if col != nil {
		t := rep.Table
		lackBlk = make([]int, t.NumBlocks())
		for i := range n {
			if missing.has(i) {
				lackBlk[t.BlockOf(uint32(i))]++
			}
		}
		use = newUseful(n, t)
		for b, k := range lackBlk {
			use.setNeed(uint32(b), k, 0)
		}
	} else {
		use = newUseful(n, nil)
	}
	for i := range n {
		if !missing.has(i) {
			use.held.set(i)
		}
	}
	in.use.Store(use)
	// needChanged tells the receive path that block b's lack or held
	// parity changed.
	needChanged := func(b uint32) {
		if col != nil && int(b) < len(lackBlk) {
			use.setNeed(b, lackBlk[b], col.Held(b))
		}
	}
	inflight := newBitmap(n)
	nIn, cur := 0, 0
	// While a broadcast wave is flowing (a wanted chunk came on the
	// broadcast topic within Quiet) nothing new is asked for: what the
	// wave lost or passed before this device listened is asked for once
	// it is over, when the requests of all devices that took it are
	// batched together (a chunk many lack is then re-broadcast once).
	lastBcast := time.Time{}
	// inWave: wanted chunks came by broadcast since the last end marker;
	// gap is how long a pause in them must last before the device asks.
	inWave := false
	// While a wave flows, the broker delivers the broadcast topic in
	// order: of the chunks missing, only those before the last one taken
	// from it in carousel order (lastPos) are lost; those after it may be
	// queued for this device still (on a loaded host a wave can stall for
	// longer than WaveGap with its end still in the broker), and asking
	// for them would start a repair round for chunks nobody lost. So a
	// pause of gap while inWave asks only for those behind lastPos and
	// sets stalled; a second pause with no broadcast chunk in between
	// means the wave stopped (its end marker lost, the publisher gone):
	// inWave ends and everything missing may be asked for.
	lastPos, stalled := -1, false
	// midAsk: with coded repair, a request went out since the last end
	// marker (or the fetch's start). The publisher answers none sent
	// while its wave flows (publisher's repairBatch.midWave): on a
	// loaded broker a wave reaches a device seconds late, and what it
	// asked for then mostly came after. At the marker, what such a
	// request named is no longer in flight, and the device sends its
	// loss summary like any other.
	midAsk := false
	// fromPos is the position of the first chunk this wave brought
	// (-1: none yet; see ask).
	fromPos := -1
	posOf := func(i int) int { return i }
	if col != nil {
		t := rep.Table // a coded image's wave interleaves its blocks
		posOf = func(i int) int { return blockcode.Position(t, uint32(i)) }
	}
	// A broadcast message came within WaveGap before this fetch (the
	// chunk table Table took from the wave, or the wave's chunks queued
	// behind it): a wave flows, and its chunks may still be on their way
	// (on a loaded host the first of them reached a device's loop 1.7 s
	// after the table did, and its listening period had ended by then:
	// it asked for 64 chunks by unicast that the wave brought a moment
	// later). Nothing is behind yet (lastPos 0): the device asks for
	// nothing until the wave's end marker, or the wave pausing twice.
	if at := in.lastArrival.Load(); at != 0 {
		if t := time.Unix(0, at); time.Since(t) < s.cfg.WaveGap {
			lastBcast, inWave, lastPos = t, true, 0
		}
	}
	gap := func() time.Duration {
		if inWave {
			return s.cfg.WaveGap
		}
		return s.cfg.Quiet
	}
	// ask requests the outstanding chunks again (resend) and tops the
	// window (at most window chunks asked for and not received) up with
	// chunks not asked for yet.
	ask := func(resend bool, window int) error {
		req := newBitmap(n)
		if resend {
			copy(req.bits, inflight.bits)
			cur = 0
		}
		limit := n
		if time.Since(lastBcast) < gap() {
			limit = 0
		}
		// With a wave flowing, ask only for chunks from fromPos to
		// before lastPos: those the broker passed to this device. The
		// wave passed the ones before fromPos before this fetch heard
		// it (a device that joins mid-carousel); they are for the pass
		// after it or the loss summary after its end marker, where the
		// fleet's needs are batched, not for a request of their own.
		behind, from := -1, -1
		if inWave {
			behind, from = lastPos, fromPos
			defer func(c int) { cur = c }(cur) // those after it are still to ask for
		}
		// With coded repair, a block's missing chunks covered by the
		// parity chunks held for it are not asked for: the request then
		// says how many symbols each block still lacks.
		covered := func(uint32) bool { return false }
		if col != nil {
			covered = col.Covered()
		}
		for nIn < window {
			i := missing.next(cur)
			if i < 0 || i >= limit {
				break
			}
			cur = i + 1
			if covered(uint32(i)) || (behind >= 0 && (posOf(i) >= behind || posOf(i) < from)) {
				continue
			}
			if !inflight.has(i) {
				inflight.set(i)
				req.set(i)
				nIn++
			}
		}
		if req.count() == 0 {
			return nil
		}
		midAsk = col != nil
		if log.Enabled(ctx, slog.LevelDebug) {
			var first []int // the first few asked for: index, position
			for i := req.next(0); i >= 0 && len(first) < 8; i = req.next(i + 1) {
				first = append(first, i, posOf(i))
			}
			log.Debug("asking for chunks", "in_wave", inWave, "from_pos", fromPos, "last_pos", lastPos, "chunks", req.count(), "left", left, "index_pos", first, "since_bcast", time.Since(lastBcast).Seconds(), "queued", len(in.ch))
		}
		return rs.send(req.bits)
	}
	// stall is called when the timer is to ask: a wave's first pause asks
	// only for what is behind lastPos, its second ends the wave.
	stall := func() {
		if inWave && stalled {
			inWave, stalled = false, false
		} else if inWave {
			stalled = true
		}
	}
	idle := 0
	var chunk schemas.Chunk
	// listening: no request sent yet; the timer ends the listening period.
	listening := s.cfg.ListenFirst > 0
	first := s.cfg.Idle
	if listening {
		first = s.cfg.ListenFirst
		if inWave {
			first = max(first, s.cfg.WaveGap-time.Since(lastBcast))
		}
	} else if err := ask(false, s.cfg.Window); err != nil {
		return err
	}
	timer := time.NewTimer(first)
	defer timer.Stop()
	progressed := false
	// write is deliver for the fetch loop: the request sender learns of
	// chunk i as held before its bytes reach the sink, not after, so
	// that a request it sends meanwhile never names a chunk the sink
	// already holds (a chunk that fails is outstanding again).
	write := func(i int, b []byte) error {
		rs.held.set(i)
		err := deliver(i, b)
		if err != nil {
			rs.held.clear(i)
		}
		return err
	}
	// gotChunk records chunk i written (write told the request sender),
	// received or rebuilt from parity.
	gotChunk := func(i int) {
		missing.clear(i)
		use.held.set(i)
		left--
		if col != nil {
			b := rep.Table.BlockOf(uint32(i))
			lackBlk[b]--
			needChanged(b)
		}
		if inflight.has(i) {
			inflight.clear(i)
			nIn--
		}
	}
	// summary: a wave's end marker came; when the timer fires (after a
	// random back-off) the device sends its loss summary.
	summary := false
	// round: a coded repair round for blocks this device lacks in was
	// announced; the end marker that follows its parity (the broker
	// delivers the topic in order: whatever of the round was not lost
	// came before it) ends it, and the device then sends a summary of
	// what the round left missing, after the usual back-off, rather than
	// waiting a whole Idle.
	round := false
	// asked: a coded loss summary went out and no end marker came since.
	// The publisher may have answered it with nothing, counting parity
	// already on its way (a round that crossed it, ending in a marker the
	// device has yet to hear): after that marker, what is still missing
	// is the device's own, as after a round for its blocks.
	asked := false
	defer in.idle()
	for left > 0 {
		in.idle()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if len(in.ch) > 0 {
				// Received and not yet taken (a loop slower than the
				// stream, on a loaded host): what it holds may be what
				// the timer would ask for, and a summary taken now would
				// count it lost. Take it first; the timer acts once the
				// buffer is drained.
				timer.Reset(drainRecheck)
				continue
			}
			if round {
				// A round for this device's blocks was announced and
				// its end marker has not come: while the broadcast
				// stream still flows (parity for any block, paced, and
				// late on a loaded broker), the marker is on its way
				// behind it. The timer is for a marker lost: it acts
				// once the stream has been quiet for Idle.
				if quiet := time.Since(time.Unix(0, in.lastArrival.Load())); quiet < s.cfg.Idle {
					timer.Reset(s.cfg.Idle - quiet)
					continue
				}
			}
			if summary {
				// One request for what the wave left missing (up to
				// SummaryMax chunks); then as after any request. With
				// coded repair, all of it: the answer is parity sized by
				// the per-block counts the publisher reads from it
				// (broadcast, not a burst of unicast chunks), and a
				// truncated summary would undercount.
				summary, listening, progressed, idle = false, false, false, 0
				if log.Enabled(ctx, slog.LevelDebug) {
					minPos, maxPos := n, -1
					for i := missing.next(0); i >= 0; i = missing.next(i + 1) {
						minPos, maxPos = min(minPos, posOf(i)), max(maxPos, posOf(i))
					}
					log.Debug("loss summary", "left", left, "min_pos", minPos, "max_pos", maxPos, "first_pos", firstPos, "after", time.Since(start).Seconds())
				}
				window := s.cfg.SummaryMax
				if col != nil {
					window = max(window, n)
				}
				if err := ask(false, window); err != nil {
					return err
				}
				asked = col != nil
				timer.Reset(s.cfg.Idle)
				continue
			}
			stall()
			if listening {
				// Quiet (or nothing broadcast): ask for what is missing.
				listening, progressed, idle = false, false, 0
				if err := ask(false, s.cfg.Window); err != nil {
					return err
				}
				timer.Reset(s.cfg.Idle)
				continue
			}
			if progressed {
				idle = 0
			} else if idle++; idle >= s.cfg.MaxIdle {
				return fmt.Errorf("%w: no chunk for %v x %d, %d still missing", ErrStalled, s.cfg.Idle, s.cfg.MaxIdle, left)
			}
			progressed = false
			if err := ask(true, s.cfg.Window); err != nil {
				return err
			}
			timer.Reset(s.cfg.Idle)
		case m := <-in.ch:
			in.take(m)
			if m.bcast && schemas.IsParityChunk(m.b) {
				if col == nil {
					m.release() // no coded table: nothing to check it against
					continue
				}
				n0 := left
				blk, _ := schemas.ParityBlockOf(m.b)
				h0 := col.Held(blk)
				// One the receive path admitted (pblk) it checked
				// against the table already.
				err := s.takeParity(ctx, m.b, m.pblk > 0, col, rep, missing, write, gotChunk)
				needChanged(blk)
				m.release()
				if err != nil {
					return err
				}
				if left < n0 {
					progressed = true
				}
				if !summary && !listening && (round || left < n0 || col.Held(blk) > h0) {
					// A round for this device's blocks is still flowing
					// (paced; its end marker comes after it), or parity
					// it uses keeps coming: the timer is for a marker
					// lost or a stream gone quiet, and asking again now
					// would ask for what is on its way.
					timer.Reset(s.cfg.Idle)
				}
				continue
			}
			if m.bcast && col != nil && schemas.IsRepairAnnounce(m.b) {
				// A coded repair round is coming: if it covers this
				// device's need, its loss summary would add nothing.
				covered, mine := s.announced(m.b, im, rep.Table, col, missing)
				m.release()
				switch {
				case summary && !covered:
					// Its summary is still wanted: the round falls short.
				case mine && !inWave:
					// Parity for this device's blocks follows, then the
					// round's end marker: what the round leaves missing
					// goes in a summary after it (not while a wave
					// flows: its end marker comes first).
					if summary {
						s.Suppressed++
						summary, progressed, idle = false, false, 0
					}
					round = true
					timer.Reset(s.cfg.Idle) // its end marker lost: ask after Idle
				case summary:
					s.Suppressed++
					summary, progressed, idle = false, false, 0
					timer.Reset(s.cfg.Idle) // asks later if it is still short
				}
				continue
			}
			if wv, ok := waveEndOf(m.b, im); m.bcast && ok {
				m.release()
				rs.heard(wv)
				// The wave is over: nothing more is coming by broadcast.
				// Send the loss summary after a back-off, shorter for a
				// device that lacks more.
				lastBcast, inWave, stalled, fromPos = time.Time{}, false, false, -1
				afterRound := round || asked
				if afterRound || midAsk {
					// A repair round for this device's blocks is over, or
					// one that crossed its summary: what it asked for was
					// answered, counted as on its way, or lost, so not in
					// flight any more; what is missing goes in a summary.
					round, asked, midAsk = false, false, false
					clear(inflight.bits)
					nIn, cur = 0, 0
				}
				if !summary && nIn == 0 {
					summary = true
					var needs []int
					backoff, parity := s.cfg.SummaryBackoff, 0
					if col != nil {
						needs = blockNeeds(rep.Table, col, missing)
						backoff, parity = s.codedBackoff, int(rep.Table.ParityPerBlock)
						if afterRound {
							// What a round left short is a few devices' (the
							// round was sized for the neediest that spoke):
							// fewer to quiet, and each waits for its own.
							backoff /= afterRoundBackoff
						}
					}
					timer.Reset(summaryDelay(backoff, left, n, needs, parity, rand.Float64()))
				}
				continue
			}
			chunk = schemas.Chunk{}
			if !s.accept(m.b, &chunk, im, n) {
				m.release()
				continue
			}
			i := int(chunk.Index)
			if !missing.has(i) {
				m.release()
				continue
			}
			if m.bcast {
				if !inWave || fromPos < 0 {
					fromPos = posOf(i)
				}
				lastBcast, inWave, stalled = time.Now(), true, false
				lastPos = posOf(i)
				if firstPos < 0 {
					firstPos = lastPos
					log.Debug("wave joined", "pos", lastPos, "index", i, "after", time.Since(start).Seconds(), "queued", len(in.ch), "left", left)
				}
			}
			err := write(i, chunk.Data)
			m.release() // the chunk's data was m.b's bytes: written (or refused) now
			chunk = schemas.Chunk{}
			if err != nil {
				if errors.Is(err, ErrSink) {
					return err
				}
				continue // bad chunk: still outstanding, asked for again
			}
			gotChunk(i)
			progressed = true
			if col != nil && left > 0 {
				// The chunk may leave its block no more to rebuild than
				// the parity held for it covers.
				b := rep.Table.BlockOf(uint32(i))
				if err := s.rebuild(ctx, b, col, rep, missing, write, gotChunk); err != nil {
					return err
				}
				needChanged(b)
			}
			if listening {
				// The broadcast stream goes on: keep listening.
				timer.Reset(gap())
				continue
			}
			// Keep the idle timer running from the last new chunk; with
			// nothing asked for and a wave flowing, ask once it is quiet.
			if m.bcast && nIn == 0 {
				timer.Reset(gap())
			} else {
				timer.Reset(s.cfg.Idle)
			}
			if nIn <= s.cfg.Window/2 && left > 0 {
				if err := ask(false, s.cfg.Window); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// takeParity checks the parity chunk message b against the coded table
// and keeps it (col.Add); once its block holds as many parity chunks as
// the block lacks, it rebuilds the block's lost chunks (reading the held
// ones back from the slot) and hands each to deliver, then to got. It
// returns only deliver's ErrSink error or ctx's; a parity chunk refused or
// a block that does not rebuild (a held chunk in the slot not the image's:
// the table check of the rebuilt chunks refuses them) is counted and left
// to repair. checked: the receive path checked b's hash against the table
// already (useful.admit), so it is not hashed again.
func (s *BrokerSource) takeParity(ctx context.Context, b []byte, checked bool, col *blockcode.Collector, rep *Repair, missing bitmap, deliver Deliver, got func(i int)) error {
	// A view (p aliases b): the collector keeps a copy of what it keeps
	// in memory, none of what goes to the scratch.
	var p schemas.ParityChunk
	if err := schemas.DecodeParityChunkView(b, &p); err != nil {
		s.Garbage++
		s.Dropped++
		return nil
	}
	t := rep.Table
	lacking := func(blk uint32) int {
		first, count := t.BlockChunks(blk)
		n := 0
		for i := first; i < first+count; i++ {
			if missing.has(int(i)) {
				n++
			}
		}
		return n
	}
	add := col.Add
	if checked {
		add = col.AddChecked
	}
	kept, err := add(&p, lacking(p.Block))
	if err != nil {
		s.BadParity++
		s.Dropped++
		return nil
	}
	if !kept {
		return nil
	}
	return s.rebuild(ctx, p.Block, col, rep, missing, deliver, got)
}

// rebuild rebuilds the lost chunks of block blk once the parity chunks
// held for it are as many as the chunks it lacks (after a parity chunk
// came, or a chunk that left fewer to rebuild), handing each to deliver,
// then to got; a block that lacks nothing drops its parity. Errors as
// takeParity.
func (s *BrokerSource) rebuild(ctx context.Context, blk uint32, col *blockcode.Collector, rep *Repair, missing bitmap, deliver Deliver, got func(i int)) error {
	t := rep.Table
	first, count := t.BlockChunks(blk)
	lack := 0
	for i := first; i < first+count; i++ {
		if missing.has(int(i)) {
			lack++
		}
	}
	held := col.Held(blk)
	if lack == 0 && held > 0 {
		col.Forget(blk)
	}
	if lack == 0 || held < lack {
		return nil
	}
	err := col.Decode(ctx, blk, func(i uint32) bool { return !missing.has(int(i)) }, rep.Slot, func(i uint32, data []byte) error {
		if err := deliver(int(i), data); err != nil {
			return err
		}
		s.Rebuilt++
		got(int(i))
		return nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrSink) || ctx.Err() != nil:
		return err
	}
	col.Forget(blk) // the block is repaired by request instead
	return nil
}

// accept decodes a received message as a chunk of im and counts what it
// drops.
func (s *BrokerSource) accept(b []byte, c *schemas.Chunk, im Image, n int) bool {
	if !schemas.IsChunk(b) && schemas.IsChunkTable(b) {
		return false // a copy of the table a wave carries: not a drop
	}
	switch {
	case schemas.DecodeChunkView(b, c) != nil: // c aliases b
		s.Garbage++
	case !bytes.Equal(c.Image, im.Digest):
		s.Foreign++
	case int(c.Index) >= n:
		s.OutOfRange++
	default:
		return true
	}
	s.Dropped++
	return false
}

// speaksCoded reports whether this source speaks coded repair for im:
// the device does (Protocol) and the manifest names a coded table.
func (s *BrokerSource) speaksCoded(im Image) bool {
	return s.cfg.Protocol >= schemas.ProtocolCoded && len(im.CodedTableDigest) == schemas.DigestSize
}

// tableDigest returns the digest of the table this source takes from a
// wave: the coded table's when it speaks coded repair for im, otherwise
// the plain table's.
func (s *BrokerSource) tableDigest(im Image) []byte {
	if s.speaksCoded(im) {
		return im.CodedTableDigest
	}
	return im.TableDigest
}

// drainRecheck is how soon a timer that fired while received messages
// waited in the buffer fires again (see the fetch loop).
const drainRecheck = 20 * time.Millisecond

// summaryGroup is the number of devices the coded summary back-off is
// spread for (as NORM's group size estimate, RFC 5740): of
// that many devices that lack something after a wave, about one draws a
// delay near zero, and the number that have spoken grows by a factor of
// summaryGroup over the back-off. A fleet smaller speaks a little later,
// one larger a little sooner; either way the first few summaries reach
// the publisher well before the rest, and its repair announcement
// (schemas.RepairAnnounce) quiets those it covers.
const summaryGroup = 1000

// summaryDelay is the random back-off before a loss summary, within
// backoff, biased so that the neediest devices speak first. u is uniform
// in [0, 1).
//
// With coded repair (needs: per block, the symbols still lacking beyond
// the parity held; parity: the parity chunks committed per block) the
// delay is exponentially spread: s = 1 + ln(u)/ln(summaryGroup) (at
// most 0: speak at once) puts about one device in summaryGroup near
// zero and half of them past 90% of backoff, and the device's largest
// block need sharpens it (s to the power 1 + 3*need/parity), so that
// of the first few the neediest are most: the publisher sizes its round
// by the first summaries and announces it; a device whose back-off is
// still running when the announcement comes, and whose need it covers,
// stays quiet. A slotted back-off (the device's need picking one of 5
// slots) put every device of a fleet at 5% loss with blocks of 128
// chunks in the first slot: 518 to 757 summaries from 500 devices a
// wave, almost none suppressed (docs/BENCHMARKS.md).
//
// Otherwise (plain repair: no announcement to wait for) the delay
// shrinks with the share of the image missing.
func summaryDelay(backoff time.Duration, left, n int, needs []int, parity int, u float64) time.Duration {
	if needs == nil {
		need := float64(left) / float64(n)
		return time.Duration(u * (1 - need) * float64(backoff))
	}
	most := 0
	for _, k := range needs {
		most = max(most, k)
	}
	if u <= 0 {
		return 0
	}
	s := 1 + math.Log(u)/math.Log(summaryGroup)
	if s <= 0 {
		return 0
	}
	sharp := 1.0
	if parity > 0 {
		sharp += 3 * float64(min(most, parity)) / float64(parity)
	}
	return time.Duration(math.Pow(s, sharp) * float64(backoff))
}

// blockNeeds returns, per block of t, the chunks missing beyond the
// parity chunks col holds for the block.
func blockNeeds(t *schemas.ChunkTable, col *blockcode.Collector, missing bitmap) []int {
	needs := make([]int, t.NumBlocks())
	for i := missing.next(0); i >= 0; i = missing.next(i + 1) {
		needs[t.BlockOf(uint32(i))]++
	}
	for b := range needs {
		needs[b] = max(needs[b]-col.Held(uint32(b)), 0)
	}
	return needs
}

// announced reports whether b is a repair announcement of im that covers
// this device's need (for every block, the announced parity chunks are at
// least the chunks it lacks beyond the parity it holds), and whether it
// announces parity for a block the device lacks in (mine).
func (s *BrokerSource) announced(b []byte, im Image, t *schemas.ChunkTable, col *blockcode.Collector, missing bitmap) (covered, mine bool) {
	var a schemas.RepairAnnounce
	if schemas.Decode(b, &a) != nil || !bytes.Equal(a.Image, im.Digest) {
		return false, false
	}
	coming := make(map[uint32]int, len(a.Need))
	for _, n := range a.Need {
		coming[n.Block] = int(n.Parity)
	}
	covered = true
	for blk, k := range blockNeeds(t, col, missing) {
		if k > coming[uint32(blk)] {
			covered = false
		}
		if k > 0 && coming[uint32(blk)] > 0 {
			mine = true
		}
	}
	return covered, mine
}

// isWaveEnd reports whether b is a wave end marker of im.
func isWaveEnd(b []byte, im Image) bool {
	_, ok := waveEndOf(b, im)
	return ok
}

// waveEndOf returns the number of the wave end marker of im that b is
// (a wave's or a repair round's, WaveEnd.Wave), and whether it is one.
func waveEndOf(b []byte, im Image) (uint32, bool) {
	if schemas.IsChunk(b) {
		return 0, false
	}
	var w schemas.WaveEnd
	if schemas.Decode(b, &w) != nil || !bytes.Equal(w.Image, im.Digest) {
		return 0, false
	}
	return w.Wave, true
}

// isTable reports whether b decodes as a chunk table message (the hot
// paths, which meet every copy of the carousel's tables, only look at its
// shape: schemas.IsChunkTable).
func isTable(b []byte) bool {
	var t schemas.ChunkTable
	return schemas.Decode(b, &t) == nil
}

// sourceCounts are the counters of a BrokerSource a fetch adds to its
// Tally.
type sourceCounts struct{ BadParity, Rebuilt, Requests, Suppressed int }

func (s *BrokerSource) counts() sourceCounts {
	return sourceCounts{s.BadParity, s.Rebuilt, s.Requests, s.Suppressed}
}
