// Package stacktest wraps the stack package for tests, as httptest wraps
// net/http: each helper starts something with stack, fails the test
// (t.Fatal) when that returns an error, and stops it at cleanup.
//
//	st := stacktest.Start(t, stack.Config{Topics: topics, DataDir: t.TempDir()}) // brokers + publisher
//	pi := stacktest.StartInstance(t, stack.InstanceConfig{...})                   // one more publisher
//	mq := stacktest.StartMosquitto(t, "")                                          // a mosquitto process, free port
//	np := stacktest.StartNATSProcess(t)                                            // Debian's nats-server 2.9, free port
//	mp := stacktest.StartMosquittoWithPolicy(t, topics, accounts)                  // mosquitto enforcing the generated ACL
//
// Processes are the test's own: stopped by their PID, never the machine's
// shared brokers.
package stacktest

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/schemas"
)

// Process is a broker process the test owns (stack.Process). Restart
// fails the test when the process does not come back.
type Process struct {
	*stack.Process
	t testing.TB
}

// Restart stops the process and starts it again on the same port.
func (p *Process) Restart() {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Process.Restart(ctx); err != nil {
		p.t.Fatalf("restart %s: %v", p.Name(), err)
	}
}

func startCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// StartMosquitto runs a mosquitto process (stack.StartMosquitto) with
// conf appended to its configuration, in a temp directory, and kills it
// at cleanup.
func StartMosquitto(t testing.TB, conf string) *Process {
	t.Helper()
	ctx, cancel := startCtx()
	defer cancel()
	p, err := stack.StartMosquitto(ctx, stack.MosquittoSpec{Dir: t.TempDir(), Conf: conf})
	if err != nil {
		t.Fatalf("StartMosquitto: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Process{Process: p, t: t}
}

// StartMosquittoWithPolicy starts a mosquitto process enforcing the
// access policy for topics and accounts through the files
// `firmcast broker mosquitto-config` writes (stack.MosquittoPolicyConf).
// Accounts need clear secrets.
func StartMosquittoWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	conf, err := stack.MosquittoPolicyConf(t.TempDir(), topics, accounts)
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	return StartMosquitto(t, conf)
}

// StartNATSProcess runs the machine's nats-server binary with JetStream
// (stack.StartNATSServer) plus args, in a temp directory, and kills it
// at cleanup.
func StartNATSProcess(t testing.TB, args ...string) *Process {
	t.Helper()
	ctx, cancel := startCtx()
	defer cancel()
	p, err := stack.StartNATSServer(ctx, stack.NATSServerSpec{Dir: t.TempDir(), Args: args})
	if err != nil {
		t.Fatalf("StartNATSProcess: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Process{Process: p, t: t}
}

// Start starts a stack (stack.Start) and closes it at cleanup. An empty
// cfg.DataDir with the embedded NATS server becomes a temp directory.
func Start(t testing.TB, cfg stack.Config) *stack.Stack {
	t.Helper()
	if cfg.DataDir == "" && cfg.NATSURL == "" {
		cfg.DataDir = t.TempDir()
	}
	ctx, cancel := startCtx()
	defer cancel()
	st, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("stack.Start: %v", err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	return st
}

// StartInstance starts a publisher instance (stack.StartInstance) and
// stops it at cleanup.
func StartInstance(t testing.TB, cfg stack.InstanceConfig) *stack.Instance {
	t.Helper()
	ctx, cancel := startCtx()
	defer cancel()
	in, err := stack.StartInstance(ctx, cfg)
	if err != nil {
		t.Fatalf("stack.StartInstance: %v", err)
	}
	t.Cleanup(in.Stop)
	return in
}
