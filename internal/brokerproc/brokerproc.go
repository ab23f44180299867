package brokerproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// ErrExited is returned when a broker process ended while it was
// needed (at start, or when its memory is read).
var ErrExited = errors.New("brokerproc: broker process exited")

// Spec describes a child process for Start.
type Spec struct {
	// Name names the process in errors and logs ("mosquitto").
	Name string
	// Bin and Args are the command line. Required.
	Bin  string
	Args []string
	// LogPath receives the process's stderr, and its stdout unless
	// Stdout is set. Required.
	LogPath string
	// Addr, when set, is the host:port Start waits for (TCP
	// accept) before it returns.
	Addr string
	// URL is what Process.URL returns (e.g. "mqtt://" + Addr).
	URL string
	// Prepare, when set, edits the command before it starts (pipes).
	Prepare func(*exec.Cmd) error
	// StartTimeout bounds the wait for Addr. Default 15s.
	StartTimeout time.Duration
}

// Process is a broker running as a child process of this one, started by
// Start, StartMosquitto or StartNATSServer. Stop kills it by its
// PID; nothing else (in particular no broker of the machine) is touched.
// Its methods are safe for concurrent use.
type Process struct {
	spec Spec

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts spec's command with its output in spec.LogPath and,
// when spec.Addr is set, returns once that address accepts TCP
// connections. It returns an error naming the process and its log when
// the process exits first or does not listen within StartTimeout.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if spec.Bin == "" || spec.LogPath == "" {
		return nil, errors.New("brokerproc: a process needs a binary and a log path")
	}
	if spec.Name == "" {
		spec.Name = filepath.Base(spec.Bin)
	}
	if spec.StartTimeout <= 0 {
		spec.StartTimeout = 15 * time.Second
	}
	p := &Process{spec: spec}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Process) start(ctx context.Context) error {
	logf, err := os.OpenFile(p.spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("brokerproc: %s log: %w", p.spec.Name, err)
	}
	cmd := exec.Command(p.spec.Bin, p.spec.Args...)
	cmd.Stderr = logf
	if p.spec.Prepare != nil {
		if err := p.spec.Prepare(cmd); err != nil {
			logf.Close()
			return fmt.Errorf("brokerproc: %s: %w", p.spec.Name, err)
		}
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("brokerproc: start %s: %w", p.spec.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	if p.spec.Addr == "" {
		return nil
	}
	if err := p.waitListening(ctx); err != nil {
		p.Stop()
		return err
	}
	return nil
}

func (p *Process) waitListening(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.spec.StartTimeout)
	defer cancel()
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for {
		c, err := net.DialTimeout("tcp", p.spec.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%w: %s at start; log %s:\n%s", ErrExited, p.spec.Name, p.spec.LogPath, p.Log())
		case <-ctx.Done():
			return fmt.Errorf("brokerproc: %s: %s not accepting connections (log %s): %w", p.spec.Name, p.spec.Addr, p.spec.LogPath, ctx.Err())
		case <-tk.C:
		}
	}
}

// Name is the process's name.
func (p *Process) Name() string { return p.spec.Name }

// Addr is the host:port the process listens on ("" if none was given).
func (p *Process) Addr() string { return p.spec.Addr }

// URL is the URL clients dial.
func (p *Process) URL() string { return p.spec.URL }

// Port is the port of Addr, 0 if none.
func (p *Process) Port() int {
	_, ps, err := net.SplitHostPort(p.spec.Addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(ps)
	return n
}

// LogPath is the file holding the process's output.
func (p *Process) LogPath() string { return p.spec.LogPath }

// Log returns what the process wrote so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.spec.LogPath)
	return string(b)
}

// PID is the process id of the current run.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Done is closed when the current run of the process has exited.
func (p *Process) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Stop kills the process (SIGKILL, by its PID) and waits until it has
// exited. Safe to call more than once.
func (p *Process) Stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart stops the process and starts it again with the same command
// line, and so the same port (mosquitto without persistence loses its
// retained messages and sessions; nats-server keeps its JetStream store).
func (p *Process) Restart(ctx context.Context) error {
	p.Stop()
	return p.start(ctx)
}

// Mem returns the process's resident set size and its high-water mark
// (VmRSS, VmHWM), in bytes.
func (p *Process) Mem() (rss, hwm int64, err error) {
	select {
	case <-p.Done():
		return 0, 0, fmt.Errorf("%w: %s (log %s)", ErrExited, p.spec.Name, p.spec.LogPath)
	default:
	}
	return ProcMem(p.PID())
}

// CPU returns the process's user+system CPU time in seconds.
func (p *Process) CPU() (float64, error) { return ProcCPU(p.PID()) }

// MosquittoSpec configures StartMosquitto.
type MosquittoSpec struct {
	// Dir holds mosquitto.conf and mosquitto.log. Required.
	Dir string
	// Conf is appended to the generated configuration (a listener on a
	// free 127.0.0.1 port, set_tcp_nodelay true, persistence false),
	// e.g. the lines of a generated mosquitto.conf with password_file and
	// acl_file. Unless it sets allow_anonymous or password_file,
	// anonymous access is allowed.
	Conf string
}

// StartMosquitto runs `mosquitto -c` on a configuration written to
// spec.Dir and returns once it accepts connections. Process.URL is
// "mqtt://127.0.0.1:<port>".
func StartMosquitto(ctx context.Context, spec MosquittoSpec) (*Process, error) {
	bin, err := LookBinary("mosquitto")
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listener %d 127.0.0.1\n", port)
	if !strings.Contains(spec.Conf, "set_tcp_nodelay") {
		b.WriteString("set_tcp_nodelay true\n")
	}
	if !strings.Contains(spec.Conf, "persistence ") {
		b.WriteString("persistence false\n")
	}
	if os.Geteuid() == 0 && !strings.Contains(spec.Conf, "\nuser ") {
		// Started as root, mosquitto switches to user "mosquitto", which
		// cannot read files in a private directory; stay root.
		b.WriteString("user root\n")
	}
	if !strings.Contains(spec.Conf, "allow_anonymous") && !strings.Contains(spec.Conf, "password_file") {
		b.WriteString("allow_anonymous true\n")
	}
	b.WriteString(spec.Conf)
	b.WriteString("\n")
	conf := filepath.Join(spec.Dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("brokerproc: mosquitto: %w", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return Start(ctx, Spec{
		Name: "mosquitto", Bin: bin, Args: []string{"-c", conf},
		LogPath: filepath.Join(spec.Dir, "mosquitto.log"), Addr: addr, URL: "mqtt://" + addr,
	})
}

// MosquittoPolicyConf returns the mosquitto.conf lines that enforce the
// access policy for topics and accounts, written (with the password and
// ACL files) into dir exactly as `firmcast broker mosquitto-config`
// writes them. Pass them as MosquittoSpec.Conf.
func MosquittoPolicyConf(dir string, topics schemas.Topics, accounts []broker.Account) (string, error) {
	files, err := broker.MosquittoConfig(dir, broker.MosquittoSpec{Topics: topics, Accounts: accounts})
	if err != nil {
		return "", err
	}
	conf, err := os.ReadFile(files.Conf)
	if err != nil {
		return "", err
	}
	return string(conf), nil
}

// NATSPolicyConf writes into dir the nats-server configuration that
// enforces the access policy for topics and accounts, exactly as
// `firmcast broker nats-config` writes it (broker.NATSConfig), and
// returns its path: pass "-c", path as NATSServerSpec.Args.
func NATSPolicyConf(dir string, topics schemas.Topics, accounts []broker.Account) (string, error) {
	files, err := broker.NATSConfig(dir, broker.NATSSpec{Topics: topics, Accounts: accounts})
	if err != nil {
		return "", err
	}
	return files.Conf, nil
}

// NATSServerSpec configures StartNATSServer.
type NATSServerSpec struct {
	// Dir holds the JetStream store (js/) and nats-server.log. Required.
	Dir string
	// Args are extra command-line arguments.
	Args []string
}

// StartNATSServer runs the machine's nats-server binary (Debian's 2.9 on
// the project's machines, unlike the embedded 2.15) with JetStream on a
// free 127.0.0.1 port, anonymous, and returns once it accepts
// connections. Process.URL is "nats://127.0.0.1:<port>".
func StartNATSServer(ctx context.Context, spec NATSServerSpec) (*Process, error) {
	bin, err := LookBinary("nats-server")
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(spec.Dir, "js")}, spec.Args...)
	return Start(ctx, Spec{
		Name: "nats-server", Bin: bin, Args: args,
		LogPath: filepath.Join(spec.Dir, "nats-server.log"), Addr: addr, URL: "nats://" + addr,
	})
}

// LookBinary finds a broker binary on PATH or in the sbin directories
// Debian installs them to.
func LookBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin/", "/usr/local/sbin/", "/usr/local/bin/"} {
		if _, err := os.Stat(d + name); err == nil {
			return d + name, nil
		}
	}
	return "", fmt.Errorf("brokerproc: %s is not installed (.ci/run installs it: apt-get install -y %s)", name, name)
}

// BinaryVersion is the first line mentioning "version" that bin prints
// for args, or "".
func BinaryVersion(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(strings.ToLower(l), "version") || strings.HasPrefix(l, "nats-server: v") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Prefer port 0 where the server reports its bound address; use this only
// for processes that cannot report it.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("brokerproc: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ProcMem reads VmRSS and VmHWM of a process, in bytes (Linux).
func ProcMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %q", pid, l)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %q", pid, l)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, hwm, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on
// Linux on every architecture Go supports).
const clockTicks = 100

// ProcCPU is a process's user+system CPU time in seconds (Linux).
func ProcCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in parens.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	// utime and stime are fields 14 and 15 of stat; f starts at field 3.
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return float64(u+st) / clockTicks, nil
}
