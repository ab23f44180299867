package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/publisher"
)

// Exit codes of demo and sim.
const (
	exitAborted = 3
)

type demoFlags struct {
	devices   int
	imageSize string
	mqtt      string
	nats      string
	failRate  float64
	seed      uint64
	json      bool
	dir       string
	keep      bool
	phases    []int
	failAt    string
	timeout   time.Duration
	stall     time.Duration
	encrypt   bool
	// beyondLimit runs the embedded brokers past embeddedLimit.
	beyondLimit bool
	// console keeps the console up after the campaign; httpListen is
	// where the API and the console listen.
	console    bool
	httpListen string
	delta      bool
}

func newDemoCmd() *cobra.Command {
	f := &demoFlags{}
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system on this machine: brokers, backend and a simulated fleet",
		Long: `Start the embedded MQTT v5 and NATS brokers and the backend in this process,
create a signing key, build two firmware images (v1 installed on every device,
v2 to roll out), start N simulated devices (each a real update agent with its
own broker credentials, simulated flash, bootloader and state directory), run
a phased campaign v1 -> v2 with live progress, and print what happened, read
from the devices themselves.

With --fail-rate some devices fail their health check after booting v2: the
bootloader rolls them back to v1 and the campaign aborts at its failure
threshold. With --broker and --nats the demo uses those brokers instead of
embedded ones (under a fresh topic root, cleaned up at the end).

With --encrypt, v2 is uploaded encrypted (SUIT firmware encryption, AES-CTR
with a fresh content key): every device gets its own key-encryption key in
its device file, registered with the publisher; one ciphertext is broadcast,
named by its digest, and each device's notice carries the content key
wrapped for its key alone (docs/SECURITY.md, "Firmware encryption").
With --encrypt --delta the delta the server makes from v1 is encrypted too,
with a content key and IV of its own that each device unwraps with v2's key.

The operator console (a web page, live) is served on --http-listen: the
demo prints its URL and a read-only API key to sign in with. With --console
it stays up after the campaign until interrupted (Ctrl-C).

Exit codes: 0 every targeted device confirmed on v2; 3 the campaign was
aborted; 1 any other error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, f) },
	}
	fl := c.Flags()
	fl.IntVar(&f.devices, "devices", 100, "number of simulated devices")
	fl.StringVar(&f.imageSize, "image-size", "1MiB", "firmware image size (bytes, or with KiB/MiB)")
	fl.StringVar(&f.mqtt, "broker", "", "external MQTT v5 broker URL (default: embedded)")
	fl.StringVar(&f.nats, "nats", "", "external NATS URL with JetStream (default: embedded)")
	fl.Float64Var(&f.failRate, "fail-rate", 0, "fraction of devices whose health check fails (0..1)")
	fl.Uint64Var(&f.seed, "seed", 1, "seed for the images and which devices fail (repeatable runs)")
	fl.BoolVar(&f.json, "json", false, "print the summary as JSON")
	fl.StringVar(&f.dir, "dir", "", "work directory (default: a temporary directory, removed unless --keep)")
	fl.BoolVar(&f.keep, "keep", false, "keep the work directory (flash files, state, logs)")
	fl.IntSliceVar(&f.phases, "phases", []int{10, 50, 100}, "cumulative rollout percentages")
	fl.StringVar(&f.failAt, "fail-threshold", "10%", "failures (of the devices notified so far) that abort the campaign")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "campaign timeout")
	fl.BoolVar(&f.beyondLimit, "beyond-limit", false, "run the embedded brokers even past the fleet size x image size this machine was measured to carry (see --help)")
	fl.BoolVar(&f.encrypt, "encrypt", false, "roll out v2 encrypted, with a content key wrapped per device")
	fl.DurationVar(&f.stall, "stall", 3*time.Minute, "stop with an error naming the devices that did not finish when nothing moves for this long")
	fl.StringVar(&f.httpListen, "http-listen", "127.0.0.1:0", "where the HTTP API and the operator console listen (port 0: a free port; empty: none)")
	fl.BoolVar(&f.console, "console", false, "keep the backend and the operator console up after the campaign, until interrupted")
	fl.BoolVar(&f.delta, "delta", false, "v2 is v1 with a small change: run the campaign once with the full image, then again with the delta the server makes from v1, and compare the bytes sent")
	return c
}

// parseSize parses "1048576", "64KiB", "8MiB" (also K, M, KB, MB as
// binary units).
func parseSize(flag, s string) (int, error) {
	t := strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suf string
		m   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSuffix(t, u.suf), u.m
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(t))
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--%s %q: want a positive size such as 1048576, 64KiB or 8MiB", flag, s)
	}
	return n * mult, nil
}

func (f *demoFlags) config() (fleet.Config, error) {
	size, err := parseSize("image-size", f.imageSize)
	if err != nil {
		return fleet.Config{}, err
	}
	fail, err := parsePermille("fail-threshold", f.failAt)
	if err != nil {
		return fleet.Config{}, err
	}
	cfg := fleet.Config{
		Devices: f.devices, ImageSize: size, MQTTURL: f.mqtt, NATSURL: f.nats, FailRate: f.failRate, Seed: f.seed,
		FailPermille: fail, Timeout: f.timeout, Stall: f.stall, Encrypt: f.encrypt,
	}
	for _, p := range f.phases {
		if p < 1 || p > 100 {
			return cfg, fmt.Errorf("--phases: %d outside 1..100", p)
		}
		cfg.Phases = append(cfg.Phases, uint8(p))
	}
	if f.devices < 1 {
		return cfg, fmt.Errorf("--devices %d: want at least 1", f.devices)
	}
	if f.failRate < 0 || f.failRate > 1 {
		return cfg, fmt.Errorf("--fail-rate %g: want 0..1", f.failRate)
	}
	if total := int64(f.devices) * int64(size); f.mqtt == "" && !f.beyondLimit && total > embeddedLimit {
		return cfg, fmt.Errorf("%d devices x %s = %s to deliver is past what the embedded brokers were measured to carry on one machine (%s: 100 x 8 MiB and 1,000 x 1 MiB complete; 500 x 8 MiB did not, docs/BENCHMARKS.md); "+
			"use external brokers (--broker mqtt://HOST:1883 for mosquitto and --nats nats://HOST:4222 for NATS with JetStream), or --beyond-limit to try anyway",
			f.devices, humanBytes(int64(size)), humanBytes(total), humanBytes(embeddedLimit))
	}
	return cfg, nil
}

// embeddedLimit is the most bytes (devices x image size) a demo on the
// embedded brokers delivers without --beyond-limit: measured on a 2-core
// machine, N = 100 with 8 MiB (800 MiB) and N = 1,000 with 1 MiB (1 GiB)
// complete, N = 500 with 8 MiB (4 GiB) aborted with devices that found no
// source (docs/BENCHMARKS.md, "Nothing stalls under load").
const embeddedLimit = 1 << 30

func runDemo(cmd *cobra.Command, f *demoFlags) error {
	cfg, err := f.config()
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if (f.mqtt == "") != (f.nats == "") {
		return &exitError{code: 1, err: errors.New("--broker and --nats go together (external brokers), or give neither (embedded)")}
	}
	dir, cleanup, err := workDir(f.dir, f.keep, "firmcast-demo-")
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	defer cleanup()
	cfg.Dir = dir
	logf, err := os.OpenFile(filepath.Join(dir, "firmcast.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	defer logf.Close()
	cfg.Logger = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))

	errw := cmd.ErrOrStderr()
	fmt.Fprintf(errw, "firmcast demo: %d devices, %s images, brokers: %s\n", cfg.Devices, humanBytes(int64(cfg.ImageSize)), brokerDesc(cfg))
	pv := newProgressView(cmd.Context(), errw, cfg.Devices, cfg.ImageSize)
	cfg.OnReady = func(d time.Duration) {
		fmt.Fprintf(errw, "fleet ready in %.1fs (keys, images, %d devices with v1 installed and connected); starting the campaign\n", d.Seconds(), cfg.Devices)
		pv.start()
	}
	cfg.OnProgress = pv.update
	cfg.HTTPListen = f.httpListen
	cfg.OnConsole = func(url, key string) {
		fmt.Fprintf(errw, "console: %s (sign in with the read-only key %s)\n", url, key)
	}
	held := false
	if f.console {
		if f.httpListen == "" {
			return &exitError{code: 1, err: errors.New("--console needs --http-listen")}
		}
		cfg.Hold = func(ctx context.Context, sum fleet.Summary) {
			pv.stop()
			held = true
			_ = printSummary(cmd.OutOrStdout(), f.json, sum)
			fmt.Fprintln(errw, "\nthe console stays up (--console); interrupt (Ctrl-C) to stop")
			<-ctx.Done()
		}
	}
	var full *fleet.Summary
	if f.delta {
		if full, err = demoFullRun(cmd, cfg); err != nil {
			return &exitError{code: 1, err: err}
		}
		cfg.Delta, cfg.Dir = true, filepath.Join(dir, "delta")
	}
	sum, err := fleet.Run(cmd.Context(), cfg)
	if !held {
		pv.stop()
	}
	if held {
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("demo: %w", err)}
		}
		return summaryExit(sum)
	}
	if err != nil {
		if sum.Campaign != "" {
			// What the devices that did finish did, then why the run stopped.
			_ = printSummary(cmd.OutOrStdout(), f.json, sum)
		}
		return &exitError{code: 1, err: fmt.Errorf("demo: %w", err)}
	}
	if !f.keep && f.dir == "" {
		sum.Next = []string{
			"run again with --keep to keep the device flash files, agent state and logs, then: firmcast boot inspect --flash DIR/devices/dev-0001/flash",
			"docs/BENCHMARKS.md (end to end) for larger fleets; firmcast bench to measure this machine",
		}
	}
	if err := printSummary(cmd.OutOrStdout(), f.json, sum); err != nil {
		return err
	}
	if full != nil && !f.json {
		printDeltaComparison(cmd.OutOrStdout(), *full, sum)
	}
	return summaryExit(sum)
}

// summaryExit maps a run's outcome to the exit code.
func summaryExit(sum fleet.Summary) error {
	switch {
	case sum.Outcome == publisher.CampaignCompleted && sum.ConfirmedV2 == sum.Targeted:
		return nil
	case sum.Outcome == publisher.CampaignAborted:
		return &exitError{code: exitAborted, err: fmt.Errorf("campaign %s aborted: %s", sum.Campaign, sum.Reason)}
	}
	return &exitError{code: 1, err: fmt.Errorf("campaign %s ended %s with %d of %d targeted devices confirmed on v2", sum.Campaign, sum.Outcome, sum.ConfirmedV2, sum.Targeted)}
}

func brokerDesc(cfg fleet.Config) string {
	if cfg.MQTTURL == "" {
		return "embedded MQTT v5 + NATS"
	}
	return cfg.MQTTURL + " + " + cfg.NATSURL
}

// workDir returns dir (created) or a fresh temporary directory, and a
// cleanup that removes a temporary one unless keep.
func workDir(dir string, keep bool, prefix string) (string, func(), error) {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", nil, err
		}
		return dir, func() {}, nil
	}
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	if keep {
		return d, func() {}, nil
	}
	return d, func() { os.RemoveAll(d) }, nil
}

func printSummary(w io.Writer, asJSON bool, s fleet.Summary) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(w, "\ncampaign %s %s", s.Campaign, s.Outcome)
	if s.Reason != "" {
		fmt.Fprintf(w, ": %s", s.Reason)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "  %s\t%v\n", k, v) }
	row("devices", s.Devices)
	row("targeted", s.Targeted)
	row("confirmed on v2", fmt.Sprintf("%d / %d", s.ConfirmedV2, s.Targeted))
	row("rolled back to v1", s.RolledBack)
	row("failed", s.Failed)
	if s.InProgress > 0 {
		row("still updating", s.InProgress)
	}
	row("never notified (on v1)", s.NotNotified)
	if s.PublisherBytes >= 0 {
		row("publisher sent", fmt.Sprintf("%s (%.2fx the %s image)", humanBytes(s.PublisherBytes), s.PublisherRatio, humanBytes(int64(s.ImageSize))))
	}
	row("devices received", fmt.Sprintf("%s (%s per device)", humanBytes(s.DeviceBytes), humanBytes(s.DeviceBytes/int64(max(s.Devices, 1)))))
	row("wall time", fmt.Sprintf("%.1fs campaign (+%.1fs setup)", s.WallSeconds, s.SetupSeconds))
	row("brokers", s.Broker+", "+s.NATS)
	if u := s.Simulator; u != nil {
		row("simulator", fmt.Sprintf("%d processes, %.1fs CPU, peak RSS %s in all", u.Procs, u.CPUSeconds, humanBytes(u.PeakRSS)))
	}
	if s.Encrypted {
		row("v2", "encrypted, ciphertext "+s.V2)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.FailedBy) > 0 {
		fmt.Fprintln(w, "\nfailed or rolled back, by reason:")
		codes := make([]string, 0, len(s.FailedBy))
		for c := range s.FailedBy {
			codes = append(codes, c)
		}
		sort.Strings(codes)
		for _, c := range codes {
			ex := ""
			for _, p := range s.Problems {
				if p.Code == c {
					ex = fmt.Sprintf("e.g. %s (now on %s): %s", p.Device, p.Running, p.Reason)
					break
				}
			}
			fmt.Fprintf(w, "  %-14s %4d  %s\n", c, s.FailedBy[c], ex)
		}
	}
	if len(s.Next) > 0 {
		fmt.Fprintln(w, "\nwhere to look next:")
		for _, n := range s.Next {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	return nil
}

func humanBytes(n int64) string { return fleet.HumanBytes(n) }

// progressView draws live bars on a terminal, or a status line every few
// seconds otherwise.
type progressView struct {
	ctx     context.Context
	w       io.Writer
	n, size int
	tty     bool

	mu      sync.Mutex
	p       *mpb.Progress
	bars    map[string]*mpb.Bar
	last    time.Time
	started bool
	camp    string
}

// progressRows are the device-side states shown, with the states they sum.
var progressRows = []struct {
	name   string
	states []string
}{
	{"downloading", []string{"notified", "manifest-verified", "downloading"}},
	{"staged", []string{"candidate-verified", "staged", "rebooting", "trial"}},
	{"confirmed", []string{"confirmed"}},
	{"rolled back", []string{"rolled-back"}},
	{"failed", []string{"failed"}},
}

func newProgressView(ctx context.Context, w io.Writer, n, size int) *progressView {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressView{ctx: ctx, w: w, n: n, size: size, tty: tty}
}

func (v *progressView) start() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.started = true
	if !v.tty {
		return
	}
	v.p = mpb.NewWithContext(v.ctx, mpb.WithOutput(v.w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
	v.bars = map[string]*mpb.Bar{}
	v.bars["campaign"] = v.p.AddBar(int64(v.n),
		mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-12s", "campaign"))),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
			v.mu.Lock()
			defer v.mu.Unlock()
			return v.camp
		})))
	for _, r := range progressRows {
		v.bars[r.name] = v.p.AddBar(int64(v.n),
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-12s", r.name))),
			mpb.AppendDecorators(decor.CountersNoUnit("%d / %d")))
	}
}

func (v *progressView) update(p fleet.Progress) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.started {
		return
	}
	c := p.Campaign
	v.camp = fmt.Sprintf("%s, phase %d/%d, %d of %d devices opened", c.State, c.Phase+1, len(c.Phases), c.Opened, c.Targets)
	if !v.tty {
		if time.Since(v.last) < 2*time.Second && c.State == publisher.CampaignRunning {
			return
		}
		v.last = time.Now()
		var parts []string
		for _, r := range progressRows {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, sumStates(p.States, r.states)))
		}
		fmt.Fprintf(v.w, "  %s | %s\n", v.camp, strings.Join(parts, ", "))
		return
	}
	v.bars["campaign"].SetCurrent(int64(c.Opened))
	for _, r := range progressRows {
		v.bars[r.name].SetCurrent(int64(sumStates(p.States, r.states)))
	}
}

func sumStates(m map[string]int, states []string) int {
	n := 0
	for _, s := range states {
		n += m[s]
	}
	return n
}

func (v *progressView) stop() {
	v.mu.Lock()
	p, bars := v.p, v.bars
	v.mu.Unlock()
	if p == nil {
		return
	}
	for _, b := range bars {
		b.Abort(false)
	}
	p.Wait()
}
