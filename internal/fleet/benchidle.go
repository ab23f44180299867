package fleet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/schemas"
)

// IdleBenchConfig configures RunIdleBench. It is taken by value.
type IdleBenchConfig struct {
	// Agents is the number of idle agents per case.
	Agents int
	// Cases: mosquitto, nats, nats-core, embedded.
	Cases []string
	// Parallel connections are set up at a time.
	Parallel int
	// ImageSize sizes each agent's in-memory flash.
	ImageSize int
	// Dir is the work directory. Required.
	Dir string
	// Timeout bounds each case. Default 15 minutes.
	Timeout time.Duration
	// Child returns the command that runs the embedded broker as a
	// separate process with ServeIdleChild (`firmcast bench idle
	// serve-embedded ARGS`); tests run their own binary.
	Child func(args ...string) (*exec.Cmd, error)
	// Logger receives the agents' logs.
	Logger *slog.Logger
	// Progress receives a line per case (nil: none).
	Progress io.Writer
}

// idleClients are the idle agents (IdleFleet) or the lean NATS baseline
// (IdleNATSConns).
type idleClients interface {
	Connect(ctx context.Context, url string) error
	Reported() int
	Subscriptions() int
	FlashBytes() int64
	Close()
}

// IdleRow is the result of one case.
type IdleRow struct {
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

// RunIdleBench measures, per case, the broker memory of Agents idle
// connected agents; see `firmcast bench idle --help`.
func RunIdleBench(ctx context.Context, cfg IdleBenchConfig) ([]IdleRow, error) {
	if cfg.Agents <= 0 {
		return nil, fmt.Errorf("--agents %d: want at least 1", cfg.Agents)
	}
	for _, cs := range cfg.Cases {
		switch cs {
		case "mosquitto", "nats", "nats-core", "embedded":
		default:
			return nil, fmt.Errorf("--cases: %q (want mosquitto, nats, nats-core or embedded)", cs)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(cfg.Agents)+256 > lim.Cur {
		return nil, fmt.Errorf("--agents %d: the open-file limit is %d (raise it with ulimit -n)", cfg.Agents, lim.Cur)
	}
	var rows []IdleRow
	for _, cs := range cfg.Cases {
		fmt.Fprintf(cfg.Progress, "bench idle %s, %d agents ...\n", cs, cfg.Agents)
		cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		row, err := idleCase(cctx, cs, cfg, filepath.Join(cfg.Dir, cs))
		cancel()
		if err != nil {
			return rows, fmt.Errorf("%s: %w", cs, err)
		}
		fmt.Fprintf(cfg.Progress, "  %d/%d connected in %.2fs, broker %s -> %s (%s per connection)\n", row.Connected, row.Agents,
			row.ConnectSeconds, HumanBytes(row.BrokerRSSBefore), HumanBytes(row.BrokerRSSSettled), HumanBytes(row.BrokerPerConn))
		rows = append(rows, row)
	}
	return rows, nil
}

func idleCase(ctx context.Context, cs string, cfg IdleBenchConfig, dir string) (row IdleRow, err error) {
	row = IdleRow{Case: cs, Agents: cfg.Agents}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	topics := schemas.MustTopics("fcidle" + randomHex(6))
	prefix := "idle" + randomHex(3)
	a0 := selfMem()
	icfg := IdleConfig{
		Agents: cfg.Agents, Dir: filepath.Join(dir, "devices"), Topics: topics, Prefix: prefix,
		ImageSize: cfg.ImageSize, Parallel: cfg.Parallel, Logger: cfg.Logger,
	}
	var fl idleClients
	var accounts []broker.Account
	if cs == "nats-core" {
		fl, err = NewIdleNATSConns(icfg)
	} else {
		var f *IdleFleet
		f, err = NewIdleFleet(ctx, icfg)
		if f != nil {
			fl, accounts = f, f.Accounts
		}
	}
	if err != nil {
		return row, err
	}
	defer fl.Close()
	row.FlashPerAgent = fl.FlashBytes()
	var bp *idleBroker
	switch cs {
	case "mosquitto":
		bp, err = startIdleMosquitto(ctx, filepath.Join(dir, "mosquitto"), topics, accounts)
	case "nats", "nats-core":
		bp, err = startIdleNATS(ctx, filepath.Join(dir, "nats"), topics)
	case "embedded":
		bp, err = startIdleEmbedded(ctx, filepath.Join(dir, "embedded"), topics, accounts, cfg.Child)
	}
	if err != nil {
		return row, err
	}
	defer bp.Stop()
	row.Broker = bp.name
	if row.BrokerRSSBefore, err = bp.settled(ctx); err != nil {
		return row, err
	}
	g0 := bp.goStats
	cpu0, err := bp.CPU()
	if err != nil {
		return row, err
	}
	t0 := time.Now()
	err = fl.Connect(ctx, bp.URL())
	row.ConnectSeconds = time.Since(t0).Seconds()
	if cpu1, cerr := bp.CPU(); cerr == nil {
		row.BrokerCPUSeconds = cpu1 - cpu0
	}
	row.Connected, row.Subscriptions = fl.Reported(), fl.Subscriptions()
	if err != nil {
		return row, fmt.Errorf("connecting agents (%d up; broker log %s): %w", row.Connected, bp.LogPath(), err)
	}
	if row.BrokerRSSAfter, _, err = bp.Mem(); err != nil {
		return row, err
	}
	if row.BrokerRSSSettled, err = bp.settled(ctx); err != nil {
		return row, err
	}
	if _, row.BrokerHWM, err = bp.Mem(); err != nil {
		return row, err
	}
	a1 := selfMem()
	n := int64(cfg.Agents)
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
	r, _, _ := brokerproc.ProcMem(os.Getpid())
	return memSample{rss: r, heap: int64(ms.HeapInuse), goroutines: runtime.NumGoroutine()}
}

// idleBroker is a broker process under measurement.
type idleBroker struct {
	*brokerproc.Process
	name string
	url  string // when set, overrides Process.URL (the child reports it)
	// gc, when set, asks the process to collect garbage and return freed
	// memory to the system (the embedded broker child).
	gc func() error
	// goStats is what the last gc reported (Go brokers only).
	goStats *goStats
}

// goStats is a Go broker's goroutines, heap in use and goroutine stacks
// (bytes).
type goStats struct {
	Goroutines   int
	Heap, Stacks int64
}

// URL is where the agents connect.
func (b *idleBroker) URL() string {
	if b.url != "" {
		return b.url
	}
	return b.Process.URL()
}

// settled returns the broker's RSS once it stopped moving: after a
// collection (when the broker can be asked for one), samples 250ms apart
// until two consecutive ones differ by less than 0.5%, at most 40.
func (b *idleBroker) settled(ctx context.Context) (int64, error) {
	if b.gc != nil {
		if err := b.gc(); err != nil {
			return 0, err
		}
	}
	prev, _, err := b.Mem()
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
		cur, _, err := b.Mem()
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

// startIdleMosquitto runs mosquitto on a free port with the policy
// `firmcast broker mosquitto-config` writes for accounts (plus one
// backend account), no persistence and quiet logs.
func startIdleMosquitto(ctx context.Context, dir string, topics schemas.Topics, accounts []broker.Account) (*idleBroker, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	all := append([]broker.Account{{
		Identity: broker.Identity{Username: "firmcast-backend", Role: broker.RoleBackend}, Secret: randomHex(16),
	}}, accounts...)
	policy, err := brokerproc.MosquittoPolicyConf(dir, topics, all)
	if err != nil {
		return nil, err
	}
	p, err := brokerproc.StartMosquitto(ctx, brokerproc.MosquittoSpec{Dir: dir,
		Conf: "max_connections -1\nconnection_messages false\nlog_type error\nlog_type warning\n" + policy})
	if err != nil {
		return nil, err
	}
	bin, _ := brokerproc.LookBinary("mosquitto")
	name := strings.TrimSpace("mosquitto " + strings.TrimPrefix(brokerproc.BinaryVersion(bin, "-h"), "mosquitto "))
	return &idleBroker{Process: p, name: name}, nil
}

// startIdleNATS runs nats-server with JetStream on a free port
// (anonymous) and creates the retained-notice stream, as the backend
// does at start.
func startIdleNATS(ctx context.Context, dir string, topics schemas.Topics) (*idleBroker, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p, err := brokerproc.StartNATSServer(ctx, brokerproc.NATSServerSpec{Dir: dir})
	if err != nil {
		return nil, err
	}
	bin, _ := brokerproc.LookBinary("nats-server")
	b := &idleBroker{Process: p, name: strings.TrimSpace(brokerproc.BinaryVersion(bin, "--version") + " (JetStream, anonymous)")}
	nt, err := broker.DialNATS(ctx, broker.Config{URL: p.URL(), Topics: topics, ClientID: "firmcast-backend"})
	if err == nil {
		_, err = nt.NoticeStream(ctx)
		_ = nt.Close(ctx)
	}
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("nats notice stream: %w", err)
	}
	return b, nil
}

// startIdleEmbedded runs the embedded MQTT broker in a child process
// (child, running ServeIdleChild) with a credentials file holding
// accounts.
func startIdleEmbedded(ctx context.Context, dir string, topics schemas.Topics, accounts []broker.Account, child func(...string) (*exec.Cmd, error)) (*idleBroker, error) {
	if child == nil {
		return nil, errors.New("the embedded case needs a child process command")
	}
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
	var stdin io.WriteCloser
	var stdout io.ReadCloser
	p, err := brokerproc.Start(ctx, brokerproc.Spec{
		Name: "embedded", Bin: cmd.Path, Args: cmd.Args[1:], LogPath: filepath.Join(dir, "embedded.log"),
		Prepare: func(c *exec.Cmd) (err error) {
			c.Env = cmd.Env
			if stdin, err = c.StdinPipe(); err != nil {
				return err
			}
			stdout, err = c.StdoutPipe()
			return err
		},
	})
	if err != nil {
		return nil, err
	}
	ib := &idleBroker{Process: p, name: "embedded mochi MQTT v5 (" + runtime.Version() + ", child process)"}
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
				return "", fmt.Errorf("embedded broker: %w (log %s)", brokerproc.ErrExited, p.LogPath())
			}
			return l, nil
		case <-t.C:
			return "", fmt.Errorf("embedded broker: no answer in 30s (log %s)", p.LogPath())
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	first, err := next()
	if err != nil {
		p.Stop()
		return nil, err
	}
	url, ok := strings.CutPrefix(first, "listening ")
	if !ok {
		p.Stop()
		return nil, fmt.Errorf("embedded broker said %q", first)
	}
	ib.url = url
	ib.gc = func() error {
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
		ib.goStats = &g
		return nil
	}
	return ib, nil
}

// ServeIdleChild is the body of `firmcast bench idle serve-embedded`: the
// embedded MQTT broker alone (through the stack), for RunIdleBench to
// measure apart. It prints "listening <url>", answers each "gc" line on
// in (after returning freed memory to the system) with its goroutines,
// heap and stacks, and returns when in closes.
func ServeIdleChild(ctx context.Context, in io.Reader, out, errw io.Writer, creds, root string) error {
	f, err := os.Open(creds)
	if err != nil {
		return err
	}
	accounts, err := broker.ReadAccounts(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", creds, err)
	}
	topics, err := schemas.NewTopics(root)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := stack.Start(ctx, stack.Config{Topics: topics, NoNATS: true, Accounts: accounts, Logger: log})
	if err != nil {
		return err
	}
	defer st.Close(context.WithoutCancel(ctx))
	fmt.Fprintf(out, "listening %s\n", st.MQTTURL)
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
