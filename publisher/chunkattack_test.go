package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// The chunk request attacks of a device identity, end to end on brokers
// that enforce the access policy (mochi, embedded NATS, and a mosquitto
// process started from the generated config), against a running
// publisher: the attacker, a device notified in the same campaign as its
// victim, aims requests at the victim's reply topic (under its own name,
// the victim's and on every request topic it can think of), invents
// requester names, and asks for the whole image over and over.
//
// Must hold: the victim receives nothing it did not ask for; invented
// names leave no state in the publisher; what the attacker can make the
// publisher send is bounded by its byte budget, and only to itself.
func TestChunkRequestAttacks(t *testing.T) {
	const attacker, victim = "dev-mallory", "dev-victim"
	const backend, backendSecret = "backend", "backend-secret-0123456789abcdef"
	accounts := []broker.Account{
		{Identity: broker.Identity{Username: backend, Role: broker.RoleBackend}, Secret: backendSecret},
		{Identity: broker.Identity{Username: attacker, Role: broker.RoleDevice, Device: attacker}, Secret: "mallory-secret-0123456789abcdef"},
		{Identity: broker.Identity{Username: victim, Role: broker.RoleDevice, Device: victim}, Secret: "victim-secret-0123456789abcdef0"},
	}
	secret := map[string]string{}
	for _, a := range accounts {
		secret[a.Username] = a.Secret
	}
	for _, b := range []struct {
		name  string
		start func(t *testing.T, topics schemas.Topics) string
	}{
		{"mochi", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMochi(t, broker.MQTTServerConfig{Auth: testutil.CredentialStore(t, accounts), Topics: topics}).URL()
		}},
		{"nats", func(t *testing.T, topics schemas.Topics) string {
			srv := testutil.StartNATS(t, broker.NATSServerConfig{Auth: testutil.CredentialStore(t, accounts), Topics: topics})
			return srv.URL()
		}},
		{"mosquitto-config", func(t *testing.T, topics schemas.Topics) string {
			return testutil.StartMosquittoWithPolicy(t, topics, accounts).URL()
		}},
	} {
		t.Run(b.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			url := b.start(t, topics)
			dial := func(user string, shared bool) broker.Transport {
				cid := user
				if shared {
					cid = "pub-" + randomID("")[2:10]
				}
				return testutil.Dial(t, broker.Config{URL: url, Topics: topics, Username: user, Password: secret[user],
					ClientID: cid, SharedMember: shared, Logger: testLogger()})
			}
			e := newEnv(t)
			e.cfg.Topics = topics
			e.dial = func(string, bool) broker.Transport { return dial(backend, true) }
			p, _ := e.start(func(c *Config) { c.WaveHold = -1 })
			data, table := uploadTable(t, e, p, 8*1024)
			digest := hex.EncodeToString(table.Image)
			img := tableOf(t, p, digest)
			enrol(t, e, p, table, attacker, victim)
			atk := dial(attacker, false)
			vic := dial(victim, false)
			victimRx := listen(t, vic, topics, victim)
			attackerRx := listen(t, atk, topics, attacker)

			all := schemas.NewBitmap(table.NumChunks())
			for i := range table.NumChunks() {
				all.Set(i)
			}
			request := func(requester string, replyTo string, wantTable bool) []byte {
				b, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: table.Image, ChunkSize: table.ChunkSize,
					Bitmap: all, ReplyTo: replyTo, Requester: requester, WantTable: wantTable})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			victimReply, _ := topics.ChunkReply(victim)
			attackerReply, _ := topics.ChunkReply(attacker)
			own, _ := topics.ChunkRequestsFrom(attacker)
			victimReq, _ := topics.ChunkRequestsFrom(victim)
			// The topic every device published requests on before they had
			// their own: nothing may be served from it.
			imageReq := schemas.Topic{MQTT: topics.Root() + "/v1/img/" + digest + "/req", NATS: strings.ReplaceAll(topics.Root(), "/", ".") + ".v1.img." + digest + ".req"}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ownSent := 0
			send := func(tp schemas.Topic, b []byte) {
				// A broker may refuse the publish (not authorised): that is
				// the defence working, not a test failure.
				_ = atk.Publish(ctx, tp, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
				if tp == own {
					ownSent++
				}
			}

			// 1. Traffic aimed at the victim: its reply topic under the
			// victim's name, under the attacker's own name, and on every
			// request topic.
			for _, tp := range []schemas.Topic{imageReq, own, victimReq} {
				for _, dialect := range []string{victimReply.MQTT, victimReply.NATS} {
					send(tp, request(victim, dialect, true))
					send(tp, request(attacker, dialect, true))
				}
			}
			// 2. Invented requesters, each on its own reply topic, asking
			// for the table (which, before, counted them as joined).
			for i := range 50 {
				ghost := fmt.Sprintf("ghost-%02d", i)
				gr, _ := topics.ChunkReply(ghost)
				send(imageReq, request(ghost, gr.NATS, true))
				send(own, request(ghost, gr.MQTT, true))
				send(own, request(ghost, gr.NATS, true))
			}
			refused := func() float64 {
				n := 0.0
				for _, l := range []string{"wrong-requester", "bad-reply-to", "wrong-topic"} {
					n += counterValue(p.met.chunkRequests.WithLabelValues(l))
				}
				return n
			}
			waitFor(t, 20*time.Second, func() string {
				return fmt.Sprintf("%v of %d requests on the attacker's topic refused; victim got %d messages", refused(), ownSent, victimRx.count())
			}, func() bool { return victimRx.count() > 0 || refused() >= float64(ownSent) })
			if n := victimRx.count(); n > 0 {
				t.Errorf("victim received %d messages (%d bytes) it never asked for", n, victimRx.bytes())
			}
			// The victim now asks for its table: it gets that and nothing
			// else (every spoofed request was judged before).
			tableOnly, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: table.Image, ChunkSize: table.ChunkSize,
				ReplyTo: victimReply.NATS, Requester: victim, WantTable: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := vic.Publish(ctx, victimReq, tableOnly, broker.PublishOptions{Family: broker.FamilyChunkRequest}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, func() string { return "the victim's own table" }, func() bool { return victimRx.tables() > 0 })
			if n, tb := victimRx.count(), victimRx.tables(); n != 1 || tb != 1 {
				t.Errorf("victim received %d messages (%d tables) for its one table request: traffic was aimed at it", n, tb)
			}
			p.dl.waveMu.Lock()
			for who := range p.dl.waves[digest].tables {
				if who != victim && who != attacker {
					t.Errorf("chunk table state kept for %q, a requester the broker never authenticated", who)
				}
			}
			p.dl.waveMu.Unlock()
			p.dl.reqs.mu.Lock()
			for k := range p.dl.reqs.m {
				if !strings.HasSuffix(k, "."+victim) && !strings.HasSuffix(k, "."+attacker) {
					t.Errorf("request account kept for %q", k)
				}
			}
			p.dl.reqs.mu.Unlock()

			// 3. Amplification: the attacker asks for the whole image, for
			// itself, 60 times.
			served := func() float64 {
				n := 0.0
				for _, l := range []string{"served", "rate-limited", "over-budget", "dropped"} {
					n += counterValue(p.met.chunkRequests.WithLabelValues(l))
				}
				return n
			}
			before := served()
			for range 60 {
				send(own, request(attacker, attackerReply.MQTT, false))
			}
			budget := p.dl.budgetFor(img)
			// The 60 requests ask for far more than the budget, so the run
			// settles when the attacker's account is used up and it has
			// received all it was charged for ("served" counts a request
			// when its sends start, so a judged count alone is too early).
			account := func() (sent, left int64) {
				p.dl.reqs.mu.Lock()
				defer p.dl.reqs.mu.Unlock()
				for k, a := range p.dl.reqs.m {
					if strings.HasSuffix(k, "."+attacker) {
						return a.sent, a.budget - a.sent
					}
				}
				return 0, budget
			}
			waitFor(t, 20*time.Second, func() string {
				sent, left := account()
				return fmt.Sprintf("judged %v of 60; attacker received %d bytes (%d as charged), charged %d, %d left of its budget",
					served()-before, attackerRx.bytes(), attackerRx.charged(), sent, left)
			}, func() bool {
				sent, left := account()
				return attackerRx.bytes() > budget ||
					(served()-before >= 60 && left < int64(img.info.ChunkSize)+chunkOverhead && attackerRx.charged() == sent)
			})
			if got := attackerRx.bytes(); got > budget {
				t.Errorf("60 requests for a %d-byte image made the publisher send %d bytes to one device (budget %d)", len(data), got, budget)
			}
			if got := attackerRx.bytes(); got < int64(len(data)) {
				t.Errorf("the attacker, a target of the campaign, received %d bytes of a %d-byte image: its first requests were not served", got, len(data))
			}
			if victimRx.count() != 1 {
				t.Errorf("victim received %d messages, want its one table", victimRx.count())
			}
			if !bytes.Equal(attackerRx.firstImage(table), data) {
				t.Error("the attacker's own chunks do not assemble the image")
			}
		})
	}
}

func tableOf(t *testing.T, p *Publisher, digest string) *imageData {
	t.Helper()
	d, err := p.loadImage(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// rx collects what a device receives on its chunk reply topic.
type rx struct {
	mu     sync.Mutex
	msgs   [][]byte
	n      atomic.Int64
	nbytes atomic.Int64
}

func listen(t *testing.T, tr broker.Transport, topics schemas.Topics, dev string) *rx {
	t.Helper()
	r := &rx{}
	rt, _ := topics.ChunkReply(dev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tr.Subscribe(ctx, rt, func(_ context.Context, m broker.Message) {
		// Counted under the lock, so that count and tables agree.
		r.mu.Lock()
		r.msgs = append(r.msgs, bytes.Clone(m.Payload))
		r.n.Add(1)
		r.nbytes.Add(int64(len(m.Payload)))
		r.mu.Unlock()
	}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
		t.Fatal(err)
	}
	return r
}

// charged is what the publisher charges a requester's budget for the
// messages received: a chunk's data plus chunkOverhead, a table's size.
func (r *rx) charged() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, m := range r.msgs {
		var c schemas.Chunk
		if schemas.Decode(m, &c) == nil {
			n += int64(len(c.Data)) + chunkOverhead
			continue
		}
		n += int64(len(m))
	}
	return n
}

func (r *rx) count() int   { return int(r.n.Load()) }
func (r *rx) bytes() int64 { return r.nbytes.Load() }

func (r *rx) tables() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		var tb schemas.ChunkTable
		if schemas.Decode(m, &tb) == nil {
			n++
		}
	}
	return n
}

// firstImage assembles the image from the chunks received.
func (r *rx) firstImage(table *schemas.ChunkTable) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]byte, table.ImageSize)
	for _, m := range r.msgs {
		var c schemas.Chunk
		if schemas.Decode(m, &c) == nil && table.VerifyChunk(c.Index, c.Data) == nil {
			copy(out[int(c.Index)*int(table.ChunkSize):], c.Data)
		}
	}
	return out
}
