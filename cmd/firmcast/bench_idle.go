package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/schemas"
)

// benchIdleOpts are the options of `firmcast bench idle`.
type benchIdleOpts struct {
	agents    int
	cases     []string
	parallel  int
	imageSize string
	json      bool
	dir       string
	timeout   time.Duration
	// child returns the command that runs the embedded broker as a
	// separate process (`firmcast bench idle serve-embedded ARGS`); tests
	// replace it.
	child func(args ...string) (*exec.Cmd, error)
}

func newBenchIdleCmd() *cobra.Command { return benchIdleCmd(selfChild) }

// benchIdleCmd is `bench idle` with child starting the embedded broker
// process.
func benchIdleCmd(child func(args ...string) (*exec.Cmd, error)) *cobra.Command {
	o := &benchIdleOpts{child: child}
	c := &cobra.Command{
		Use:   "idle [--agents 10000] [--cases mosquitto,nats,embedded]",
		Short: "Measure the broker memory of N idle connected device agents",
		Long: `For each case, starts the broker as a separate process, reads its
resident memory (VmRSS, VmHWM from /proc/<pid>/status), connects N real
device agents from this process (each with its own credentials and client
id, subscribed to its notices and its class's announcements, its
"connected" report acknowledged by the broker), Parallel at a time, and
reads the broker's memory again once every agent is up and the figure has
settled. Agents run no update: this is the cost of an idle fleet.

Cases:
  mosquitto  a mosquitto process on a free port, with the password file and
             ACL that 'firmcast broker mosquitto-config' generates
  nats       a nats-server process with JetStream; agents on NATS
             (gateways' dialect: one ordered JetStream consumer on the
             notice stream and one core subscription each), anonymous
  nats-core  the same nats-server, but lean nats.go connections with two
             core subscriptions each (notice, announcements) instead of
             agents: the connection cost without the JetStream consumer
  embedded   the embedded MQTT v5 broker (mochi) in a child process of this
             binary, with a credential store holding every device

Per case it prints: agents connected, broker RSS before / after / settled
and its high-water mark, broker bytes per connection ((settled - before) /
N), connect time and the broker's CPU time meanwhile, and this process's growth per idle agent (RSS and Go
heap; each agent's simulated flash, in memory, is listed apart and
included in both). The process fd limit must exceed N.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := runBenchIdle(cmd.Context(), cmd.ErrOrStderr(), o)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("bench idle: %w", err)}
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			printBenchIdle(cmd.OutOrStdout(), rows)
			return nil
		},
	}
	fl := c.Flags()
	fl.IntVar(&o.agents, "agents", 10000, "idle agents per case")
	fl.StringSliceVar(&o.cases, "cases", []string{"mosquitto", "nats", "embedded"}, "brokers: mosquitto, nats, nats-core, embedded")
	fl.IntVar(&o.parallel, "parallel", 64, "connections set up at a time")
	fl.StringVar(&o.imageSize, "image-size", "4KiB", "factory image size (sizes each agent's in-memory flash)")
	fl.BoolVar(&o.json, "json", false, "print the results as JSON")
	fl.StringVar(&o.dir, "dir", "", "work directory (default: a temporary directory, removed afterwards)")
	fl.DurationVar(&o.timeout, "timeout", 15*time.Minute, "limit per case")
	c.AddCommand(newIdleChildCmd())
	return c
}

// selfChild runs this binary's hidden `bench idle serve-embedded`.
func selfChild(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, append([]string{"bench", "idle", "serve-embedded"}, args...)...), nil
}

// idleClients are the idle agents (fleet.IdleFleet) or the lean NATS
// baseline (fleet.IdleNATSConns).
type idleClients interface {
	Connect(ctx context.Context, url string) error
	Reported() int
	Subscriptions() int
	FlashBytes() int64
	Close()
}

// idleRow is the result of one case.
type idleRow struct {
	Case   string `json:"case"`
	Broker string `json:"broker"`
	Agents int    `json:"agents"`
	// Connected agents: subscribed, "connected" report acknowledged.
	Connected     int `json:"connected"`
	Subscriptions int `json:"subscriptions"`
	// Broker process memory (bytes).
	BrokerRSSBefore  int64 `json:"broker_rss_before"`
	BrokerRSSAfter   int64 `json:"broker_rss_after"`
	BrokerRSSSettled int64 `json:"broker_rss_settled"`
	BrokerHWM        int64 `json:"broker_hwm"`
	// BrokerPerConn is (settled - before) / agents.
	BrokerPerConn  int64   `json:"broker_bytes_per_conn"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// BrokerCPUSeconds is the broker's CPU time (user+system) while the
	// agents connected.
	BrokerCPUSeconds float64 `json:"broker_cpu_seconds"`
	// This process (the agents) per idle agent, in-memory flash included.
	AgentRSSPerAgent  int64   `json:"agent_rss_per_agent"`
	AgentHeapPerAgent int64   `json:"agent_heap_per_agent"`
	FlashPerAgent     int64   `json:"agent_flash_per_agent"`
	GoroutinesPer     float64 `json:"agent_goroutines_per_agent"`
	// For a Go broker (embedded), its growth per connection after a
	// collection: goroutines, heap in use, goroutine stacks.
	BrokerGoroutinesPerConn float64 `json:"broker_goroutines_per_conn,omitempty"`
	BrokerHeapPerConn       int64   `json:"broker_heap_per_conn,omitempty"`
	BrokerStacksPerConn     int64   `json:"broker_stacks_per_conn,omitempty"`
}

func runBenchIdle(ctx context.Context, errw io.Writer, o *benchIdleOpts) ([]idleRow, error) {
	if o.agents <= 0 {
		return nil, fmt.Errorf("--agents %d: want at least 1", o.agents)
	}
	size, err := parseSize("image-size", o.imageSize)
	if err != nil {
		return nil, err
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(o.agents)+256 > lim.Cur {
		return nil, fmt.Errorf("--agents %d: the open-file limit is %d (raise it with ulimit -n)", o.agents, lim.Cur)
	}
	dir, cleanup, err := workDir(o.dir, false, "firmcast-bench-idle-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	logf, err := os.Create(filepath.Join(dir, "agents.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var rows []idleRow
	for _, cs := range o.cases {
		fmt.Fprintf(errw, "bench idle %s, %d agents ...\n", cs, o.agents)
		cctx, cancel := context.WithTimeout(ctx, o.timeout)
		row, err := benchIdleCase(cctx, cs, o, size, filepath.Join(dir, cs), log)
		cancel()
		if err != nil {
			return rows, fmt.Errorf("%s: %w", cs, err)
		}
		fmt.Fprintf(errw, "  %d/%d connected in %.2fs, broker %s -> %s (%s per connection)\n", row.Connected, row.Agents,
			row.ConnectSeconds, humanBytes(row.BrokerRSSBefore), humanBytes(row.BrokerRSSSettled), humanBytes(row.BrokerPerConn))
		rows = append(rows, row)
	}
	return rows, nil
}

func benchIdleCase(ctx context.Context, cs string, o *benchIdleOpts, imageSize int, dir string, log *slog.Logger) (row idleRow, err error) {
	row = idleRow{Case: cs, Agents: o.agents}
	switch cs {
	case "mosquitto", "nats", "nats-core", "embedded":
	default:
		return row, fmt.Errorf("--cases: %q (want mosquitto, nats, nats-core or embedded)", cs)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	topics := schemas.MustTopics("fcidle" + randHex(6))
	prefix := "idle" + randHex(3)
	a0 := selfMem()
	icfg := fleet.IdleConfig{
		Agents: o.agents, Dir: filepath.Join(dir, "devices"), Topics: topics, Prefix: prefix,
		ImageSize: imageSize, Parallel: o.parallel, Logger: log,
	}
	var fl idleClients
	var accounts []broker.Account
	if cs == "nats-core" {
		fl, err = fleet.NewIdleNATSConns(icfg)
	} else {
		var f *fleet.IdleFleet
		f, err = fleet.NewIdleFleet(ctx, icfg)
		if f != nil {
			fl, accounts = f, f.Accounts
		}
	}
	if err != nil {
		return row, err
	}
	defer fl.Close()
	row.FlashPerAgent = fl.FlashBytes()
	var bp *brokerProc
	switch cs {
	case "mosquitto":
		bp, err = startIdleMosquitto(ctx, filepath.Join(dir, "mosquitto"), topics, accounts)
	case "nats", "nats-core":
		bp, err = startIdleNATS(ctx, filepath.Join(dir, "nats"), topics)
	case "embedded":
		bp, err = startIdleEmbedded(ctx, filepath.Join(dir, "embedded"), topics, accounts, o.child)
	}
	if err != nil {
		return row, err
	}
	defer bp.stop()
	row.Broker = bp.name
	if row.BrokerRSSBefore, err = bp.settled(ctx); err != nil {
		return row, err
	}
	g0 := bp.goStats
	cpu0, err := procCPU(bp.cmd.Process.Pid)
	if err != nil {
		return row, err
	}
	t0 := time.Now()
	err = fl.Connect(ctx, bp.url)
	row.ConnectSeconds = time.Since(t0).Seconds()
	if cpu1, cerr := procCPU(bp.cmd.Process.Pid); cerr == nil {
		row.BrokerCPUSeconds = cpu1 - cpu0
	}
	row.Connected, row.Subscriptions = fl.Reported(), fl.Subscriptions()
	if err != nil {
		return row, fmt.Errorf("connecting agents (%d up; broker log %s): %w", row.Connected, bp.logPath, err)
	}
	if row.BrokerRSSAfter, _, err = bp.mem(); err != nil {
		return row, err
	}
	if row.BrokerRSSSettled, err = bp.settled(ctx); err != nil {
		return row, err
	}
	if _, row.BrokerHWM, err = bp.mem(); err != nil {
		return row, err
	}
	a1 := selfMem()
	n := int64(o.agents)
	row.BrokerPerConn = (row.BrokerRSSSettled - row.BrokerRSSBefore) / n
	row.AgentRSSPerAgent = (a1.rss - a0.rss) / n
	row.AgentHeapPerAgent = (a1.heap - a0.heap) / n
	row.GoroutinesPer = float64(a1.goroutines-a0.goroutines) / float64(n)
	if g0 != nil && bp.goStats != nil {
		g1 := bp.goStats
		row.BrokerGoroutinesPerConn = float64(g1.Goroutines-g0.Goroutines) / float64(n)
		row.BrokerHeapPerConn = (g1.Heap - g0.Heap) / n
		row.BrokerStacksPerConn = (g1.Stacks - g0.Stacks) / n
	}
	return row, nil
}

func printBenchIdle(w io.Writer, rows []idleRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tagents\tconnected\tsubs\tbroker RSS before\tafter\tsettled\tHWM\tbroker/conn\tconnect\tbroker CPU\tagent RSS/agent\tagent heap/agent\t(flash/agent)\tgoroutines/agent\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%.2fs\t%.2fs\t%s\t%s\t%s\t%.1f\t\n",
			r.Case, r.Agents, r.Connected, r.Subscriptions, humanBytes(r.BrokerRSSBefore), humanBytes(r.BrokerRSSAfter),
			humanBytes(r.BrokerRSSSettled), humanBytes(r.BrokerHWM), humanBytes(r.BrokerPerConn), r.ConnectSeconds, r.BrokerCPUSeconds,
			humanBytes(r.AgentRSSPerAgent), humanBytes(r.AgentHeapPerAgent), humanBytes(r.FlashPerAgent), r.GoroutinesPer)
	}
	_ = tw.Flush()
	for _, r := range rows {
		fmt.Fprintf(w, "%s: %s", r.Case, r.Broker)
		if r.BrokerGoroutinesPerConn > 0 {
			fmt.Fprintf(w, "; per connection: %.1f goroutines, %s heap, %s stacks", r.BrokerGoroutinesPerConn,
				humanBytes(r.BrokerHeapPerConn), humanBytes(r.BrokerStacksPerConn))
		}
		fmt.Fprintln(w)
	}
}

type memSample struct {
	rss, heap  int64
	goroutines int
}

// selfMem is this process's RSS, Go heap in use and goroutines, after a
// collection that returns freed memory to the system.
func selfMem() memSample {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r, _, _ := procMem(os.Getpid())
	return memSample{rss: r, heap: int64(ms.HeapInuse), goroutines: runtime.NumGoroutine()}
}

// procMem reads VmRSS and VmHWM of a process, in bytes.
func procMem(pid int) (rss, hwm int64, err error) {
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

// procCPU is a process's user+system CPU time in seconds.
func procCPU(pid int) (float64, error) {
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

// brokerProc is a broker running as a child process.
type brokerProc struct {
	name, url, logPath string
	cmd                *exec.Cmd
	done               chan struct{}
	// gc, when set, asks the process to collect garbage and return freed
	// memory to the system (the embedded broker child).
	gc func() error
	// goStats is what the last gc reported (Go brokers only).
	goStats *goStats
}

// goStats is a Go broker's goroutines, heap in use and goroutine stacks
// (bytes).
type goStats struct {
	Goroutines   int   `json:"goroutines"`
	Heap, Stacks int64 `json:"-"`
}

// errBrokerExited: the broker process ended while it was needed.
var errBrokerExited = errors.New("broker process exited")

func (b *brokerProc) mem() (rss, hwm int64, err error) {
	select {
	case <-b.done:
		return 0, 0, fmt.Errorf("%w (log: %s)", errBrokerExited, b.logPath)
	default:
	}
	return procMem(b.cmd.Process.Pid)
}

// settled returns the broker's RSS once it stopped moving: after a
// collection (when the broker can be asked for one), samples 250ms apart
// until two consecutive ones differ by less than 0.5%, at most 40.
func (b *brokerProc) settled(ctx context.Context) (int64, error) {
	if b.gc != nil {
		if err := b.gc(); err != nil {
			return 0, err
		}
	}
	prev, _, err := b.mem()
	if err != nil {
		return 0, err
	}
	tk := time.NewTicker(250 * time.Millisecond)
	defer tk.Stop()
	for range 40 {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tk.C:
		}
		cur, _, err := b.mem()
		if err != nil {
			return 0, err
		}
		d := cur - prev
		if d < 0 {
			d = -d
		}
		if d*200 < cur {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// stop kills the process (by its PID) and waits for it.
func (b *brokerProc) stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Kill()
	<-b.done
}

// startProc starts cmd with its output in logPath and waits until addr
// accepts TCP connections.
func startProc(ctx context.Context, name string, cmd *exec.Cmd, logPath, addr string) (*brokerProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	b := &brokerProc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(b.done)
	}()
	if addr == "" {
		return b, nil
	}
	if err := waitListening(ctx, b, addr); err != nil {
		b.stop()
		return nil, err
	}
	return b, nil
}

func waitListening(ctx context.Context, b *brokerProc, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-b.done:
			return fmt.Errorf("%s: %w at start (log: %s)", b.name, errBrokerExited, b.logPath)
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not accepting connections (log: %s): %w", b.name, addr, b.logPath, ctx.Err())
		case <-tk.C:
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lookBroker(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin/", "/usr/local/sbin/", "/usr/local/bin/"} {
		if _, err := os.Stat(d + name); err == nil {
			return d + name, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (apt-get install -y %s)", name, name)
}

// brokerVersion is the first line mentioning "version" that bin prints
// for args, or "".
func brokerVersion(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(strings.ToLower(l), "version") || strings.HasPrefix(l, "nats-server: v") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// startIdleMosquitto runs mosquitto on a free port with the policy
// `firmcast broker mosquitto-config` writes for accounts (plus one
// backend account), no persistence and quiet logs.
func startIdleMosquitto(ctx context.Context, dir string, topics schemas.Topics, accounts []broker.Account) (*brokerProc, error) {
	bin, err := lookBroker("mosquitto")
	if err != nil {
		return nil, err
	}
	all := append([]broker.Account{{
		Identity: broker.Identity{Username: "firmcast-backend", Role: broker.RoleBackend}, Secret: randHex(16),
	}}, accounts...)
	files, err := broker.MosquittoConfig(dir, broker.MosquittoSpec{Topics: topics, Accounts: all})
	if err != nil {
		return nil, err
	}
	policy, err := os.ReadFile(files.Conf)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listener %d 127.0.0.1\nmax_connections -1\npersistence false\nconnection_messages false\nlog_type error\nlog_type warning\n", port)
	if os.Geteuid() == 0 {
		// As root, mosquitto would switch to user "mosquitto", which
		// cannot read the files in dir.
		b.WriteString("user root\n")
	}
	b.Write(policy)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := startProc(ctx, "mosquitto", exec.Command(bin, "-c", conf), filepath.Join(dir, "mosquitto.log"), addr)
	if err != nil {
		return nil, err
	}
	p.url = "mqtt://" + addr
	p.name = strings.TrimSpace("mosquitto " + strings.TrimPrefix(brokerVersion(bin, "-h"), "mosquitto "))
	return p, nil
}

// startIdleNATS runs nats-server with JetStream on a free port
// (anonymous) and creates the retained-notice stream, as the backend
// does at start.
func startIdleNATS(ctx context.Context, dir string, topics schemas.Topics) (*brokerProc, error) {
	bin, err := lookBroker("nats-server")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := startProc(ctx, "nats-server", exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "js")),
		filepath.Join(dir, "nats-server.log"), addr)
	if err != nil {
		return nil, err
	}
	p.url = "nats://" + addr
	p.name = strings.TrimSpace(brokerVersion(bin, "--version") + " (JetStream, anonymous)")
	nt, err := broker.DialNATS(ctx, broker.Config{URL: p.url, Topics: topics, ClientID: "firmcast-backend"})
	if err == nil {
		_, err = nt.NoticeStream(ctx)
		_ = nt.Close(ctx)
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("nats notice stream: %w", err)
	}
	return p, nil
}

// startIdleEmbedded runs the embedded MQTT broker in a child process
// (child) with a credentials file holding accounts.
func startIdleEmbedded(ctx context.Context, dir string, topics schemas.Topics, accounts []broker.Account, child func(...string) (*exec.Cmd, error)) (*brokerProc, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, a := range accounts {
		fmt.Fprintf(&b, "device %s %s %s\n", a.Username, a.SecretHash, a.Class)
	}
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	cmd, err := child("--credentials", creds, "--root", topics.Root())
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p, err := startProc(ctx, "embedded", cmd, filepath.Join(dir, "embedded.log"), "")
	if err != nil {
		return nil, err
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() (string, error) {
		t := time.NewTimer(30 * time.Second)
		defer t.Stop()
		select {
		case l, ok := <-lines:
			if !ok {
				return "", fmt.Errorf("embedded broker: %w (log: %s)", errBrokerExited, p.logPath)
			}
			return l, nil
		case <-t.C:
			return "", fmt.Errorf("embedded broker: no answer in 30s (log: %s)", p.logPath)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	first, err := next()
	if err != nil {
		p.stop()
		return nil, err
	}
	url, ok := strings.CutPrefix(first, "listening ")
	if !ok {
		p.stop()
		return nil, fmt.Errorf("embedded broker said %q", first)
	}
	p.url = url
	p.name = "embedded mochi MQTT v5 (" + runtime.Version() + ", child process)"
	p.gc = func() error {
		if _, err := io.WriteString(stdin, "gc\n"); err != nil {
			return err
		}
		l, err := next()
		if err != nil {
			return err
		}
		var g goStats
		if _, err := fmt.Sscanf(l, "ok goroutines=%d heap=%d stacks=%d", &g.Goroutines, &g.Heap, &g.Stacks); err != nil {
			return fmt.Errorf("embedded broker said %q to gc", l)
		}
		p.goStats = &g
		return nil
	}
	return p, nil
}

// newIdleChildCmd is the hidden `bench idle serve-embedded`: the
// embedded MQTT broker alone, for bench idle to measure apart. It prints
// "listening <url>", answers "ok" to each "gc" line on stdin (after
// returning freed memory to the system), and exits when stdin closes.
func newIdleChildCmd() *cobra.Command {
	var creds, root string
	c := &cobra.Command{
		Use:    "serve-embedded --credentials FILE --root ROOT",
		Short:  "The embedded MQTT broker alone (for bench idle)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveIdleChild(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), creds, root)
		},
	}
	c.Flags().StringVar(&creds, "credentials", "", "credentials file")
	c.Flags().StringVar(&root, "root", schemas.DefaultRoot, "topic root")
	return c
}

func serveIdleChild(ctx context.Context, in io.Reader, out, errw io.Writer, creds, root string) error {
	store, err := broker.LoadCredentialsFile(creds)
	if err != nil {
		return err
	}
	topics, err := schemas.NewTopics(root)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{Listen: "127.0.0.1:0", Auth: store, Topics: topics, MaxQueued: 1000, Logger: log})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Shutdown()
	if err := srv.Ready(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "listening %s\n", srv.URL())
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() == "gc" {
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(out, "ok goroutines=%d heap=%d stacks=%d\n", runtime.NumGoroutine(), ms.HeapInuse, ms.StackInuse)
		}
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
