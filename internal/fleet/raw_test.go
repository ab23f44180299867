package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestRawFanout checks the baseline's subscribers really hold the image:
// every output file equals it, on MQTT (embedded) and NATS (embedded).
func TestRawFanout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	img := Image(5, "raw", 100<<10+123)
	urls := map[string]string{
		"mqtt": testutil.StartMochi(t, broker.MQTTServerConfig{}).URL(),
		"nats": testutil.StartNATS(t, broker.NATSServerConfig{}).URL(),
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			res, err := RawFanout(ctx, RawConfig{URL: url, Subscribers: 4, Image: img, ChunkSize: 4096, Dir: dir, Idle: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if res.Complete != 4 || res.BadChunks != 0 {
				t.Fatalf("%+v: want 4 complete subscribers and no bad chunk", res)
			}
			for i := range 4 {
				b, err := os.ReadFile(filepath.Join(dir, "raw-000"+string(rune('0'+i))))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, img) {
					t.Fatalf("subscriber %d wrote %d bytes that differ from the image", i, len(b))
				}
			}
		})
	}
}
