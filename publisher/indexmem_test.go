package publisher

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// BenchmarkIndexMemory measures what one device's campaign state costs in
// an instance's in-memory index (every instance holds the whole fleet's):
// 100,000 devices of one campaign, each decoded from its stored JSON
// record as the KV watch does, the heap measured after a GC before and
// after. Its peer is the stored record's size.
//
//	nice -n 19 go test -run '^$' -bench IndexMemory -benchtime 1x ./publisher/
func BenchmarkIndexMemory(b *testing.B) {
	const n = 100_000
	now := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	var recBytes int
	for range b.N {
		recs := make([][]byte, n)
		for i := range n {
			st := DeviceState{Campaign: "c-0123456789abcdef", Device: fmt.Sprintf("dev-%06d", i), Phase: 1,
				State: DevState(schemas.StateDownloading), Counter: 7, BytesDone: 524288, BytesTotal: 1 << 20,
				ActiveVersion: 1, Notified: now, Progress: now, Updated: now}
			recs[i], _ = json.Marshal(st)
			recBytes += len(recs[i])
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		x := &index{camps: map[string]*campIndex{}}
		for i, r := range recs {
			var st DeviceState
			if err := json.Unmarshal(r, &st); err != nil {
				b.Fatal(err)
			}
			x.putDev(st, uint64(i+1))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(after.HeapAlloc-before.HeapAlloc) / n
		b.ReportMetric(per, "B/device")
		b.ReportMetric(float64(recBytes)/float64(n), "record-B")
		b.ReportMetric(per/(float64(recBytes)/float64(n)), "ratio")
		runtime.KeepAlive(x)
		runtime.KeepAlive(recs)
		recBytes = 0
	}
}
