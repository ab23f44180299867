package faults

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// storeBytes follows mosquitto's $SYS/broker/store/messages/bytes (the
// bytes of messages the broker holds: retained, queued for offline
// sessions, in flight).
type storeBytes struct {
	last, max atomic.Int64
	samples   atomic.Int64
}

// sysStoreBytes is mosquitto's own topic, outside any firmcast root.
var sysStoreBytes = schemas.Topic{MQTT: "$SYS/broker/store/messages/bytes"}

func watchStoreBytes(t *testing.T, ctx context.Context, r *rig) *storeBytes {
	t.Helper()
	tr := testutil.Dial(t, broker.Config{URL: r.mq.URL(), Topics: r.topics, Logger: r.log})
	s := &storeBytes{}
	_, err := tr.Subscribe(ctx, sysStoreBytes, func(_ context.Context, m broker.Message) {
		n, err := strconv.ParseInt(strings.TrimSpace(string(m.Payload)), 10, 64)
		if err != nil {
			return
		}
		s.last.Store(n)
		for {
			cur := s.max.Load()
			if n <= cur || s.max.CompareAndSwap(cur, n) {
				break
			}
		}
		s.samples.Add(1)
	}, broker.SubscribeOptions{Family: broker.FamilyControl, Retained: true})
	if err != nil {
		t.Fatalf("subscribe %s: %v", sysStoreBytes.MQTT, err)
	}
	return s
}

// TestOfflineDevicesBrokerStore cuts the network links of 100 devices
// mid-download (their MQTT sessions and subscriptions stay on the broker)
// and has the publisher broadcast waves of the image to them while they
// are offline (driven by the test with Publisher.Wave: with wave
// gathering the publisher's own later waves are only for devices that
// joined since, and none joins while the links are down). The bytes
// mosquitto stores must stay bounded (chunks are QoS 0: nothing is queued
// per offline device; far below one image per device), and when the
// links come back every device must finish confirmed on v2.
func TestOfflineDevicesBrokerStore(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const devices = 100
	linked := map[int]bool{}
	for i := range devices {
		linked[i] = true
	}
	r := newRig(t, ctx, rigConfig{
		devices:   devices,
		imageSize: 128 << 10,
		mosquitto: "sys_interval 1\n",
		linked:    linked,
		publisher: func(c *publisher.Config) { c.WaveInterval = time.Second },
		// Throttled links (32 KiB/s toward each device, about four
		// seconds for the image) so that the cut comes mid-download: a
		// device that had the whole image before the cut would go to
		// trial while offline, and roll back, its health check unable to
		// reach the broker. The throttle is in the link, not in the
		// device's transport: throttled there, the device had already
		// taken the whole wave into its socket buffers before the cut and
		// sometimes finished the download offline.
		linkRate: 32 << 10,
	})
	sb := watchStoreBytes(t, ctx, r)
	id := r.startCampaign(ctx)
	started := time.Now()
	chunks := (len(r.v2) + int(r.cfg.chunkSize) - 1) / int(r.cfg.chunkSize)
	r.waitDevices(ctx, "downloads a tenth done", func(map[string]schemas.State) bool {
		n := 0
		for _, d := range r.devs {
			n += d.got.len()
		}
		return n >= devices*chunks/10
	})
	before := r.deviceStates()
	if n := count(before, schemas.StateConfirmed); n == devices {
		t.Fatalf("all devices confirmed before the cut: the scenario tested nothing")
	}
	baseStore, baseSamples := sb.last.Load(), sb.samples.Load()
	for _, d := range r.devs {
		d.link.cut()
	}
	sb.max.Store(0)
	wave0 := r.src.broadcast.Load()
	image := int64(len(r.v2))
	t.Logf("%v after the campaign started: cut %d links with %d devices downloading, %d confirmed; broker store %d B",
		time.Since(started).Round(time.Millisecond), devices, count(before, schemas.StateDownloading), count(before, schemas.StateConfirmed), baseStore)
	// Stay offline while the publisher broadcasts at least three more
	// images' worth and mosquitto reports its store three times. The
	// waves are spaced by the campaign's WaveInterval, as the
	// publisher's own would be.
	digest := schemas.DigestHex(r.d2[:])
	for waves := 0; r.src.broadcast.Load()-wave0 < 3*image || sb.samples.Load()-baseSamples < 3; waves++ {
		if waves > 0 {
			select {
			case <-ctx.Done():
				t.Fatalf("broadcasting to the offline devices: %v", ctx.Err())
			case <-time.After(time.Second):
			}
		}
		if err := r.publisher().Pub.Wave(ctx, digest); err != nil {
			t.Fatalf("wave %d to the offline devices: %v", waves, err)
		}
	}
	for _, d := range r.devs {
		rec, err := deviceagent.LoadState(d.dir)
		if err != nil {
			t.Fatal(err)
		}
		// States are ordered: past downloading is verifying the image or
		// later.
		if before[d.id] != schemas.StateConfirmed && rec.State > schemas.StateDownloading {
			t.Fatalf("%s reached %s while offline: the cut came too late to test anything", d.id, rec.State)
		}
	}
	maxStore := sb.max.Load()
	t.Logf("offline until %v: the publisher broadcast %d B (%.1f images) to them; mosquitto stored at most %d B (%.2f images; %.4f of image x offline devices)",
		time.Since(started).Round(time.Millisecond), r.src.broadcast.Load()-wave0, float64(r.src.broadcast.Load()-wave0)/float64(image), maxStore, float64(maxStore)/float64(image), float64(maxStore)/float64(image*devices))
	if bound := baseStore + image; maxStore > bound {
		t.Errorf("mosquitto stored up to %d B while %d devices were offline, more than its store before the cut plus one image (%d B)", maxStore, devices, bound)
	}
	// The links come back fast: throttled, the repairs broadcast to a
	// hundred devices at once queue up in mosquitto behind each slow link.
	for _, d := range r.devs {
		d.link.unthrottle()
		d.link.restore()
	}
	r.finishAll(ctx, id)
	t.Logf("every device confirmed %v after the campaign started", time.Since(started).Round(time.Millisecond))
	r.checkOnV2(r.devs)
	r.checkRefetch(0)
}
