package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// BenchConfig configures RunBench. It is taken by value.
type BenchConfig struct {
	// Cases are the brokers: "embedded" (an in-process MQTT v5 broker,
	// JetStream embedded), "mosquitto" (MosquittoURL, JetStream
	// embedded), "nats" (NATSURL: devices and backend on NATS).
	Cases []string
	// Devices are the fleet sizes, each run for every case.
	Devices []int
	// ImageSize and ChunkSize in bytes.
	ImageSize, ChunkSize int
	// MosquittoURL and NATSURL are the external brokers of those cases.
	MosquittoURL, NATSURL string
	// Runs repeats each (case, N) this many times. Default 1.
	Runs int
	// Dir is the work directory. Required.
	Dir string
	// Seed seeds the image bytes.
	Seed uint64
	// MemFlash gives the devices in-memory flash instead of sparse files.
	MemFlash bool
	// Loss is the fraction of chunks each firmcast device drops at its
	// receive path, independently (Config.Loss); the raw side loses
	// nothing (it has no repair).
	Loss float64
	// Coded turns on the publisher's erasure-coded repair
	// (publisher.Config.CodedRepair): the image gets a coded chunk table.
	Coded bool
	// CodedBlock and CodedParity are the coded table's block size K and
	// parity chunks per block P (publisher.Config.CodedBlock,
	// CodedParity); 0: the publisher's defaults.
	CodedBlock, CodedParity int
	// MaxRate caps the publisher's chunk egress in bytes per second
	// (publisher.Config.MaxBytesPerSecond); 0: no cap.
	MaxRate int64
	// WaveEcho is the publisher's echo window (publisher.Config.WaveEcho:
	// chunk i of a wave goes once chunk i-WaveEcho came back from the
	// broker); 0: the demo's 32.
	WaveEcho int
	// WaveBurst is how many chunks of a wave go at a time on NATS
	// (publisher.Config.WaveBurst); the MQTT cases send one at a time.
	// 0: 1.
	WaveBurst int
	// WaveReady is how long a wave's first chunk waits for the devices
	// to take its chunk table (publisher.Config.WaveReady); 0: no wait.
	WaveReady time.Duration
	// DeviceFsync makes the simulated devices fsync their flash and
	// state as deployed agents do. Off by default: the fleet shares one
	// disk, where hundreds of devices' fsyncs serialise in its journal
	// and stall their downloads for a cost no real fleet pays (each
	// device has its own flash); the raw side does not fsync either.
	DeviceFsync bool
	// HoldBoots holds every device's install until the whole fleet has
	// staged (FleetConfig.HoldBoots): the staged time then measures the
	// delivery, not the installs of early devices, which on this host
	// share its cores with the downloads (real devices have their own).
	HoldBoots bool
	// ColdPages leaves the files both sides write into to the host's page
	// cache as it finds them. By default the raw side's files and the
	// devices' free slots are written full of the bytes they read as, and
	// written back, before each side's clock starts (TouchRawFiles,
	// Fleet.TouchFreeSlots): on a virtual machine that gives freed memory
	// back to its host, the first write to a page costs a host fault,
	// and the side whose writes last longer (or come later) paid more of
	// them.
	ColdPages bool
	// ParityInMemory makes the devices hold the parity chunks of a coded
	// download in memory, not in a scratch file beside their fetch
	// progress (deviceagent.Config.ParityInMemory): the agents' way before
	// the scratch, for comparison.
	ParityInMemory bool
	// PaceReporters is how many of the N devices report their download
	// progress every PaceInterval while they download (agent
	// ProgressInterval), spread over the rollout order: the designated
	// receivers whose reports pace the wave (publisher Config.WavePace,
	// set to 1s). The others report as deployed agents do. 0: none, and
	// waves are not paced from reports.
	PaceReporters int
	// PaceInterval is the designated receivers' progress interval.
	// Default 250ms.
	PaceInterval time.Duration
	// Encrypt runs, next to each firmcast campaign, the same campaign of
	// the image encrypted (Config.Encrypt: a content key wrapped per
	// device, the devices decrypting as they install), on the same
	// broker and fleet size, alternating which goes first run by run
	// (BenchRow.Encrypted, EncRatio).
	Encrypt bool
	// CPUProfile, when set, receives a CPU profile of each firmcast
	// campaign from its start until the fleet has staged (the window of
	// the staged time, BenchRow.FcStagedCPU), as
	// CPUProfile.<case>-<N>[-<run>]; and one of the raw side, its peer,
	// as the same name with ".raw" appended (pprof -diff_base).
	CPUProfile string
	// MemProfile, when set, receives a heap profile (in use) of each
	// firmcast campaign taken when the devices have received half of the
	// image bytes, as MemProfile.<case>-<N>[-<run>]: where the
	// simulator's memory goes; and one at the process's RSS peak during
	// the campaign (rewritten at each new peak 16 MiB above the last),
	// as the same name with ".peak" appended.
	MemProfile string
	// Timeout bounds each campaign. Default 30 minutes.
	Timeout time.Duration
	// Stall ends a run when nothing moves for this long (Config.Stall).
	Stall time.Duration
	// Logger receives the components' logs.
	Logger *slog.Logger
	// Progress receives one line per run started and finished (nil:
	// none).
	Progress io.Writer
}

// BenchRow is one (case, N, run) result.
type BenchRow struct {
	Case      string    `json:"case"`
	Devices   int       `json:"devices"`
	Run       int       `json:"run"`
	ImageSize int       `json:"image_size"`
	ChunkSize int       `json:"chunk_size"`
	Raw       RawResult `json:"raw"`
	RawCPU    float64   `json:"raw_cpu_seconds"`
	// RawPeak and FcPeak are each side's peak RSS growth over the RSS
	// at its start, the Go heap collected and returned to the system
	// first (so that what the other side left behind does not count for
	// either); RawPeakRSS and FcPeakRSS the process's peak RSS itself.
	RawPeak    int64   `json:"raw_peak_rss_growth"`
	RawPeakRSS int64   `json:"raw_peak_rss"`
	Firmcast   Summary `json:"firmcast"`
	// FcCPU is the process CPU from the campaign's start to its end;
	// FcSetupCPU that of preparing and connecting the fleet before it.
	// FcStagedCPU is that of the campaign's start until every device had
	// staged (or ended), seen at the progress interval (50 ms): the
	// window of the staged time, to set beside RawCPU.
	FcCPU       float64 `json:"firmcast_cpu_seconds"`
	FcStagedCPU float64 `json:"firmcast_staged_cpu_seconds,omitempty"`
	FcSetupCPU  float64 `json:"firmcast_setup_cpu_seconds"`
	FcPeak      int64   `json:"firmcast_peak_rss_growth"`
	FcPeakRSS   int64   `json:"firmcast_peak_rss"`
	// RawSched and FcSched are the 50th and 99th percentiles, in
	// milliseconds, of how long this process's goroutines waited
	// runnable before they ran, over each side (runtime/metrics
	// /sched/latencies:seconds): both sides share two cores with every
	// simulated device, so this is how long a publisher's goroutine can
	// wait behind the devices' work (a real publisher has its own).
	RawSched [2]float64 `json:"raw_sched_latency_p50_p99_ms"`
	FcSched  [2]float64 `json:"firmcast_sched_latency_p50_p99_ms"`
	// RawHostCPU and FcStagedHostCPU are the CPU seconds the whole host
	// spent (every core busy, any process: /proc/stat) over the raw side
	// and over the firmcast campaign's staged window, beside RawCPU and
	// FcStagedCPU: what is not this process's is mostly the broker's (an
	// external one shares these cores too). Their difference from
	// cores x seconds is the time the host had a core idle. RawSteal and
	// FcStagedSteal are the CPU seconds the hypervisor took from this
	// virtual machine's cores over the same windows (steal time, not
	// counted in the host's CPU): a run it took much from is slower for
	// reasons outside both sides.
	RawHostCPU      float64 `json:"raw_host_cpu_seconds,omitempty"`
	FcStagedHostCPU float64 `json:"firmcast_staged_host_cpu_seconds,omitempty"`
	RawSteal        float64 `json:"raw_steal_seconds,omitempty"`
	FcStagedSteal   float64 `json:"firmcast_staged_steal_seconds,omitempty"`
	Ratio           float64 `json:"staged_over_raw"`
	// Encrypted is the encrypted campaign's summary (BenchConfig.Encrypt)
	// and EncRatio its staged time over the plain campaign's.
	Encrypted *Summary `json:"encrypted,omitempty"`
	EncRatio  float64  `json:"encrypted_staged_over_plain,omitempty"`
	// Error is set when this run failed; the other runs still report.
	Error string `json:"error,omitempty"`
}

// RunBench runs every (case, N) Runs times, each a raw broker fan-out of
// the image next to a one-phase firmcast campaign on the same broker, and
// returns one row per run. A run that fails is reported in its row's
// Error and the bench goes on; the error returned joins every failure.
func RunBench(ctx context.Context, cfg BenchConfig) ([]BenchRow, error) {
	if cfg.Runs <= 0 {
		cfg.Runs = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	for _, cs := range cfg.Cases {
		if cs != "embedded" && cs != "mosquitto" && cs != "nats" {
			return nil, fmt.Errorf("--cases: %q (want embedded, mosquitto or nats)", cs)
		}
	}
	image := Image(cfg.Seed, "v2", cfg.ImageSize)
	var rows []BenchRow
	var errs []error
	for _, cs := range cfg.Cases {
		for _, n := range cfg.Devices {
			for run := 1; run <= cfg.Runs; run++ {
				fmt.Fprintf(cfg.Progress, "bench %s, %d devices, %s image, %s chunks, run %d/%d ...\n", cs, n,
					HumanBytes(int64(cfg.ImageSize)), HumanBytes(int64(cfg.ChunkSize)), run, cfg.Runs)
				name := fmt.Sprintf("%s-%d", cs, n)
				if cfg.Runs > 1 {
					name += "-" + strconv.Itoa(run)
				}
				row, err := benchCase(ctx, cs, cfg, n, run, image, filepath.Join(cfg.Dir, name), name)
				row.Run = run
				if err != nil {
					err = fmt.Errorf("%s, %d devices, run %d: %w", cs, n, run, err)
					row.Error = err.Error()
					errs = append(errs, err)
					fmt.Fprintf(cfg.Progress, "  failed: %v\n", err)
				} else {
					fmt.Fprintf(cfg.Progress, "  raw %.2fs (%d/%d complete), firmcast staged %.2fs, done %.2fs (%s)\n",
						row.Raw.Seconds, row.Raw.Complete, n, row.Firmcast.StagedSeconds, row.Firmcast.DoneSeconds, row.Firmcast.Outcome)
					if e := row.Encrypted; e != nil {
						fmt.Fprintf(cfg.Progress, "  encrypted staged %.2fs (%.2fx the plain campaign), done %.2fs (%s)\n",
							e.StagedSeconds, row.EncRatio, e.DoneSeconds, e.Outcome)
					}
				}
				rows = append(rows, row)
				if ctx.Err() != nil {
					return rows, errors.Join(append(errs, ctx.Err())...)
				}
			}
		}
	}
	return rows, errors.Join(errs...)
}

func benchCase(ctx context.Context, cs string, bc BenchConfig, n, run int, image []byte, dir, name string) (BenchRow, error) {
	row := BenchRow{Case: cs, Devices: n, ImageSize: len(image), ChunkSize: bc.ChunkSize}
	if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o700); err != nil {
		return row, err
	}
	timeout := bc.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Minute
	}
	cfg := Config{
		Devices: n, ImageSize: len(image), ChunkSize: uint32(bc.ChunkSize), Seed: bc.Seed, V2: image, Dir: filepath.Join(dir, "fleet"),
		Phases: []uint8{100}, ProgressEvery: 50 * time.Millisecond, Settle: 30 * time.Second, Logger: bc.Logger,
		Timeout: timeout, Stall: bc.Stall, HoldBoots: bc.HoldBoots,
		Agent: func(c *deviceagent.Config) { c.NoSync, c.ParityInMemory = !bc.DeviceFsync, bc.ParityInMemory },
		// Delivery is measured from the campaign's start: no random start
		// delay window, a fast leader tick.
		Publisher: func(c *publisher.Config) {
			c.StartWindow, c.TickInterval = -1, 50*time.Millisecond
			c.CodedRepair = bc.Coded
			c.CodedBlock, c.CodedParity = bc.CodedBlock, bc.CodedParity
			c.MaxBytesPerSecond = bc.MaxRate
			if bc.WaveEcho > 0 {
				c.WaveEcho = bc.WaveEcho
			}
			c.WaveReady = bc.WaveReady
		},
		MemFlash: bc.MemFlash,
		Loss:     bc.Loss,
		Touch:    !bc.ColdPages,
	}
	if bc.PaceReporters > 0 {
		every := max(n/bc.PaceReporters, 1)
		iv := bc.PaceInterval
		if iv <= 0 {
			iv = 250 * time.Millisecond
		}
		var k atomic.Int64
		pub := cfg.Publisher
		cfg.Publisher = func(c *publisher.Config) {
			pub(c)
			c.WavePace = time.Second
		}
		agent := cfg.Agent
		cfg.Agent = func(ac *deviceagent.Config) {
			agent(ac)
			if (k.Add(1)-1)%int64(every) == 0 {
				ac.ProgressInterval = iv
			}
		}
	}
	var url string
	switch cs {
	case "embedded":
		// The embedded MQTT broker alone, open: the raw side cannot
		// authenticate, and the fleet brings its own JetStream.
		st, err := stack.Start(ctx, stack.Config{Topics: schemas.MustTopics("fcbench" + randomHex(6)), NoNATS: true, Open: true, Logger: bc.Logger})
		if err != nil {
			return row, err
		}
		defer st.Close(context.WithoutCancel(ctx))
		url = st.MQTTURL
	case "mosquitto":
		url = bc.MosquittoURL
	case "nats":
		url = bc.NATSURL
		cfg.NATSURL = bc.NATSURL
		pub := cfg.Publisher
		cfg.Publisher = func(c *publisher.Config) {
			pub(c)
			c.WaveBurst = bc.WaveBurst
		}
	}
	cfg.MQTTURL = url
	var err error
	// Each side starts with nothing of the host's left to write back:
	// the previous run's files are gone, and the fleet's setup (a factory
	// image on 500 flash files, 4 GiB at 8 MiB) is flushed before the
	// campaign starts (OnReady below), or the kernel's writeback of it
	// takes CPU from the measured campaign.
	if !bc.ColdPages {
		if err := TouchRawFiles(filepath.Join(dir, "raw"), n, len(image)); err != nil {
			return row, fmt.Errorf("raw fan-out: %w", err)
		}
	}
	syscall.Sync()
	cpu0 := cpuSeconds()
	host0, steal0 := hostCPUSeconds()
	sched := schedLatency()
	peak := watchRSS(bc.Logger, "raw", nil)
	stopRawProfile := func() {}
	if bc.CPUProfile != "" {
		f, err := os.Create(bc.CPUProfile + "." + name + ".raw")
		if err != nil {
			return row, err
		}
		defer f.Close()
		if pprof.StartCPUProfile(f) == nil {
			stopRawProfile = pprof.StopCPUProfile
		}
	}
	row.Raw, err = RawFanout(ctx, RawConfig{URL: url, Subscribers: n, Image: image, ChunkSize: bc.ChunkSize, Dir: filepath.Join(dir, "raw")})
	stopRawProfile()
	row.RawPeak, row.RawPeakRSS = peak()
	row.RawCPU = cpuSeconds() - cpu0
	host1, steal1 := hostCPUSeconds()
	row.RawHostCPU, row.RawSteal = host1-host0, steal1-steal0
	row.RawSched = sched()
	if err != nil {
		return row, fmt.Errorf("raw fan-out: %w", err)
	}
	_ = os.RemoveAll(filepath.Join(dir, "raw"))
	// The encrypted campaign (BenchConfig.Encrypt): the same fleet size,
	// images and broker, its own fleet and backend, without the
	// profiles; before the plain one on even runs, after it on odd ones.
	var encSum Summary
	encrypted := func() error {
		if !bc.Encrypt {
			return nil
		}
		ec := cfg
		ec.Encrypt, ec.Dir = true, filepath.Join(dir, "fleet-encrypted")
		var err error
		if encSum, err = Run(ctx, ec); err != nil {
			return fmt.Errorf("encrypted firmcast campaign: %w", err)
		}
		_ = os.RemoveAll(ec.Dir)
		return nil
	}
	if run%2 == 0 {
		if err := encrypted(); err != nil {
			return row, err
		}
	}
	cpu0 = cpuSeconds()
	var atPeak func()
	if bc.MemProfile != "" {
		write := func(path, kind string, debug int) {
			f, err := os.Create(path)
			if err != nil {
				bc.Logger.Warn(kind+" profile at the RSS peak", "err", err)
				return
			}
			defer f.Close()
			_ = pprof.Lookup(kind).WriteTo(f, debug)
		}
		atPeak = func() {
			write(bc.MemProfile+"."+name+".peak", "heap", 0)
			write(bc.MemProfile+"."+name+".goroutines", "goroutine", 1)
		}
	}
	sched = schedLatency()
	peak = watchRSS(bc.Logger, "firmcast", atPeak)
	var pf *os.File
	if bc.CPUProfile != "" {
		if pf, err = os.Create(bc.CPUProfile + "." + name); err != nil {
			return row, err
		}
		defer pf.Close()
	}
	// CPU and the profile count from the campaign's start: the fleet's
	// setup (factory images installed on every flash) is reported apart.
	cpuStart, hostStart, stealStart, profiling := 0.0, 0.0, 0.0, false
	cfg.OnReady = func(time.Duration) {
		syscall.Sync()
		cpuStart = cpuSeconds()
		hostStart, stealStart = hostCPUSeconds()
		profiling = pf != nil && pprof.StartCPUProfile(pf) == nil
	}
	// When the fleet has staged: its CPU, and the CPU profile's end.
	var stagedOnce sync.Once
	stagedCPU, stagedHost, stagedSteal := 0.0, 0.0, 0.0
	var halfOnce sync.Once
	half := int64(n) * int64(len(image)) / 2
	cfg.OnProgress = func(p Progress) {
		if cpuStart != 0 && fleetStaged(p) {
			stagedOnce.Do(func() {
				stagedCPU = cpuSeconds() - cpuStart
				h, st := hostCPUSeconds()
				stagedHost, stagedSteal = h-hostStart, st-stealStart
				if profiling {
					pprof.StopCPUProfile()
					profiling = false
				}
			})
		}
		if bc.MemProfile != "" && p.RxBytes >= half {
			halfOnce.Do(func() {
				f, err := os.Create(bc.MemProfile + "." + name)
				if err != nil {
					bc.Logger.Warn("heap profile", "err", err)
					return
				}
				defer f.Close()
				_ = pprof.Lookup("heap").WriteTo(f, 0)
			})
		}
	}
	row.Firmcast, err = Run(ctx, cfg)
	if profiling {
		pprof.StopCPUProfile()
	}
	row.FcPeak, row.FcPeakRSS = peak()
	row.FcSched = sched()
	if cpuStart == 0 {
		cpuStart = cpu0
	}
	row.FcSetupCPU = cpuStart - cpu0
	row.FcCPU = cpuSeconds() - cpuStart
	row.FcStagedCPU = stagedCPU
	row.FcStagedHostCPU, row.FcStagedSteal = stagedHost, stagedSteal
	if err != nil {
		return row, fmt.Errorf("firmcast campaign: %w", err)
	}
	row.Firmcast.Problems = nil
	row.Firmcast.Next = nil
	if row.Raw.Seconds > 0 {
		row.Ratio = row.Firmcast.StagedSeconds / row.Raw.Seconds
	}
	_ = os.RemoveAll(filepath.Join(dir, "fleet"))
	if run%2 != 0 {
		if err := encrypted(); err != nil {
			return row, err
		}
	}
	if bc.Encrypt {
		encSum.Problems, encSum.Next = nil, nil
		row.Encrypted = &encSum
		if row.Firmcast.StagedSeconds > 0 {
			row.EncRatio = encSum.StagedSeconds / row.Firmcast.StagedSeconds
		}
	}
	return row, nil
}

// BenchStat is the median and range of one figure over a (case, N)'s
// successful runs.
type BenchStat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// BenchSummary sums up the runs of one (case, N).
type BenchSummary struct {
	Case    string `json:"case"`
	Devices int    `json:"devices"`
	// Runs counts the runs, OK those that completed with every device
	// confirmed.
	Runs, OK int
	Raw      BenchStat `json:"raw_seconds"`
	Staged   BenchStat `json:"staged_seconds"`
	Ratio    BenchStat `json:"staged_over_raw"`
	Egress   BenchStat `json:"egress_over_image"`
	// EncStaged and EncRatio are the encrypted campaigns' staged time
	// and its ratio to the plain campaign's of the same run
	// (BenchConfig.Encrypt; zero without).
	EncStaged BenchStat `json:"encrypted_staged_seconds"`
	EncRatio  BenchStat `json:"encrypted_staged_over_plain"`
}

// SummarizeBench groups rows by (case, N) in their order and gives the
// median and range of each figure over the runs that did not fail.
func SummarizeBench(rows []BenchRow) []BenchSummary {
	var out []BenchSummary
	idx := map[string]int{}
	vals := map[string]*[6][]float64{}
	for _, r := range rows {
		k := r.Case + "/" + strconv.Itoa(r.Devices)
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, BenchSummary{Case: r.Case, Devices: r.Devices})
			vals[k] = &[6][]float64{}
		}
		out[i].Runs++
		if r.Error != "" {
			continue
		}
		if r.Firmcast.ConfirmedV2 == r.Devices {
			out[i].OK++
		}
		v := vals[k]
		v[0] = append(v[0], r.Raw.Seconds)
		v[1] = append(v[1], r.Firmcast.StagedSeconds)
		v[2] = append(v[2], r.Ratio)
		v[3] = append(v[3], r.Firmcast.PublisherRatio)
		if r.Encrypted != nil {
			v[4] = append(v[4], r.Encrypted.StagedSeconds)
			v[5] = append(v[5], r.EncRatio)
		}
	}
	for k, i := range idx {
		v := vals[k]
		out[i].Raw, out[i].Staged, out[i].Ratio, out[i].Egress = stat(v[0]), stat(v[1]), stat(v[2]), stat(v[3])
		out[i].EncStaged, out[i].EncRatio = stat(v[4]), stat(v[5])
	}
	return out
}

func stat(xs []float64) BenchStat {
	if len(xs) == 0 {
		return BenchStat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return BenchStat{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// HumanBytes formats n as B, KiB, MiB or GiB.
func HumanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// cpuSeconds is this process's user+system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// hostCPUSeconds returns the CPU time every core of the host spent busy
// (user, nice, system, irq, softirq: /proc/stat's cpu line, in USER_HZ
// of 100 a second) and the time the hypervisor took from them (steal),
// 0 if unknown.
func hostCPUSeconds() (busy, steal float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, 0
	}
	for i, f := range fs[1:9] {
		v, _ := strconv.ParseFloat(f, 64)
		switch i {
		case 3, 4: // idle, iowait
		case 7:
			steal = v / 100
		default:
			busy += v / 100
		}
	}
	return busy, steal
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

// schedLatency returns a function that gives the 50th and 99th
// percentiles, in milliseconds, of the goroutine scheduling latencies
// (runtime/metrics /sched/latencies:seconds: runnable to running) since
// schedLatency was called: the upper bound of the histogram bucket each
// falls in.
func schedLatency() func() [2]float64 {
	read := func() *metrics.Float64Histogram {
		s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindFloat64Histogram {
			return nil
		}
		return s[0].Value.Float64Histogram()
	}
	before := read()
	var counts []uint64
	if before != nil {
		counts = slices.Clone(before.Counts)
	}
	return func() [2]float64 {
		after := read()
		if after == nil || len(after.Counts) != len(counts) {
			return [2]float64{}
		}
		diff := make([]uint64, len(counts))
		var total uint64
		for i := range diff {
			diff[i] = after.Counts[i] - counts[i]
			total += diff[i]
		}
		var out [2]float64
		for k, q := range []float64{0.5, 0.99} {
			want, cum := uint64(math.Ceil(q*float64(total))), uint64(0)
			for i, c := range diff {
				if cum += c; cum >= want && want > 0 {
					// The bucket's upper bound; the last bucket's is +Inf
					// (which JSON cannot carry): its lower one, then.
					hi := after.Buckets[i+1]
					if math.IsInf(hi, 1) {
						hi = after.Buckets[i]
					}
					out[k] = hi * 1000
					break
				}
			}
		}
		return out
	}
}

// memClassNames are the runtime's memory classes (runtime/metrics) that
// make up most of a Go process's RSS (and the live heap the last
// collection marked), with the goroutine count.
var memClassNames = []struct{ metric, key string }{
	{"/memory/classes/heap/objects:bytes", "heap_objects_mib"},
	{"/gc/heap/live:bytes", "heap_live_mib"},
	{"/memory/classes/heap/unused:bytes", "heap_unused_mib"},
	{"/memory/classes/heap/free:bytes", "heap_free_mib"},
	{"/memory/classes/heap/stacks:bytes", "stacks_mib"},
	{"/memory/classes/other:bytes", "other_mib"},
	{"/sched/goroutines:goroutines", "goroutines"},
}

// memClasses returns the memory classes as log attributes (MiB, and
// the goroutine count), for the "rss peak" line: what the RSS at a peak
// is made of (live objects, the collector's headroom, stacks).
func memClasses() []any {
	ss := make([]metrics.Sample, len(memClassNames))
	for i, m := range memClassNames {
		ss[i].Name = m.metric
	}
	metrics.Read(ss)
	out := make([]any, 0, 2*len(ss))
	for i, s := range ss {
		if s.Value.Kind() != metrics.KindUint64 {
			continue
		}
		v := s.Value.Uint64()
		if memClassNames[i].key != "goroutines" {
			v >>= 20
		}
		out = append(out, memClassNames[i].key, v)
	}
	return out
}

// watchRSS collects the Go heap and returns what it freed to the system
// (so that a side starts from the live heap, not from what the one
// before it left mapped), then samples the RSS every 50ms; the returned
// function stops it and returns the peak growth over the RSS at the
// start and the peak itself. Each new peak 16 MiB above the last logged
// one is logged at debug ("rss peak"), to be read beside the campaign's
// own log lines.
//
// onPeak, when set, is called (on the sampling goroutine) with each new
// logged peak: the bench writes the heap profile at the peak there.
func watchRSS(log *slog.Logger, side string, onPeak func()) func() (growth, peak int64) {
	runtime.GC()
	debug.FreeOSMemory()
	base := rss()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var mu sync.Mutex
	peak := base
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		logged := base
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				r := rss()
				if r <= 0 {
					continue
				}
				mu.Lock()
				peak = max(peak, r)
				mu.Unlock()
				if r > logged+16<<20 {
					logged = r
					log.Debug("rss peak", append([]any{"side", side, "rss_mib", r >> 20, "growth_mib", (r - base) >> 20}, memClasses()...)...)
					if onPeak != nil {
						onPeak()
					}
				}
			}
		}
	}()
	return func() (int64, int64) {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return max(peak-base, 0), peak
	}
}

// fleetStaged reports whether p shows every device past its download:
// staged, installing, on the new image, or ended (failed, rolled back).
func fleetStaged(p Progress) bool {
	if p.Devices == 0 {
		return false
	}
	past := 0
	for k, v := range p.States {
		switch k {
		case schemas.StateIdle.String(), schemas.StateNotified.String(), schemas.StateManifestVerified.String(),
			schemas.StateDownloading.String(), schemas.StateCandidateVerified.String():
		default:
			past += v
		}
	}
	return past >= p.Devices
}
