package brokerproc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestProcessRestart starts a mosquitto process, restarts it on the same
// port, and stops it: Done is closed and Mem then reports the exit.
func TestProcessRestart(t *testing.T) {
	p := testutil.StartMosquitto(t, "")
	port := p.Port()
	if _, _, err := p.Mem(); err != nil {
		t.Fatal(err)
	}
	p.Restart()
	if p.Port() != port {
		t.Fatalf("port %d after restart, want %d", p.Port(), port)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, broker.Config{URL: p.URL(), Topics: testutil.UniqueTopics(t), ClientID: "probe"})
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	tr.Close(ctx)
	p.Stop()
	<-p.Done()
	if _, _, err := p.Mem(); !errors.Is(err, brokerproc.ErrExited) {
		t.Fatalf("Mem after Stop: %v", err)
	}
}
