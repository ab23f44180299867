package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestBenchIdle runs `bench idle` with a few agents against each broker
// (mosquitto and nats-server processes, the embedded broker in a child
// process: this test binary, see TestBenchIdleChild) and checks the
// figures are sane.
func TestBenchIdle(t *testing.T) {
	const n = 50
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := &benchIdleOpts{
		agents: n, cases: []string{"mosquitto", "nats", "nats-core", "embedded"}, parallel: 16, imageSize: "4KiB",
		dir: t.TempDir(), timeout: 30 * time.Second, child: testChild,
	}
	rows, err := runBenchIdle(ctx, io.Discard, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(o.cases) {
		t.Fatalf("%d rows, want %d", len(rows), len(o.cases))
	}
	for _, r := range rows {
		t.Logf("%+v", r)
		if r.Connected != n || r.Subscriptions != 2*n {
			t.Errorf("%s: %d connected, %d subscriptions; want %d and %d", r.Case, r.Connected, r.Subscriptions, n, 2*n)
		}
		if r.BrokerRSSBefore <= 0 || r.BrokerRSSAfter <= 0 || r.BrokerRSSSettled <= 0 || r.BrokerHWM < r.BrokerRSSSettled {
			t.Errorf("%s: broker RSS before %d, after %d, settled %d, HWM %d", r.Case, r.BrokerRSSBefore, r.BrokerRSSAfter, r.BrokerRSSSettled, r.BrokerHWM)
		}
		if (r.BrokerGoroutinesPerConn > 0) != (r.Case == "embedded") {
			t.Errorf("%s: broker goroutines per connection %.2f", r.Case, r.BrokerGoroutinesPerConn)
		}
		if r.BrokerCPUSeconds < 0 {
			t.Errorf("%s: broker CPU %.2fs", r.Case, r.BrokerCPUSeconds)
		}
		if r.ConnectSeconds <= 0 || (r.FlashPerAgent <= 0) != (r.Case == "nats-core") || r.Broker == "" {
			t.Errorf("%s: connect %.3fs, flash %d, broker %q", r.Case, r.ConnectSeconds, r.FlashPerAgent, r.Broker)
		}
	}
}

// TestBenchIdleUnknownCase checks a bad case name is refused.
func TestBenchIdleUnknownCase(t *testing.T) {
	o := &benchIdleOpts{agents: 1, cases: []string{"kafka"}, parallel: 1, imageSize: "4KiB", dir: t.TempDir(), timeout: 10 * time.Second, child: testChild}
	if _, err := runBenchIdle(context.Background(), io.Discard, o); err == nil {
		t.Fatal("case kafka accepted")
	}
}

const idleChildEnv = "FIRMCAST_TEST_IDLE_CHILD"

// testChild runs the embedded broker child through this test binary
// (TestBenchIdleChild), as `firmcast bench idle serve-embedded` would.
func testChild(args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestBenchIdleChild$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), idleChildEnv+"=1")
	return cmd, nil
}

// TestBenchIdleChild is not a test: it is the embedded broker child of
// TestBenchIdle when this binary runs with FIRMCAST_TEST_IDLE_CHILD=1.
func TestBenchIdleChild(t *testing.T) {
	if os.Getenv(idleChildEnv) != "1" {
		return
	}
	var args []string
	for i, a := range os.Args {
		if a == "--" {
			args = os.Args[i+1:]
			break
		}
	}
	c := newIdleChildCmd()
	c.SetArgs(args)
	if err := c.Execute(); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}
