package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/schemas"
)

func procCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// Process is a broker process the test owns (brokerproc.Process). Restart
// fails the test when the process does not come back.
type Process struct {
	*brokerproc.Process
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

// StartMosquitto runs a mosquitto process (brokerproc.StartMosquitto) with
// conf appended to its configuration, in a temp directory, and kills it
// at cleanup.
func StartMosquitto(t testing.TB, conf string) *Process {
	t.Helper()
	ctx, cancel := procCtx()
	defer cancel()
	p, err := brokerproc.StartMosquitto(ctx, brokerproc.MosquittoSpec{Dir: t.TempDir(), Conf: conf})
	if err != nil {
		t.Fatalf("StartMosquitto: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Process{Process: p, t: t}
}

// StartMosquittoWithPolicy starts a mosquitto process enforcing the
// access policy for topics and accounts through the files
// `firmcast broker mosquitto-config` writes (brokerproc.MosquittoPolicyConf).
// Accounts need clear secrets.
func StartMosquittoWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	conf, err := brokerproc.MosquittoPolicyConf(t.TempDir(), topics, accounts)
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	return StartMosquitto(t, conf)
}

// StartNATSProcess runs the machine's nats-server binary with JetStream
// (brokerproc.StartNATSServer) plus args, in a temp directory, and kills it
// at cleanup.
func StartNATSProcess(t testing.TB, args ...string) *Process {
	t.Helper()
	ctx, cancel := procCtx()
	defer cancel()
	p, err := brokerproc.StartNATSServer(ctx, brokerproc.NATSServerSpec{Dir: t.TempDir(), Args: args})
	if err != nil {
		t.Fatalf("StartNATSProcess: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Process{Process: p, t: t}
}

// StartNATSProcessWithPolicy starts a nats-server process
// (StartNATSProcess: Debian's 2.9.10 on this machine) enforcing the access
// policy for topics and accounts through the file `firmcast broker
// nats-config` writes (brokerproc.NATSPolicyConf): one account, each user
// with the permissions broker.NATSPermissions gives its role. Accounts
// need clear secrets.
func StartNATSProcessWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	conf, err := brokerproc.NATSPolicyConf(t.TempDir(), topics, accounts)
	if err != nil {
		t.Fatalf("StartNATSProcessWithPolicy: %v", err)
	}
	return StartNATSProcess(t, "-c", conf)
}
