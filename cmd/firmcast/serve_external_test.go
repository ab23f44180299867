package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

// startServe runs `firmcast serve args...` (which must include
// --http-listen 127.0.0.1:<port>) until it answers /healthz and returns
// an API client with key and a stop function that ends serve and
// returns its error.
func startServe(t *testing.T, port int, key string, args ...string) (*publisher.Client, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	root := newRootCmd()
	root.SetArgs(append([]string{"serve"}, args...))
	go func() { done <- root.ExecuteContext(ctx) }()
	stop := func() error {
		cancel()
		return <-done
	}
	cl := &publisher.Client{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", port), Key: key}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(cl.BaseURL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cl, stop
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
			<-done
			t.Fatal("serve never answered /healthz")
		}
	}
}

// TestServeExternalBrokers runs `serve --broker --nats` against brokers it
// does not own and uses its API: the publisher is up, no embedded broker.
func TestServeExternalBrokers(t *testing.T) {
	mq := testutil.StartMochi(t, broker.MQTTServerConfig{})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	port := testutil.FreePort(t)
	const key = "fk-external-test-key-0123456789ab"
	cl, stop := startServe(t, port, key, "--broker", mq.URL(), "--nats", ns.URL(), "--http-listen", "127.0.0.1:"+strconv.Itoa(port),
		"--api-key", key, "--data-dir", t.TempDir(), "--log-level", "error")
	if _, err := cl.Campaigns(context.Background()); err != nil {
		t.Errorf("campaign list through the API: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	_, err := runFirmcast(t, "serve", "--broker", mq.URL())
	if err == nil {
		t.Fatal("serve --broker without --nats succeeded")
	}
}

// TestServeKeepsMosquittoPasswd (issue 12 item 11): `serve --broker
// --mosquitto-passwd --mosquitto-pid` against a mosquitto process of the
// test's own, configured by `firmcast broker mosquitto-config`: a device
// registered through the API can connect to mosquitto, and once it is
// removed through the API its live session is dropped and it is refused.
func TestServeKeepsMosquittoPasswd(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte("backend fc-serve-1 backend-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mqDir := filepath.Join(dir, "mq")
	if _, err := runFirmcast(t, "broker", "mosquitto-config", "--out", mqDir, "--root", topics.Root(), "--credentials", creds); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(mqDir, "firmcast.conf"))
	if err != nil {
		t.Fatal(err)
	}
	mq := testutil.StartMosquitto(t, string(conf))
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	port := testutil.FreePort(t)
	const key = "fk-mosquitto-test-key-0123456789ab"
	cl, stop := startServe(t, port, key, "--broker", mq.URL(), "--nats", ns.URL(), "--http-listen", "127.0.0.1:"+strconv.Itoa(port),
		"--root", topics.Root(), "--credentials", creds, "--mosquitto-passwd", filepath.Join(mqDir, "passwd"),
		"--mosquitto-pid", strconv.Itoa(mq.PID()), "--mosquitto-reload-gap", "100ms", "--api-key", key, "--data-dir", t.TempDir(), "--log-level", "error")
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nd, err := cl.AddDevice(ctx, publisher.NewDevice{ID: "dev-1", Class: "c"})
	if err != nil {
		t.Fatal(err)
	}
	connect := func() (*testutil.RawMQTT, error) {
		return testutil.ConnectRawMQTT(t, mq.URL(), nil, &paho.Connect{ClientID: "dev-1", Username: "dev-1", Password: []byte(nd.Secret)})
	}
	var c *testutil.RawMQTT
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for c == nil {
		if c, err = connect(); err != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("the registered device never connected to mosquitto: %v", err)
			}
		}
	}
	if err := cl.RemoveDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Lost():
	case <-ctx.Done():
		t.Fatal("the removed device's mosquitto session is still open")
	}
	if _, err := connect(); err == nil {
		t.Error("mosquitto accepted the removed device again")
	}
	for _, args := range [][]string{
		{"--mosquitto-passwd", "x"},
		{"--mosquitto-pid", "12"},
	} {
		if _, err := runFirmcast(t, append([]string{"serve", "--data-dir", t.TempDir()}, args...)...); err == nil {
			t.Errorf("serve %v succeeded", args)
		}
	}
}
