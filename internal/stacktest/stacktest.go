// Package stacktest wraps the stack package for tests, as httptest wraps
// net/http: each helper starts something with stack, fails the test
// (t.Fatal) when that returns an error, and stops it at cleanup.
//
//	st := stacktest.Start(t, stack.Config{Topics: topics, DataDir: t.TempDir()}) // brokers + publisher
//	pi := stacktest.StartInstance(t, stack.InstanceConfig{...})                   // one more publisher
//
// Broker processes (mosquitto, nats-server) are started by
// internal/testutil, over internal/brokerproc.
package stacktest

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/stack"
)

func startCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
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
