package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/fleet"
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
	memprof   string
	loss      float64
	coded     bool
	codedK    int
	codedP    int
	maxRate   string
	fsync     bool
	holdBoots bool
	coldPages bool
	parityMem bool
	reporters int
	encrypt   bool
	flash     string
	runs      int
	waveEcho  int
	waveBurst int
	waveReady time.Duration
	timeout   time.Duration
	stall     time.Duration
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
for the embedded case, the broker. Before each side the Go heap is
collected and returned to the system, so each side's growth starts from
the live heap (--json also gives each side's peak RSS itself).

Cases: embedded (an in-process MQTT v5 broker, JetStream embedded),
mosquitto (--mosquitto, JetStream embedded), nats (--nats: devices and
backend on NATS). Topic roots are unique and cleaned up afterwards.

With --runs R each (case, N) runs R times and a summary gives the median
and range (min-max) of the times, the ratio and the egress. A run that
fails is reported and the others still run; the exit code is then 1.`,
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
	fl.Float64Var(&f.loss, "loss", 0, "fraction of chunks each firmcast device drops at its receive path, independently per device (0 to 1; the raw side loses nothing)")
	fl.BoolVar(&f.coded, "coded", true, "erasure-coded repair, as firmcast serve ships it: the image gets a coded chunk table (blocks of 128 chunks, 32 parity chunks each) and repairs broadcast parity chunks; --coded=false measures the uncoded repair")
	fl.IntVar(&f.codedK, "coded-block", 0, "with --coded: chunks per source block K (0: the publisher's default, 128)")
	fl.IntVar(&f.codedP, "coded-parity", 0, "with --coded: parity chunks committed per block P, K+P <= 256 (0: the publisher's default)")
	fl.DurationVar(&f.waveReady, "wave-ready", 0, "the longest a wave's first chunk waits, after its first chunk table copy, for the devices to report they took the table (publisher WaveReady); 0: no wait")
	fl.IntVar(&f.waveBurst, "wave-burst", 16, "on NATS, the publisher sends a wave's chunks N at a time (publisher WaveBurst; the MQTT cases send one at a time)")
	fl.IntVar(&f.waveEcho, "wave-echo", 32, "the publisher's echo window: a wave sends chunk i once chunk i-N came back from the broker (publisher WaveEcho)")
	fl.StringVar(&f.maxRate, "max-rate", "0", "cap on the publisher's chunk egress per second, e.g. 2MiB (waves, repairs and answers together); 0: no cap")
	fl.BoolVar(&f.parityMem, "parity-in-memory", false, "simulated devices hold the parity chunks of a coded download in memory until their blocks are rebuilt, instead of in a scratch file beside their download progress (the agents' default)")
	fl.BoolVar(&f.coldPages, "cold-pages", false, "do not write the raw side's files and the devices' free slots full (with the bytes they read as) before each side's clock starts: on a virtual machine that gives freed memory back to its host, each side's first write to a page then costs a host fault")
	fl.BoolVar(&f.holdBoots, "hold-boots", false, "simulated devices install (boot the new image) only once every device has staged it: the staged time then counts the delivery alone, not early devices' installs sharing this host's cores with the downloads (real devices each have their own CPU)")
	fl.BoolVar(&f.fsync, "device-fsync", false, "simulated devices fsync their flash and state as deployed agents do (off: they share one disk, where hundreds of devices' fsyncs serialise, a cost no real fleet pays)")
	fl.IntVar(&f.reporters, "pace-reporters", 10, "devices (spread over the rollout order) that report their download progress every 250ms while they download, the designated receivers whose reports pace the wave (publisher WavePace 1s: NORM's current-limiting receivers); 0: none, waves are paced by the broker's echo alone")
	fl.BoolVar(&f.encrypt, "encrypt", false, "also run each campaign with the image encrypted (a content key wrapped per device, devices decrypting as they install), alternating which goes first, and print its staged time against the plain campaign's")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Minute, "limit of each run's campaign")
	fl.DurationVar(&f.stall, "stall", 3*time.Minute, "end a run with an error naming the devices that did not finish when nothing moves for this long")
	fl.IntVar(&f.runs, "runs", 1, "runs of each case and fleet size; with more than one, the median and range are printed too")
	fl.StringVar(&f.memprof, "memprofile", "", "write a heap profile (in use) of each firmcast campaign, taken when the devices have received half the image bytes, to this file (.<case>-<N> appended), and a heap and a goroutine profile at the process's RSS peak during the campaign (.peak and .goroutines appended to that)")
	fl.StringVar(&f.profile, "cpuprofile", "", "write a CPU profile of the firmcast campaigns, from their start until the fleet has staged (not the fleet setup, not the installs after), to this file (.<case>-<N> appended), and one of each raw run beside it (.raw appended to that), for go tool pprof -diff_base")
	c.AddCommand(newBenchIdleCmd())
	return c
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
	var maxRate int64
	if f.maxRate != "0" {
		r, err := parseSize("max-rate", f.maxRate)
		if err != nil {
			return fail(err)
		}
		maxRate = int64(r)
	}
	if f.flash != "mem" && f.flash != "file" {
		return fail(fmt.Errorf("--flash %q: want file or mem", f.flash))
	}
	if f.runs < 1 {
		return fail(fmt.Errorf("--runs %d: want at least 1", f.runs))
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
	rows, err := fleet.RunBench(cmd.Context(), fleet.BenchConfig{
		Cases: f.cases, Devices: f.devices, ImageSize: size, ChunkSize: chunk, MosquittoURL: f.mosquitto, NATSURL: f.nats,
		Runs: f.runs, Timeout: f.timeout, Stall: f.stall, Dir: dir, Seed: f.seed, MemFlash: f.flash == "mem", CPUProfile: f.profile, MemProfile: f.memprof, Loss: f.loss, Coded: f.coded, CodedBlock: f.codedK, CodedParity: f.codedP, MaxRate: maxRate, WaveEcho: f.waveEcho, WaveBurst: f.waveBurst, WaveReady: f.waveReady, DeviceFsync: f.fsync, HoldBoots: f.holdBoots, ColdPages: f.coldPages, ParityInMemory: f.parityMem, PaceReporters: f.reporters, Encrypt: f.encrypt,
		Logger:   benchLogger(cmd, logf),
		Progress: cmd.ErrOrStderr(),
	})
	if f.json {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		if f.runs > 1 {
			_ = enc.Encode(struct {
				Runs    []fleet.BenchRow     `json:"runs"`
				Summary []fleet.BenchSummary `json:"summary"`
			}{rows, fleet.SummarizeBench(rows)})
		} else {
			_ = enc.Encode(rows)
		}
	} else {
		printBench(cmd.OutOrStdout(), rows)
		if f.runs > 1 {
			printBenchSummary(cmd.OutOrStdout(), fleet.SummarizeBench(rows))
		}
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

func printBench(w io.Writer, rows []fleet.BenchRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tN\trun\timage\traw fan-out\tcomplete\tfirmcast staged\tratio\tend to end\tcampaign end\tconfirmed\tegress/image\tCPU ms/MB raw\tCPU ms/MB firmcast\tpeak RSS/dev raw\tpeak RSS/dev firmcast\t")
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\tfailed: %s\t\n", r.Case, r.Devices, r.Run, humanBytes(int64(r.ImageSize)), r.Error)
			continue
		}
		mb := float64(r.Devices) * float64(r.ImageSize) / (1 << 20)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.2fs\t%d/%d\t%.2fs\t%.2fx\t%.2fs\t%.2fs\t%d/%d\t%.2f\t%.1f\t%.1f\t%s\t%s\t\n",
			r.Case, r.Devices, r.Run, humanBytes(int64(r.ImageSize)), r.Raw.Seconds, r.Raw.Complete, r.Devices,
			r.Firmcast.StagedSeconds, r.Ratio, r.Firmcast.DoneSeconds, r.Firmcast.CampaignSeconds,
			r.Firmcast.ConfirmedV2, r.Devices, r.Firmcast.PublisherRatio,
			1000*r.RawCPU/mb, 1000*r.FcCPU/mb,
			humanBytes(r.RawPeak/int64(r.Devices)), humanBytes(r.FcPeak/int64(r.Devices)))
	}
	_ = tw.Flush()
	printBenchEncrypted(w, rows)
}

// printBenchEncrypted prints the encrypted campaigns of --encrypt next to
// the plain ones of the same runs.
func printBenchEncrypted(w io.Writer, rows []fleet.BenchRow) {
	has := false
	for _, r := range rows {
		has = has || r.Encrypted != nil
	}
	if !has {
		return
	}
	fmt.Fprintln(w, "\nencrypted campaigns (--encrypt), against the plain campaign of the same run:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tN\trun\tfirst\tplain staged\tencrypted staged\tencrypted/plain\tconfirmed\tegress/image plain\tegress/image encrypted\t")
	for _, r := range rows {
		if r.Encrypted == nil {
			continue
		}
		first := "plain"
		if r.Run%2 == 0 {
			first = "encrypted"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.2fs\t%.2fs\t%.2fx\t%d/%d\t%.2f\t%.2f\t\n", r.Case, r.Devices, r.Run, first,
			r.Firmcast.StagedSeconds, r.Encrypted.StagedSeconds, r.EncRatio, r.Encrypted.ConfirmedV2, r.Devices,
			r.Firmcast.PublisherRatio, r.Encrypted.PublisherRatio)
	}
	_ = tw.Flush()
}

func printBenchSummary(w io.Writer, sums []fleet.BenchSummary) {
	fmt.Fprintln(w, "\nmedian [min-max] over the runs that finished:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tN\truns ok\traw fan-out\tfirmcast staged\tratio\tegress/image\t")
	for _, s := range sums {
		fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%.2fs [%.2f-%.2f]\t%.2fs [%.2f-%.2f]\t%.2fx [%.2f-%.2f]\t%.2f [%.2f-%.2f]\t\n",
			s.Case, s.Devices, s.OK, s.Runs, s.Raw.Median, s.Raw.Min, s.Raw.Max, s.Staged.Median, s.Staged.Min, s.Staged.Max,
			s.Ratio.Median, s.Ratio.Min, s.Ratio.Max, s.Egress.Median, s.Egress.Min, s.Egress.Max)
	}
	_ = tw.Flush()
	if len(sums) == 0 || sums[0].EncRatio == (fleet.BenchStat{}) {
		return
	}
	fmt.Fprintln(w, "\nencrypted campaigns, median [min-max]:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tN\tplain staged\tencrypted staged\tencrypted/plain\t")
	for _, s := range sums {
		fmt.Fprintf(tw, "%s\t%d\t%.2fs [%.2f-%.2f]\t%.2fs [%.2f-%.2f]\t%.2fx [%.2f-%.2f]\t\n", s.Case, s.Devices,
			s.Staged.Median, s.Staged.Min, s.Staged.Max, s.EncStaged.Median, s.EncStaged.Min, s.EncStaged.Max,
			s.EncRatio.Median, s.EncRatio.Min, s.EncRatio.Max)
	}
	_ = tw.Flush()
}

// benchLogger is the components' logger of a bench run, into w (the
// run's bench.log): at --log-level when it is given, else at warn (a
// campaign of hundreds of devices logs much at info).
func benchLogger(cmd *cobra.Command, w io.Writer) *slog.Logger {
	lvl := slog.LevelWarn
	if f := cmd.Flags().Lookup("log-level"); f != nil && f.Changed {
		_ = lvl.UnmarshalText([]byte(f.Value.String()))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}
