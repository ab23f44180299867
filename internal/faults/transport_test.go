package faults

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/schemas"
)

// chunkSet is the set of chunk indexes a device received intact (after
// the fault hook let them through), safe for concurrent use.
type chunkSet struct {
	mu  sync.Mutex
	has map[uint32]bool
}

func (s *chunkSet) add(i uint32) {
	s.mu.Lock()
	if s.has == nil {
		s.has = map[uint32]bool{}
	}
	s.has[i] = true
	s.mu.Unlock()
}

func (s *chunkSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.has)
}

// deviceFaults is a device's transport with fault hooks: it drops a
// fraction of the chunk messages delivered to the device (whole messages,
// as a lossy radio link would) and throttles chunk delivery to a byte
// rate. It records the chunks of the image that reach the agent, counts
// the bytes delivered to the device by the broker, and hands every chunk
// request the agent makes to the rig's counts (checked, at the moment
// the agent makes it, against what the device's flash holds).
type deviceFaults struct {
	broker.Transport
	image []byte // digest of the image being rolled out

	dropRate float64 // fraction of chunk messages dropped, fixed at start
	limiter  *rate.Limiter
	// requests counts the agent's chunk requests; held says which chunks
	// the device holds verified.
	requests *sourceCounts
	held     func(i uint32) bool

	mu  sync.Mutex
	rng *rand.Rand

	got     *chunkSet
	rxBytes atomic.Int64 // chunk-family bytes the broker delivered
	dropped atomic.Int64 // chunk messages dropped by the hook
}

func (f *deviceFaults) drop() bool {
	if f.dropRate <= 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64() < f.dropRate
}

func (f *deviceFaults) Subscribe(ctx context.Context, filter schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	return f.Transport.Subscribe(ctx, filter, func(ctx context.Context, m broker.Message) {
		if o.Family != broker.FamilyChunk {
			h(ctx, m)
			return
		}
		f.rxBytes.Add(int64(len(m.Payload)))
		if f.limiter != nil {
			if err := f.limiter.WaitN(ctx, min(len(m.Payload), f.limiter.Burst())); err != nil {
				return
			}
		}
		if f.drop() {
			f.dropped.Add(1)
			return
		}
		var c schemas.Chunk
		if schemas.Decode(m.Payload, &c) == nil && string(c.Image) == string(f.image) {
			f.got.add(c.Index)
		}
		h(ctx, m)
	}, o)
}

func (f *deviceFaults) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	if o.Family == broker.FamilyChunkRequest && f.requests != nil {
		f.requests.request(b, f.held)
	}
	return f.Transport.Publish(ctx, t, b, o)
}

// OnConnect forwards to the wrapped transport when it can tell about
// reconnections (deviceagent.Reconnector), so wrapping changes nothing
// else about the agent.
func (f *deviceFaults) OnConnect(fn func()) (stop func()) {
	if rc, ok := f.Transport.(deviceagent.Reconnector); ok {
		return rc.OnConnect(fn)
	}
	return func() {}
}

// sourceCounts counts chunk requests where they are made (in each
// device's transport, at the moment the agent hands a request over): the
// request messages for the image (a request for the chunk table, which
// every device makes before it downloads, included), the chunks asked
// for, by device, and of them those the device already held
// verified (written intact in a candidate slot of its flash). It also
// counts at the source, around the publisher's device-side transport
// (kept across publisher restarts), the chunk bytes published, broadcast
// and unicast.
type sourceCounts struct {
	image []byte
	bcast string // the image's broadcast chunk topic (MQTT form)

	mu        sync.Mutex
	messages  map[string]int // request messages for the image, by device
	requested map[string]int // chunk indexes asked for, by device
	again     map[string]int // of them, already held verified

	broadcast, unicast atomic.Int64 // chunk-family bytes published
}

func newSourceCounts(topics schemas.Topics, image []byte) *sourceCounts {
	bt, _ := topics.Chunks(schemas.DigestHex(image))
	return &sourceCounts{image: image, bcast: bt.MQTT, messages: map[string]int{}, requested: map[string]int{}, again: map[string]int{}}
}

// request counts a chunk request (encoded) made by a device whose
// verified chunks held reports.
func (s *sourceCounts) request(b []byte, held func(uint32) bool) {
	var r schemas.ChunkRequest
	if schemas.Decode(b, &r) != nil || string(r.Image) != string(s.image) {
		return
	}
	n, again := 0, 0
	for i := 0; i < 8*len(r.Bitmap); i++ {
		if r.Bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		n++
		if held != nil && held(uint32(i)) {
			again++
		}
	}
	s.mu.Lock()
	s.messages[r.Requester]++
	s.requested[r.Requester] += n
	s.again[r.Requester] += again
	s.mu.Unlock()
}

// totalRequested returns the chunk indexes asked for by every device.
func (s *sourceCounts) totalRequested() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.requested {
		n += c
	}
	return n
}

// silent returns, of ids, the devices from which no request message for
// the image was counted.
func (s *sourceCounts) silent(ids []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range ids {
		if s.messages[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// maxAgain returns the device that asked again for the most chunks it
// had already received, and how many.
func (s *sourceCounts) maxAgain() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	who, n := "", 0
	for d, c := range s.again {
		if c > n {
			who, n = d, c
		}
	}
	return who, n
}

// counting is the publisher's transport, its chunk egress counted by a
// sourceCounts.
type counting struct {
	broker.Transport
	c *sourceCounts
}

func (t counting) Publish(ctx context.Context, topic schemas.Topic, b []byte, o broker.PublishOptions) error {
	err := t.Transport.Publish(ctx, topic, b, o)
	if err == nil && o.Family == broker.FamilyChunk {
		if topic.MQTT == t.c.bcast {
			t.c.broadcast.Add(int64(len(b)))
		} else {
			t.c.unicast.Add(int64(len(b)))
		}
	}
	return err
}

// TestRequestCount pins the refetch count the scenarios assert on: the
// chunks of a request are counted, and those the device holds are
// counted as asked for again; requests for another image or that do not
// decode are ignored.
func TestRequestCount(t *testing.T) {
	t.Parallel()
	topics := schemas.MustTopics("fctcount")
	img := make([]byte, 32)
	img[0] = 1
	other := make([]byte, 32)
	c := newSourceCounts(topics, img)
	held := func(i uint32) bool { return i == 1 || i == 9 }
	req := func(image []byte, bitmap []byte) []byte {
		b, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: image, ChunkSize: 4096, Bitmap: bitmap,
			ReplyTo: "fctcount/v1/dev/d1/chunks", Requester: "d1"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c.request(req(img, []byte{0b0000_0111, 0b0000_0010}), held) // 0, 1, 2, 9
	c.request(req(other, []byte{0xff}), held)
	table, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: img, ChunkSize: 4096, WantTable: true,
		ReplyTo: "fctcount/v1/dev/d3/chunks", Requester: "d3"})
	if err != nil {
		t.Fatal(err)
	}
	c.request(table, held) // a request message, no chunk
	c.request([]byte{0xff, 0x00}, held)
	if who, n := c.maxAgain(); who != "d1" || n != 2 || c.totalRequested() != 4 {
		t.Errorf("requested %d, asked again %d by %q; want 4, 2 by d1", c.totalRequested(), n, who)
	}
	if s := c.silent([]string{"d1", "d2", "d3"}); len(s) != 1 || s[0] != "d2" {
		t.Errorf("silent devices %q, want [d2]", s)
	}
}
