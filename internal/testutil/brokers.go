// Package testutil holds helpers shared by firmcast's tests.
//
// brokers.go starts real brokers for integration tests, each stopped by
// t.Cleanup:
//
//	srv := testutil.StartMochi(t, broker.MQTTServerConfig{})   // embedded MQTT v5, free port
//	ns  := testutil.StartNATS(t, broker.NATSServerConfig{})    // embedded NATS + JetStream in t.TempDir()
//	root := testutil.UniqueRoot(t)                              // isolate topics on shared brokers
//	tr  := testutil.Dial(t, broker.Config{URL: srv.URL(), ...})  // closed at cleanup
//
// brokerproc.go starts broker processes the test owns (over
// internal/brokerproc), killed by PID at cleanup:
//
//	mq  := testutil.StartMosquitto(t, "")                         // a mosquitto process on a free port
//	np  := testutil.StartNATSProcess(t)                           // the machine's nats-server binary (2.9), free port
//	mp  := testutil.StartMosquittoWithPolicy(t, topics, accounts) // mosquitto enforcing the generated ACL
//
// Whole stacks (brokers, authentication, publisher) are started by
// internal/stacktest, which wraps internal/stack.
// The machine's own brokers (MachineMosquittoURL, MachineNATSURL) are
// shared by every test run: never stop or reconfigure them, always use a
// UniqueRoot there, and clear retained messages you leave
// (ClearNoticeStream for NATS). A test that needs to break a broker starts
// its own. RequireBroker fails (never skips) when a machine broker is down.
package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// The machine's brokers (anonymous access), shared by every test run.
const (
	MachineMosquittoURL = "mqtt://127.0.0.1:1883"
	MachineNATSURL      = "nats://127.0.0.1:4222"
)

// UniqueRoot returns a fresh topic root ("fct" + 16 hex digits) so tests on
// shared brokers never see each other's messages.
func UniqueRoot(t testing.TB) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("UniqueRoot: %v", err)
	}
	return "fct" + hex.EncodeToString(b[:])
}

// UniqueTopics is schemas.NewTopics(UniqueRoot(t)).
func UniqueTopics(t testing.TB) schemas.Topics {
	t.Helper()
	return schemas.MustTopics(UniqueRoot(t))
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Prefer port 0 where the server reports its bound address; use this only
// for external processes (mosquitto) that cannot report it.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("FreePort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RequireBroker fails the test at once (it does not skip) when nothing
// accepts TCP connections at the host:port of rawURL.
func RequireBroker(t testing.TB, rawURL string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("RequireBroker %q: %v", rawURL, err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	if err != nil {
		t.Fatalf("broker %s is not reachable (the machine's brokers must run; see .ci/run): %v", rawURL, err)
	}
	c.Close()
}

// StartMochi starts an embedded MQTT v5 broker (broker.NewMQTTServer) with
// cfg, on a free loopback port unless cfg.Listen says otherwise, waits
// until it accepts connections, and shuts it down at cleanup. Use
// srv.URL() to dial it. To restart on the same port, Shutdown it and call
// StartMochi again with Listen: srv.Addr().
func StartMochi(t testing.TB, cfg broker.MQTTServerConfig) *broker.MQTTServer {
	t.Helper()
	srv, err := broker.NewMQTTServer(cfg)
	if err != nil {
		t.Fatalf("StartMochi: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("StartMochi: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Ready(ctx); err != nil {
		t.Fatalf("StartMochi: %v", err)
	}
	return srv
}

// StartNATS starts an embedded nats-server with JetStream
// (broker.NewNATSServer) with cfg; an empty cfg.DataDir becomes a fresh
// t.TempDir(), an empty cfg.Listen a free loopback port. It waits until
// the server is ready and shuts it down at cleanup. To restart with the
// same port and data, Shutdown it and call StartNATS again with
// Listen: srv.Addr() and the same DataDir.
func StartNATS(t testing.TB, cfg broker.NATSServerConfig) *broker.NATSServer {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	srv, err := broker.NewNATSServer(cfg)
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Ready(ctx); err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	return srv
}

// ClearNoticeStream deletes, at cleanup, the retained-notice stream of
// topics' root on the NATS server at natsURL (anonymous access), as a
// test on a shared server must. Errors are logged, not fatal.
func ClearNoticeStream(t testing.TB, natsURL string, topics schemas.Topics) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nt, err := broker.DialNATS(ctx, broker.Config{URL: natsURL, Topics: topics})
		if err != nil {
			t.Logf("ClearNoticeStream: %v", err)
			return
		}
		defer nt.Close(ctx)
		if err := nt.JetStream().DeleteStream(ctx, broker.NoticeStreamName(topics)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("ClearNoticeStream: %v", err)
		}
	})
}
