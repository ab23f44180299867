// Package testutil holds helpers shared by firmcast's tests.
//
// brokers.go starts real brokers for integration tests, each stopped by
// t.Cleanup:
//
//	srv := testutil.StartMochi(t, broker.MQTTServerConfig{})   // embedded MQTT v5, free port
//	ns  := testutil.StartNATS(t, broker.NATSServerConfig{})    // embedded NATS + JetStream in t.TempDir()
//	mq  := testutil.StartMosquitto(t, "")                       // a mosquitto process on a free port
//	np  := testutil.StartNATSProcess(t)                         // the machine's nats-server binary (2.9), free port
//	root := testutil.UniqueRoot(t)                              // isolate topics on shared brokers
//	mp  := testutil.StartMosquittoWithPolicy(t, topics, accounts) // mosquitto enforcing the generated ACL
//	tr  := testutil.Dial(t, broker.Config{URL: srv.URL(), ...})  // closed at cleanup
//
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
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// Process is a broker process (mosquitto, nats-server) started by
// StartMosquitto or StartNATSProcess.
type Process struct {
	t    testing.TB
	Port int
	// Dir holds mosquitto.conf and mosquitto.log.
	Dir  string
	conf string
	name string
	bin  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartMosquitto runs `mosquitto -c` on a config written to a temp
// directory: a listener on a free 127.0.0.1 port, set_tcp_nodelay true,
// then confExtra (for example the lines of a generated mosquitto.conf
// with password_file and acl_file). Unless confExtra sets
// allow_anonymous or password_file, anonymous access is allowed. It waits
// until the port accepts connections and kills the process (by its PID) at
// cleanup. It fails the test if mosquitto is not installed.
func StartMosquitto(t testing.TB, confExtra string) *Process {
	t.Helper()
	bin := lookBin(t, "mosquitto")
	m := &Process{t: t, Port: FreePort(t), Dir: t.TempDir(), name: "mosquitto", bin: bin}
	var b strings.Builder
	fmt.Fprintf(&b, "listener %d 127.0.0.1\n", m.Port)
	if !strings.Contains(confExtra, "set_tcp_nodelay") {
		b.WriteString("set_tcp_nodelay true\n")
	}
	b.WriteString("persistence false\n")
	if os.Geteuid() == 0 && !strings.Contains(confExtra, "\nuser ") {
		// Started as root, mosquitto switches to user "mosquitto", which
		// cannot read files in t.TempDir(); stay root.
		b.WriteString("user root\n")
	}
	if !strings.Contains(confExtra, "allow_anonymous") && !strings.Contains(confExtra, "password_file") {
		b.WriteString("allow_anonymous true\n")
	}
	b.WriteString(confExtra)
	b.WriteString("\n")
	m.conf = filepath.Join(m.Dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(b.String()), 0o600); err != nil {
		t.Fatalf("StartMosquitto: %v", err)
	}
	m.args = []string{"-c", m.conf}
	m.start()
	t.Cleanup(m.Stop)
	return m
}

// StartNATSProcess runs the machine's nats-server binary (NATS 2.9 on
// this machine, unlike the embedded 2.15) with JetStream on a free
// 127.0.0.1 port and a store in a temp directory, plus extraArgs. It
// waits until the port accepts connections and kills the process (by
// PID) at cleanup. It fails the test if nats-server is not installed.
func StartNATSProcess(t testing.TB, extraArgs ...string) *Process {
	t.Helper()
	m := &Process{t: t, Port: FreePort(t), Dir: t.TempDir(), name: "nats-server", bin: lookBin(t, "nats-server")}
	m.args = append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(m.Port), "-js", "-sd", filepath.Join(m.Dir, "js")}, extraArgs...)
	m.start()
	t.Cleanup(m.Stop)
	return m
}

func lookBin(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin/", "/usr/local/sbin/", "/usr/local/bin/"} {
		if _, err := os.Stat(d + name); err == nil {
			return d + name
		}
	}
	t.Fatalf("%s is not installed (.ci/run installs it: apt-get install -y %s)", name, name)
	return ""
}

func (m *Process) start() {
	m.t.Helper()
	logf, err := os.OpenFile(filepath.Join(m.Dir, m.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.t.Fatalf("StartMosquitto: %v", err)
	}
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		m.t.Fatalf("start %s: %v", m.name, err)
	}
	m.cmd = cmd
	m.done = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(m.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-m.done:
			m.t.Fatalf("%s exited at start; log:\n%s", m.name, m.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: port %d not accepting after 10s; log:\n%s", m.name, m.Port, m.Log())
		}
	}
}

// Addr is "127.0.0.1:<port>".
func (m *Process) Addr() string { return "127.0.0.1:" + strconv.Itoa(m.Port) }

// URL is "mqtt://127.0.0.1:<port>" for mosquitto, "nats://..." for
// nats-server.
func (m *Process) URL() string {
	if m.name == "nats-server" {
		return "nats://" + m.Addr()
	}
	return "mqtt://" + m.Addr()
}

// Log returns what the process wrote so far.
func (m *Process) Log() string {
	b, _ := os.ReadFile(filepath.Join(m.Dir, m.name+".log"))
	return string(b)
}

// Stop kills the process (SIGKILL, by PID) and waits for it. Safe to call
// more than once.
func (m *Process) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.done:
		return
	default:
	}
	_ = m.cmd.Process.Kill()
	<-m.done
}

// Restart stops the process and starts a new one with the same arguments
// and port (mosquitto loses retained messages and sessions: persistence is
// off; nats-server keeps its JetStream store).
func (m *Process) Restart() {
	m.t.Helper()
	m.Stop()
	m.start()
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
