package broker_test

import (
	"os"
	"os/exec"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started is
// still running at the end (paho's tests do the same with goleak). A test
// that must leave goroutines behind (the reproduction of mochi's
// deadlock leaves a deadlocked raw mochi) runs in a child process
// (runInChild), where the check is off: its goroutines end with it.
// nats.go v1.55.0's jetstream leaves resetPendingAcksOnReconnect waiting on
// a nil channel for ever after an async publish on a connection that is
// then closed (its reconnect channel is never made): a goroutine per
// JetStream context that published asynchronously, not ours to end.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}

// childEnv, set in a child process's environment, marks the child of
// runInChild.
const childEnv = "FIRMCAST_BROKER_TEST_CHILD"

// inChild reports whether this process is runInChild's child.
func inChild() bool { return os.Getenv(childEnv) != "" }

// runInChild runs the test t alone in a child process (this test binary
// again, with childEnv set), logs its output and fails t if it fails.
func runInChild(t *testing.T) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child process %v:\n%s", cmd.Args, out)
	if err != nil {
		t.Fatalf("%s in a child process: %v", t.Name(), err)
	}
}
