package blockcode

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// BenchmarkWaveEgress measures the publisher's chunk egress (encoded
// message bytes, relative to the image size) to deliver an 8 MiB image in
// 16 KiB chunks to N devices over a lossy broadcast, with coded repair at
// block size K (K=0: uncoded repair, for comparison), until every device
// holds every block. It is a model of the delivery rules with the real
// message sizes, not a run of the publisher: loss is drawn per device and
// message, independent or in bursts (a two-state Gilbert-Elliott channel,
// mean burst 8 messages, same mean rate).
//
//   - The wave sends every chunk once in carousel order (Order: blocks
//     interleaved), a copy of the chunk table every 128 chunks (the coded
//     table with its parity hashes) and an end marker; a device that lost
//     every table copy gets one by unicast.
//   - Coded repair: after each wave or round, every device that still
//     lacks symbols reports per-block counts; the publisher broadcasts, per
//     block, as many fresh parity chunks as the neediest device lacks
//     (blocks interleaved), then an end marker. A block rebuilds once it
//     holds as many distinct source and parity chunks as source chunks. A
//     block whose P parity chunks are spent is repaired with the source
//     chunks its needy devices lack.
//   - Uncoded repair (K=0): a chunk lacked by 2 or more devices is
//     broadcast again, one lacked by one device is sent to it alone.
//
// Metrics: total-x-image (all egress / image size), wave-x-image,
// repair-rounds, parity-per-block (fresh parity sent per block, all
// rounds), decode-mem-KiB (DecodeMemory with the default stripe and the
// most chunks any device lost in one block).
func BenchmarkWaveEgress(b *testing.B) {
	const imageSize, chunkSize = 8 << 20, 16 << 10
	for _, n := range []int{100, 1000} {
		for _, ch := range []struct {
			name  string
			burst bool
		}{{"loss=5%-independent", false}, {"loss=5%-burst8", true}} {
			for _, k := range []int{0, 32, 64, 128, 192} {
				b.Run(fmt.Sprintf("N=%d/%s/K=%d", n, ch.name, k), func(b *testing.B) {
					m := newModel(b, imageSize, chunkSize, k)
					var total, wave, rounds, parity, mem float64
					for it := range b.N {
						r := m.run(n, 0.05, ch.burst, uint64(it))
						total += r.total / imageSize
						wave += r.wave / imageSize
						rounds += float64(r.rounds)
						parity += r.parityPerBlock
						mem += float64(r.decodeMem) / 1024
					}
					f := float64(b.N)
					b.ReportMetric(total/f, "total-x-image")
					b.ReportMetric(wave/f, "wave-x-image")
					b.ReportMetric(rounds/f, "repair-rounds")
					b.ReportMetric(parity/f, "parity-per-block")
					b.ReportMetric(mem/f, "decode-mem-KiB")
				})
			}
		}
	}
}

// model holds the message sizes and the table of one image and code.
type model struct {
	t                          *schemas.ChunkTable
	chunkMsg, parityMsg, table float64
	marker                     float64
	order                      []uint32
}

func newModel(tb testing.TB, size, chunk, k int) *model {
	im := make([]byte, size)
	for i := range im {
		im[i] = byte(i * 7)
	}
	plain, err := schemas.BuildChunkTable(bytes.NewReader(im), uint32(chunk))
	if err != nil {
		tb.Fatal(err)
	}
	t := plain
	if k > 0 {
		// P = K/4 parity chunks per block (within the code's 256 shards):
		// at 5% loss a block of K lacks K/20 on average.
		if t, err = Commit(context.Background(), plain, k, min(k/4, schemas.MaxCodeShards-k), reader(im, uint32(chunk))); err != nil {
			tb.Fatal(err)
		}
	}
	enc := func(msg schemas.Message) float64 {
		b, err := schemas.Encode(msg)
		if err != nil {
			tb.Fatal(err)
		}
		return float64(len(b))
	}
	d := make([]byte, chunk)
	return &model{
		t:         t,
		chunkMsg:  enc(&schemas.Chunk{V: schemas.Version, Image: t.Image, Index: 511, Data: d}),
		parityMsg: enc(&schemas.ParityChunk{V: schemas.Version, Image: t.Image, Block: 3, Index: 31, Data: d}),
		table:     enc(t),
		marker:    enc(&schemas.WaveEnd{V: schemas.Version, Image: t.Image, Wave: 1, Sent: []schemas.Range{{First: 0, Count: t.NumChunks()}}}),
		order:     Order(t),
	}
}

type result struct {
	total, wave    float64
	rounds         int
	parityPerBlock float64
	decodeMem      int64
}

// channel is one device's loss process.
type channel struct {
	r     *rand.Rand
	rate  float64
	burst bool
	bad   bool
}

// lost draws whether the next message to this device is lost.
func (c *channel) lost() bool {
	if !c.burst {
		return c.r.Float64() < c.rate
	}
	// Gilbert-Elliott: bad state loses everything, mean stay 8 messages;
	// good -> bad at the rate that makes the bad fraction c.rate.
	const stay = 8.0
	if c.bad {
		c.bad = c.r.Float64() >= 1/stay
	} else {
		c.bad = c.r.Float64() < c.rate/(1-c.rate)/stay
	}
	return c.bad
}

func (m *model) run(n int, rate float64, burst bool, seed uint64) result {
	t := m.t
	nc := int(t.NumChunks())
	devs := make([]*channel, n)
	have := make([][]bool, n) // source chunks held
	for d := range devs {
		devs[d] = &channel{r: rand.New(rand.NewPCG(seed, uint64(d))), rate: rate, burst: burst}
		have[d] = make([]bool, nc)
	}
	var res result
	// The wave.
	tablesGot := make([]bool, n)
	for s, i := range m.order {
		if s%128 == 0 {
			res.wave += m.table
			for d, c := range devs {
				if !c.lost() {
					tablesGot[d] = true
				}
			}
		}
		res.wave += m.chunkMsg
		for d, c := range devs {
			if !c.lost() {
				have[d][i] = true
			}
		}
	}
	res.wave += m.marker
	for _, c := range devs {
		c.lost()
	}
	res.total = res.wave
	for _, got := range tablesGot {
		if !got {
			res.total += m.table
		}
	}
	if t.Coded() {
		m.coded(&res, devs, have)
	} else {
		m.uncoded(&res, devs, have)
	}
	return res
}

func (m *model) coded(res *result, devs []*channel, have [][]bool) {
	t := m.t
	nb := int(t.NumBlocks())
	par := make([][]int, len(devs)) // parity chunks held, per device and block
	for d := range par {
		par[d] = make([]int, nb)
	}
	lacks := func(d, b int) int {
		first, count := t.BlockChunks(uint32(b))
		src := 0
		for i := first; i < first+count; i++ {
			if have[d][i] {
				src++
			}
		}
		return max(0, int(count)-src-par[d][b])
	}
	// The most any device lost in a block, for the decode memory.
	maxLost := 0
	for d := range devs {
		for b := range nb {
			maxLost = max(maxLost, lacks(d, b))
		}
	}
	res.decodeMem = DecodeMemory(min(maxLost, int(t.ParityPerBlock)), DefaultStripe, int(t.ChunkSize), false)
	spent := make([]uint32, nb) // parity chunks sent per block
	for res.rounds < 100 {
		need := make([]int, nb)
		short := false
		for d := range devs {
			for b := range nb {
				if l := lacks(d, b); l > 0 {
					need[b] = max(need[b], l)
					short = true
				}
			}
		}
		if !short {
			break
		}
		res.rounds++
		send, left := Round(t, need, spent)
		for _, s := range send {
			res.total += m.parityMsg
			for d, c := range devs {
				if !c.lost() && lacks(d, int(s.Block)) > 0 {
					par[d][s.Block]++
				}
			}
		}
		// Parity spent: source chunks the needy devices lack.
		for b, k := range left {
			first, count := t.BlockChunks(uint32(b))
			for i := first; i < first+count && k > 0; i++ {
				for d := range devs {
					if !have[d][i] && lacks(d, b) > 0 {
						k--
						res.total += m.chunkMsg
						for d, c := range devs {
							if !c.lost() {
								have[d][i] = true
							}
						}
						break
					}
				}
			}
		}
		res.total += m.marker
	}
	var all uint32
	for _, u := range spent {
		all += u
	}
	res.parityPerBlock = float64(all) / float64(nb)
}

func (m *model) uncoded(res *result, devs []*channel, have [][]bool) {
	nc := len(have[0])
	for res.rounds < 100 {
		want := make([]int, nc)
		short := false
		for d := range devs {
			for i := range nc {
				if !have[d][i] {
					want[i]++
					short = true
				}
			}
		}
		if !short {
			break
		}
		res.rounds++
		for i, w := range want {
			switch {
			case w >= 2:
				res.total += m.chunkMsg
				for d, c := range devs {
					if !c.lost() {
						have[d][i] = true
					}
				}
			case w == 1:
				res.total += m.chunkMsg
				for d, c := range devs {
					if !have[d][i] && !c.lost() {
						have[d][i] = true
					}
				}
			}
		}
		res.total += m.marker
	}
}

// BenchmarkDecodeBlock: one device rebuilding one block of K = 128 chunks
// of 16 KiB with 6 of them lost (5% loss), as a device does after a
// repair round: a fresh Collector (each device has its own), the parity
// added, the held chunks read back from the slot in stripes. Per op: one
// block.
func BenchmarkDecodeBlock(b *testing.B) {
	for _, lost := range []int{1, 6, 16} {
		b.Run(fmt.Sprintf("K128-lost%d", lost), func(b *testing.B) {
			im := newImage(b, 128*16<<10, 16<<10, 128, 32, 9)
			c := im.coded
			par := parityMsgs(b, im)
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(128 * 16 << 10)
			for b.Loop() {
				lostSet := map[uint32]bool{}
				for _, x := range r.Perm(128)[:lost] {
					lostSet[uint32(x)] = true
				}
				s := newSlot(im, func(i uint32) bool { return lostSet[i] })
				col, err := NewCollector(c, 0)
				if err != nil {
					b.Fatal(err)
				}
				for _, p := range par {
					if _, err := col.Add(p, s.lacking(c, p.Block)); err != nil {
						b.Fatal(err)
					}
				}
				if err := col.Decode(context.Background(), 0, func(i uint32) bool { return s.have[i] }, s, s.write(c)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAccumulatorAdd: the publisher's wave adding each chunk of an
// image to its block's parity (K = 128, P = 32, 16 KiB chunks), the
// chunk's digest check included. Per op: one chunk, on one goroutine
// (oneGoroutine): it runs between two sends of the wave.
func BenchmarkAccumulatorAdd(b *testing.B) {
	im := newImage(b, 128*16<<10, 16<<10, 128, 32, 9)
	b.SetBytes(16 << 10)
	var acc *Accumulator
	i := uint32(0)
	for b.Loop() {
		if i%128 == 0 {
			var err error
			if acc, err = NewAccumulator(im.coded); err != nil {
				b.Fatal(err)
			}
			i = 0
		}
		if err := acc.Add(i, im.data[i*16<<10:(i+1)*16<<10]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
