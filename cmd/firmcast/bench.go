package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/publisher"
)

type benchFlags struct {
	devices   []int
	imageSize string
	chunkSize string
	cases     []string
	mosquitto string
	nats      string
	json      bool
	dir       string
	seed      uint64
	profile   string
	flash     string
}

func newBenchCmd() *cobra.Command {
	f := &benchFlags{}
	c := &cobra.Command{
		Use:   "bench [--cases embedded,mosquitto,nats] [--devices 100,500] [--image-size 8MiB]",
		Short: "Measure a campaign against the raw broker fan-out of the same bytes",
		Long: `For each case (broker) and fleet size, in one run on the same broker:

 (a) raw: the image's chunks (same bytes, same chunk size, MQTT QoS 0 or
     NATS core) fanned out by the broker to N lean subscribers (paho for
     MQTT, nats.go for NATS) that only hash each chunk, check it and write
     it at its offset in a file: the peer baseline;
 (b) firmcast: a one-phase campaign to N simulated devices (real agents,
     bootloader on simulated flash, in this process).

It prints the time until every device holds a verified staged candidate
next to (a) as a ratio, the end-to-end time including boot, confirm and
the last report, publisher egress / image size, the process CPU per MB
delivered and the peak memory (RSS growth) per device. Both sides run in
this process, so CPU and memory include the in-process publisher and,
for the embedded case, the broker.

Cases: embedded (an in-process MQTT v5 broker, JetStream embedded),
mosquitto (--mosquitto, JetStream embedded), nats (--nats: devices and
backend on NATS). Topic roots are unique and cleaned up afterwards.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd, f) },
	}
	fl := c.Flags()
	fl.IntSliceVar(&f.devices, "devices", []int{100}, "fleet sizes")
	fl.StringVar(&f.imageSize, "image-size", "8MiB", "image size")
	fl.StringVar(&f.chunkSize, "chunk-size", "16KiB", "chunk size")
	fl.StringSliceVar(&f.cases, "cases", []string{"embedded"}, "brokers: embedded, mosquitto, nats")
	fl.StringVar(&f.mosquitto, "mosquitto", "mqtt://127.0.0.1:1883", "Mosquitto URL for the mosquitto case")
	fl.StringVar(&f.nats, "nats", "nats://127.0.0.1:4222", "NATS URL (JetStream) for the nats case")
	fl.BoolVar(&f.json, "json", false, "print the results as JSON")
	fl.StringVar(&f.dir, "dir", "", "work directory (default: a temporary directory, removed afterwards)")
	fl.Uint64Var(&f.seed, "seed", 1, "seed for the image bytes")
	fl.StringVar(&f.flash, "flash", "file", "simulated flash of the devices: file (sparse file, as the demo) or mem (in memory)")
	fl.StringVar(&f.profile, "cpuprofile", "", "write a CPU profile of the firmcast campaigns, from their start (not the raw runs, not the fleet setup), to this file")
	c.AddCommand(newBenchIdleCmd())
	return c
}

// benchRow is one (case, N) result.
type benchRow struct {
	Case      string          `json:"case"`
	Devices   int             `json:"devices"`
	ImageSize int             `json:"image_size"`
	ChunkSize int             `json:"chunk_size"`
	Raw       fleet.RawResult `json:"raw"`
	RawCPU    float64         `json:"raw_cpu_seconds"`
	RawPeak   int64           `json:"raw_peak_rss_growth"`
	Firmcast  fleet.Summary   `json:"firmcast"`
	// FcCPU is the process CPU from the campaign's start to its end;
	// FcSetupCPU that of preparing and connecting the fleet before it.
	FcCPU      float64 `json:"firmcast_cpu_seconds"`
	FcSetupCPU float64 `json:"firmcast_setup_cpu_seconds"`
	FcPeak     int64   `json:"firmcast_peak_rss_growth"`
	Ratio      float64 `json:"staged_over_raw"`
}

func runBench(cmd *cobra.Command, f *benchFlags) error {
	fail := func(err error) error { return &exitError{code: 1, err: fmt.Errorf("bench: %w", err)} }
	size, err := parseSize("image-size", f.imageSize)
	if err != nil {
		return fail(err)
	}
	chunk, err := parseSize("chunk-size", f.chunkSize)
	if err != nil {
		return fail(err)
	}
	dir, cleanup, err := workDir(f.dir, false, "firmcast-bench-")
	if err != nil {
		return fail(err)
	}
	defer cleanup()
	logf, err := os.Create(filepath.Join(dir, "bench.log"))
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := cmd.Context()
	errw := cmd.ErrOrStderr()
	image := fleet.Image(f.seed, "v2", size)
	var rows []benchRow
	for _, cs := range f.cases {
		for _, n := range f.devices {
			fmt.Fprintf(errw, "bench %s, %d devices, %s image, %s chunks ...\n", cs, n, humanBytes(int64(size)), humanBytes(int64(chunk)))
			row, err := benchCase(ctx, cs, f, n, image, chunk, filepath.Join(dir, fmt.Sprintf("%s-%d", cs, n)), log)
			if err != nil {
				return fail(fmt.Errorf("%s, %d devices: %w", cs, n, err))
			}
			fmt.Fprintf(errw, "  raw %.2fs (%d/%d complete), firmcast staged %.2fs, done %.2fs (%s)\n",
				row.Raw.Seconds, row.Raw.Complete, n, row.Firmcast.StagedSeconds, row.Firmcast.DoneSeconds, row.Firmcast.Outcome)
			rows = append(rows, row)
		}
	}
	if f.json {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	printBench(cmd.OutOrStdout(), rows)
	return nil
}

func benchCase(ctx context.Context, cs string, f *benchFlags, n int, image []byte, chunk int, dir string, log *slog.Logger) (benchRow, error) {
	row := benchRow{Case: cs, Devices: n, ImageSize: len(image), ChunkSize: chunk}
	if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o700); err != nil {
		return row, err
	}
	cfg := fleet.Config{
		Devices: n, ImageSize: len(image), ChunkSize: uint32(chunk), Seed: f.seed, Dir: filepath.Join(dir, "fleet"),
		Phases: []uint8{100}, ProgressEvery: 50 * time.Millisecond, Settle: 30 * time.Second, Logger: log,
		Timeout: 30 * time.Minute,
		// Delivery is measured from the campaign's start: no random start
		// delay window, a fast leader tick.
		Publisher: func(c *publisher.Config) { c.StartWindow, c.TickInterval = -1, 50*time.Millisecond },
		MemFlash:  f.flash == "mem",
	}
	if f.flash != "mem" && f.flash != "file" {
		return row, fmt.Errorf("--flash %q: want file or mem", f.flash)
	}
	var url string
	switch cs {
	case "embedded":
		srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{Logger: log, MaxQueued: 1000})
		if err != nil {
			return row, err
		}
		if err := srv.Start(); err != nil {
			return row, err
		}
		defer srv.Shutdown()
		if err := srv.Ready(ctx); err != nil {
			return row, err
		}
		url = srv.URL()
	case "mosquitto":
		url = f.mosquitto
	case "nats":
		url = f.nats
		cfg.NATSURL = f.nats
	default:
		return row, fmt.Errorf("--cases: %q (want embedded, mosquitto or nats)", cs)
	}
	cfg.MQTTURL = url
	var err error
	cpu0 := cpuSeconds()
	peak := watchRSS()
	row.Raw, err = fleet.RawFanout(ctx, fleet.RawConfig{URL: url, Subscribers: n, Image: image, ChunkSize: chunk, Dir: filepath.Join(dir, "raw")})
	row.RawPeak = peak()
	row.RawCPU = cpuSeconds() - cpu0
	if err != nil {
		return row, fmt.Errorf("raw fan-out: %w", err)
	}
	_ = os.RemoveAll(filepath.Join(dir, "raw"))
	cpu0 = cpuSeconds()
	peak = watchRSS()
	var pf *os.File
	if f.profile != "" {
		if pf, err = os.Create(fmt.Sprintf("%s.%s-%d", f.profile, cs, n)); err != nil {
			return row, err
		}
		defer pf.Close()
	}
	// CPU and the profile count from the campaign's start: the fleet's
	// setup (factory images installed on every flash) is reported apart.
	cpuStart, profiling := 0.0, false
	cfg.OnReady = func(time.Duration) {
		cpuStart = cpuSeconds()
		profiling = pf != nil && pprof.StartCPUProfile(pf) == nil
	}
	row.Firmcast, err = fleet.Run(ctx, cfg)
	if profiling {
		pprof.StopCPUProfile()
	}
	row.FcPeak = peak()
	if cpuStart == 0 {
		cpuStart = cpu0
	}
	row.FcSetupCPU = cpuStart - cpu0
	row.FcCPU = cpuSeconds() - cpuStart
	if err != nil {
		return row, fmt.Errorf("firmcast campaign: %w", err)
	}
	row.Firmcast.Problems = nil
	row.Firmcast.Next = nil
	if row.Raw.Seconds > 0 {
		row.Ratio = row.Firmcast.StagedSeconds / row.Raw.Seconds
	}
	_ = os.RemoveAll(filepath.Join(dir, "fleet"))
	return row, nil
}

func printBench(w io.Writer, rows []benchRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tN\timage\traw fan-out\tcomplete\tfirmcast staged\tratio\tend to end\tcampaign end\tconfirmed\tegress/image\tCPU ms/MB raw\tCPU ms/MB firmcast\tpeak RSS/dev raw\tpeak RSS/dev firmcast\t")
	for _, r := range rows {
		mb := float64(r.Devices) * float64(r.ImageSize) / (1 << 20)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.2fs\t%d/%d\t%.2fs\t%.2fx\t%.2fs\t%.2fs\t%d/%d\t%.2f\t%.1f\t%.1f\t%s\t%s\t\n",
			r.Case, r.Devices, humanBytes(int64(r.ImageSize)), r.Raw.Seconds, r.Raw.Complete, r.Devices,
			r.Firmcast.StagedSeconds, r.Ratio, r.Firmcast.DoneSeconds, r.Firmcast.CampaignSeconds,
			r.Firmcast.ConfirmedV2, r.Devices, r.Firmcast.PublisherRatio,
			1000*r.RawCPU/mb, 1000*r.FcCPU/mb,
			humanBytes(r.RawPeak/int64(r.Devices)), humanBytes(r.FcPeak/int64(r.Devices)))
	}
	_ = tw.Flush()
}

// cpuSeconds is this process's user+system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// rss is the resident set size in bytes (Linux), 0 if unknown.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	fs := strings.Fields(string(b))
	if len(fs) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(fs[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// watchRSS samples the RSS every 50ms; the returned function stops it and
// returns the peak growth over the RSS at the start.
func watchRSS() func() int64 {
	base := rss()
	var mu sync.Mutex
	peak := base
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if r := rss(); r > 0 {
					mu.Lock()
					peak = max(peak, r)
					mu.Unlock()
				}
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return max(peak-base, 0)
	}
}
