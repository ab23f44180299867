package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

// TestServeExternalBrokers runs `serve --broker --nats` against brokers it
// does not own and uses its API: the publisher is up, no embedded broker.
func TestServeExternalBrokers(t *testing.T) {
	mq := testutil.StartMochi(t, broker.MQTTServerConfig{})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	port := testutil.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	root := newRootCmd()
	root.SetArgs([]string{"serve", "--broker", mq.URL(), "--nats", ns.URL(), "--http-listen", "127.0.0.1:" + strconv.Itoa(port),
		"--api-key", "fk-external-test-key-0123456789ab", "--data-dir", t.TempDir(), "--log-level", "error"})
	go func() { done <- root.ExecuteContext(ctx) }()
	cl := &publisher.Client{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", port), Key: "fk-external-test-key-0123456789ab"}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(cl.BaseURL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("serve exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("serve --broker --nats never answered /healthz")
		}
	}
	if _, err := cl.Campaigns(ctx); err != nil {
		t.Errorf("campaign list through the API: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	_, err := runFirmcast(t, "serve", "--broker", mq.URL())
	if err == nil {
		t.Fatal("serve --broker without --nats succeeded")
	}
}
