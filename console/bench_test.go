package console_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// BenchmarkCampaignPage10k measures the console's campaign page in
// chromium on a campaign of 10,000 device records (simulated: written
// straight to the per-device state bucket, as the report workers write
// them): how long the page takes to show its first page of devices, and,
// while 1,000 device transitions per second arrive for 5 s, how long
// after the last one the page shows the exact final counts.
//
//	go test -run '^$' -bench BenchmarkCampaignPage10k -benchtime 1x ./console/
func BenchmarkCampaignPage10k(b *testing.B) {
	const (
		devices = 10_000
		rate    = 1000 // transitions per second
		seconds = 5
	)
	key, _ := suit.GenerateKey("es256", nil)
	signer, _ := suit.NewKeySigner(key, 0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	topics := testutil.UniqueTopics(b)
	st := stacktest.Start(b, stack.Config{
		Topics: topics, HTTPListen: "127.0.0.1:0", Open: true, Logger: log,
		Publisher: publisher.Config{Signer: publisher.SUITSigner(signer), VendorID: make([]byte, 16), ClassID: make([]byte, 16), Logger: log},
	})
	ctx := context.Background()
	if err := st.RegisterDevice(ctx, "bench-0", "bench", ""); err != nil {
		b.Fatal(err)
	}
	img, _, err := st.Pub.UploadImage(ctx, st.Admin, "bench", strings.NewReader(string(fleet.Image(1, "b", 8<<10))))
	if err != nil {
		b.Fatal(err)
	}
	d, _ := hex.DecodeString(img.Digest)
	c, err := st.Pub.CreateCampaign(ctx, st.Admin, schemas.CampaignSpec{Image: d, Devices: []string{"bench-0"}})
	if err != nil {
		b.Fatal(err)
	}
	kv, err := st.JetStream().KeyValue(ctx, topics.Root()+"_campdev")
	if err != nil {
		b.Fatal(err)
	}
	put := func(dev int, state string, counter uint64) {
		ds, ok := publisher.ParseDevState(state)
		if !ok {
			b.Fatalf("state %q", state)
		}
		v, _ := json.Marshal(publisher.DeviceState{Campaign: c.ID, Device: fmt.Sprintf("sim-%05d", dev), State: ds, Counter: counter, Updated: time.Now().UTC()})
		if _, err := kv.Put(ctx, c.ID+"."+fmt.Sprintf("sim-%05d", dev), v); err != nil {
			b.Fatal(err)
		}
	}
	state := make([]string, devices)
	for i := range devices {
		put(i, "queued", 0)
		state[i] = "queued"
	}
	tok, _, err := st.Pub.CreateAPIKey(ctx, st.Admin, "bench", []publisher.Scope{publisher.ScopeRead})
	if err != nil {
		b.Fatal(err)
	}
	// Every record is in the index before the clock starts.
	waitCounts := func(want map[string]uint64) {
		for {
			s, _ := st.Pub.CampaignStatus(ctx, c.ID)
			if s.Counts["queued"] == want["queued"] && s.Counts["confirmed"] == want["confirmed"] {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitCounts(map[string]uint64{"queued": devices})

	bctx := newBrowser(b)
	for b.Loop() {
		signIn(b, bctx, st.HTTPURL+"/", tok)
		t0 := time.Now()
		run(b, bctx, time.Minute, "first page", chromedp.Navigate(st.HTTPURL+"/#/campaign/"+c.ID),
			chromedp.Poll(`document.querySelectorAll('#devices tbody tr').length === 100`, nil, chromedp.WithPollingInterval(10*time.Millisecond)))
		first := time.Since(t0)

		// 1,000 transitions a second: queued -> notified -> downloading ->
		// confirmed, device after device.
		next := map[string]string{"queued": "notified", "notified": "downloading", "downloading": "confirmed", "confirmed": "confirmed"}
		tk := time.NewTicker(10 * time.Millisecond)
		n, dev := 0, 0
		start := time.Now()
		for n < rate*seconds {
			<-tk.C
			due := int(time.Since(start).Seconds()*rate) - n
			for ; due > 0 && n < rate*seconds; due-- {
				state[dev] = next[state[dev]]
				put(dev, state[dev], uint64(n+1))
				n++
				dev = (dev + 1) % 2000 // 2,000 devices, each through its states
			}
		}
		tk.Stop()
		end := time.Now()
		want := map[string]int{}
		for _, s := range state {
			want[map[string]string{"queued": "queued", "notified": "pending", "downloading": "downloading", "confirmed": "confirmed"}[s]]++
		}
		expr := fmt.Sprintf(`['queued','pending','downloading','confirmed'].every((s, i) => Number(document.getElementById('count-' + s).textContent) === [%d,%d,%d,%d][i])`,
			want["queued"], want["pending"], want["downloading"], want["confirmed"])
		run(b, bctx, time.Minute, "exact counts", chromedp.Poll(expr, nil, chromedp.WithPollingInterval(10*time.Millisecond)))
		lag := time.Since(end)
		b.ReportMetric(float64(first.Milliseconds()), "first-page-ms")
		b.ReportMetric(float64(lag.Milliseconds()), "lag-ms")
		b.ReportMetric(float64(n)/end.Sub(start).Seconds(), "transitions/s")
	}
}
