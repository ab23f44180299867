package publisher

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// Loss summaries bound to identity (issue 14, item 7), end to end on
// brokers that enforce the access policy (mochi, embedded NATS, and a
// mosquitto process started from the generated config), against a
// publisher serving a coded image with repair batching on. A loss summary
// is a chunk request sent after a wave (schemas.WaveEnd): it travels on
// the sender's own request topic (schemas.Topics.ChunkRequestsFrom), the
// only one the broker lets it publish requests on, so its topic is its
// authenticated sender; internal/hostile's TestAccessMatrix has the
// broker cells ("chunk requests A/B").
//
// The attacker, a device notified in the same campaign as its victim,
// sends summaries of delivery protocol 2 (coded) claiming the whole image
// lost, and to have heard every end marker (ChunkRequest.Seen at its
// largest: no round counts as still on its way to it): as the victim on
// the victim's topic (the broker refuses), as the victim or with the
// victim's reply address on its own topic (the
// publisher refuses), then as itself, 60 times. Must hold: nothing
// reaches the victim's reply topic; the repair the attacker's summaries
// cause (parity, announcements, re-broadcast chunks, which the victim
// hears on the broadcast topic, and unicast chunks, which go to the
// attacker alone) stays within the attacker's byte budget
// (Config.DeviceImageBudget), plus the announcements and at most the
// committed parity, once (see below); every parity chunk broadcast is one
// the signed table commits, none twice in the wave; past them the
// attacker is sent chunks, charged.
func TestForgedLossSummaries(t *testing.T) {
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
			return testutil.StartNATS(t, broker.NATSServerConfig{Auth: testutil.CredentialStore(t, accounts), Topics: topics}).URL()
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
			p, stop := e.start(func(c *Config) {
				c.RepairWindow, c.WaveHold, c.ChunkSize, c.CodedRepair = 20*time.Millisecond, -1, 1024, true
				c.CodedBlock, c.CodedParity = 32, 8
			})
			_, table := uploadTable(t, e, p, 64*1024) // 64 chunks: 2 blocks of 32, 8 parity each
			if !table.Coded() {
				t.Fatal("the image's table is not coded")
			}
			digest := hex.EncodeToString(table.Image)
			img := tableOf(t, p, digest)
			enrol(t, e, p, table, attacker, victim)
			atk := dial(attacker, false)
			vic := dial(victim, false)
			victimRx := listen(t, vic, topics, victim)
			// What the victim hears on the image's broadcast topic.
			var bcastBytes, parityMsgs, parityOut atomic.Int64
			bt, _ := topics.Chunks(digest)
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := vic.Subscribe(sctx, bt, func(_ context.Context, m broker.Message) {
				bcastBytes.Add(int64(len(m.Payload)))
				if schemas.IsParityChunk(m.Payload) {
					parityMsgs.Add(1)
					var pc schemas.ParityChunk
					if schemas.Decode(m.Payload, &pc) != nil || pc.Index >= table.ParityPerBlock || pc.Block >= table.NumBlocks() {
						parityOut.Add(1)
					}
				}
			}, broker.SubscribeOptions{Family: broker.FamilyChunk}); err != nil {
				t.Fatal(err)
			}
			scancel()

			all := schemas.NewBitmap(table.NumChunks())
			for i := range table.NumChunks() {
				all.Set(i)
			}
			summary := func(requester, replyTo string) []byte {
				b, err := schemas.Encode(&schemas.ChunkRequest{V: schemas.Version, Image: table.Image, ChunkSize: table.ChunkSize,
					Bitmap: all, ReplyTo: replyTo, Requester: requester, Protocol: schemas.ProtocolCoded, Seen: math.MaxUint32})
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			victimReply, _ := topics.ChunkReply(victim)
			attackerReply, _ := topics.ChunkReply(attacker)
			own, _ := topics.ChunkRequestsFrom(attacker)
			victimReq, _ := topics.ChunkRequestsFrom(victim)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ownSent := 0
			send := func(tp schemas.Topic, b []byte) {
				// The broker may refuse the publish: the defence working.
				_ = atk.Publish(ctx, tp, b, broker.PublishOptions{Family: broker.FamilyChunkRequest})
				if tp == own {
					ownSent++
				}
			}
			refused := func() float64 {
				n := 0.0
				for _, l := range []string{"wrong-requester", "bad-reply-to", "wrong-topic"} {
					n += counterValue(p.met.chunkRequests.WithLabelValues(l))
				}
				return n
			}
			judged := func() float64 {
				n := 0.0
				for _, l := range []string{"served", "rate-limited", "over-budget", "dropped"} {
					n += counterValue(p.met.chunkRequests.WithLabelValues(l))
				}
				return n
			}

			// 1. Summaries as the victim: on the victim's topic, and on
			// the attacker's own naming the victim or its reply topic.
			for _, dialect := range []string{victimReply.MQTT, victimReply.NATS} {
				send(victimReq, summary(victim, dialect))
				send(own, summary(victim, dialect))
				send(own, summary(attacker, dialect))
			}
			waitFor(t, 20*time.Second, func() string {
				return fmt.Sprintf("%v of %d summaries on the attacker's topic refused; %v judged", refused(), ownSent, judged())
			}, func() bool { return refused() >= float64(ownSent) })
			if j := judged(); j != 0 {
				t.Errorf("%v summaries as the victim were served or charged", j)
			}
			if rep := p.dl.egress.Repair.Load() + p.dl.egress.Unicast.Load(); rep != 0 {
				t.Errorf("summaries as the victim made the publisher send %d bytes", rep)
			}

			// 2. Amplification: 60 summaries of the whole image, as itself,
			// each once the repair of the one before went out (so that no
			// batch merges two of them: the most an attacker can get).
			budget := p.dl.budgetFor(img)
			account := func() (sent int64) {
				p.dl.reqs.mu.Lock()
				defer p.dl.reqs.mu.Unlock()
				for k, a := range p.dl.reqs.m {
					if strings.HasSuffix(k, "."+attacker) {
						return a.sent
					}
				}
				return 0
			}
			idle := func() bool {
				p.dl.repairMu.Lock()
				defer p.dl.repairMu.Unlock()
				return len(p.dl.repairs) == 0
			}
			for i := range 60 {
				before := judged()
				send(own, summary(attacker, attackerReply.MQTT))
				waitFor(t, 20*time.Second, func() string {
					return fmt.Sprintf("summary %d: judged %v; attacker charged %d of %d", i, judged(), account(), budget)
				}, func() bool { return judged() > before && idle() })
			}
			if got := account(); got <= budget-int64(table.ChunkSize)-chunkOverhead {
				t.Errorf("60 summaries of the whole image charged the attacker %d of its %d budget: not all were served", got, budget)
			}
			stop() // ends any repair still being sent: the counters are final
			announced := int64(counterValue(p.met.chunkBytes.WithLabelValues("announce")))
			repair, unicast := p.dl.egress.Repair.Load(), p.dl.egress.Unicast.Load()
			// The committed parity goes out uncharged once a wave; once
			// spent, a requester is sent the chunks it names, charged to
			// it: the attacker can add at most the committed parity,
			// once, beyond its budget.
			pm, _ := schemas.Encode(&schemas.ParityChunk{V: schemas.Version, Image: table.Image, Block: 1, Index: 7, Data: make([]byte, table.ChunkSize)})
			committed := int64(table.NumBlocks() * table.ParityPerBlock)
			most := budget + announced + committed*int64(len(pm))
			t.Logf("budget %d; charged %d; repair %d B (%d of announcements, %d parity chunks heard), unicast %d B; victim heard %d B broadcast, %d B on its reply topic",
				budget, account(), repair, announced, parityMsgs.Load(), unicast, bcastBytes.Load(), victimRx.bytes())
			if n := victimRx.count(); n > 0 {
				t.Errorf("the victim received %d messages (%d bytes) on its reply topic", n, victimRx.bytes())
			}
			if got := repair + unicast; got > most {
				t.Errorf("forged summaries made the publisher send %d bytes of repair, over the attacker's budget %d + the committed parity and announcements (%d)", got, budget, most-budget)
			}
			if parityMsgs.Load() > committed {
				t.Errorf("%d parity chunks broadcast, %d committed: parity went out again in a wave", parityMsgs.Load(), committed)
			}
			if unicast == 0 {
				t.Error("60 summaries of the whole image were not answered past the committed parity (no chunks sent to the attacker)")
			}
			if n := parityOut.Load(); n > 0 {
				t.Errorf("%d parity chunks broadcast outside what the signed table commits", n)
			}
			if bcastBytes.Load() > most {
				t.Errorf("the victim heard %d bytes of repair broadcast, over the attacker's budget %d + the committed parity and announcements", bcastBytes.Load(), budget)
			}
		})
	}
}
