package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

type simFlags struct {
	demoFlags
	api            apiFlags
	root           string
	prefix, class  string
	trust          []string
	vendorID       string
	classID        string
	image, factory string
	factoryVersion uint64
	interval       time.Duration
	// procs is the number of child processes the fleet is shared out
	// among (1: this process).
	procs int
	// child builds the command of a child process from its firmcast
	// arguments (default: this executable).
	child func(args ...string) (*exec.Cmd, error)
}

func newSimCmd() *cobra.Command { return newSimCmdWith(selfCommand) }

// selfCommand runs this executable with args.
func selfCommand(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, args...), nil
}

// newSimCmdWith is `firmcast sim`, whose child processes (--procs) child
// builds.
func newSimCmdWith(child func(args ...string) (*exec.Cmd, error)) *cobra.Command {
	f := &simFlags{child: child}
	c := &cobra.Command{
		Use:   "sim --server URL --broker URL --trust KEY.pub.pem --vendor-id UUID --class-id UUID [--image FILE] [--procs P]",
		Short: "Run a simulated fleet against a running firmcast server and broker",
		Long: `Run N simulated devices (each a real update agent with its own simulated
flash, bootloader and state directory) against a running firmcast server
and its MQTT broker: for load tests and for demos with separate processes.

Each device is registered through the server's API (class --class, a
random secret) and connects to --broker with its own credentials. Devices
start with a factory image installed (--factory FILE, or generated with the
size of --image). The manifests the server signs must carry --vendor-id and
--class-id and be signed by a --trust key.

The devices run in this process, or with --procs P in P child processes
(this program again), each with its own share of the fleet (devices
PREFIX-0001.. in consecutive ranges), reporting to this one: so that a run
can be sized to the machine and the simulator is not the bottleneck. When
one child fails, all are stopped and sim fails; when sim stops, so do they.
The summary then also shows the children's CPU time and peak memory.

With --image, sim uploads it, creates a campaign to the fleet's class,
follows it to its end and prints the summary (exit codes as for demo: 0
every targeted device confirmed, 3 aborted, 1 other). Without --image the
devices run until interrupted, for campaigns created by hand.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(cmd, f) },
	}
	fl := c.Flags()
	f.api.add(c)
	f.addFleetFlags(fl)
	fl.StringVar(&f.image, "image", "", "image to roll out in a campaign to the fleet (default: none, run until interrupted)")
	fl.StringVar(&f.dir, "dir", "", "work directory (default: a temporary directory, removed unless --keep)")
	fl.BoolVar(&f.keep, "keep", false, "keep the work directory")
	fl.IntSliceVar(&f.phases, "phases", []int{10, 50, 100}, "cumulative rollout percentages (with --image)")
	fl.StringVar(&f.failAt, "fail-threshold", "10%", "failures that abort the campaign (with --image)")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Minute, "campaign timeout (with --image)")
	fl.DurationVar(&f.interval, "interval", 5*time.Second, "status line interval without --image")
	fl.IntVar(&f.procs, "procs", 1, "child processes the devices are shared out among (1: all in this process)")
	c.AddCommand(newSimShareCmd(&f.api))
	return c
}

// addFleetFlags adds the flags that describe the simulated devices, the
// same in sim and in its children (sim share).
func (f *simFlags) addFleetFlags(fl *pflag.FlagSet) {
	fl.IntVar(&f.devices, "devices", 100, "number of simulated devices")
	fl.StringVar(&f.mqtt, "broker", "mqtt://127.0.0.1:1883", "MQTT v5 broker URL the devices connect to")
	fl.StringVar(&f.root, "root", schemas.DefaultRoot, "topic root (as the server's)")
	fl.StringVar(&f.prefix, "prefix", "sim", "device id prefix: PREFIX-0001, ... (device ids are the MQTT client ids: unique per broker)")
	fl.StringVar(&f.class, "class", "sim", "device class the devices register with")
	fl.StringSliceVar(&f.trust, "trust", nil, "public key file(s) manifests must be signed with (required)")
	fl.StringVar(&f.vendorID, "vendor-id", "", "vendor UUID the server's manifests carry (required)")
	fl.StringVar(&f.classID, "class-id", "", "class UUID the server's manifests carry (required)")
	fl.StringVar(&f.factory, "factory", "", "factory image installed on every device (default: generated, the size of --image or --image-size)")
	fl.Uint64Var(&f.factoryVersion, "factory-version", 1, "version (sequence number) of the factory image")
	fl.StringVar(&f.imageSize, "image-size", "1MiB", "size of the generated factory image when there is no --image")
	fl.Float64Var(&f.failRate, "fail-rate", 0, "fraction of devices whose health check fails (0..1)")
	fl.Uint64Var(&f.seed, "seed", 1, "seed for the factory image and which devices fail")
}

// fleetConfig is the configuration of the simulated fleet the flags
// describe, for images of up to size bytes, registering devices through
// cl; Dir and Logger are left to the caller.
func (f *simFlags) fleetConfig(cl *publisher.Client, size int) (fleet.FleetConfig, error) {
	topics, err := schemas.NewTopics(f.root)
	if err != nil {
		return fleet.FleetConfig{}, fmt.Errorf("--root: %w", err)
	}
	if len(f.trust) == 0 || f.vendorID == "" || f.classID == "" {
		return fleet.FleetConfig{}, errors.New("--trust, --vendor-id and --class-id are required (what the server signs manifests with)")
	}
	anchors, err := readTrustFiles("trust", f.trust)
	if err != nil {
		return fleet.FleetConfig{}, err
	}
	vendor, err := parseUUID(f.vendorID)
	if err != nil {
		return fleet.FleetConfig{}, fmt.Errorf("--vendor-id: %w", err)
	}
	class, err := parseUUID(f.classID)
	if err != nil {
		return fleet.FleetConfig{}, fmt.Errorf("--class-id: %w", err)
	}
	factory := fleet.Image(f.seed, "factory", size)
	if f.factory != "" {
		if factory, err = os.ReadFile(f.factory); err != nil {
			return fleet.FleetConfig{}, fmt.Errorf("--factory: %w", err)
		}
	}
	return fleet.FleetConfig{
		Devices: f.devices, Prefix: f.prefix, Class: f.class, MQTTURL: f.mqtt, Topics: topics,
		VendorID: vendor, ClassID: class, Trust: anchors, Factory: factory, FactoryVersion: f.factoryVersion,
		MaxImage: max(size, len(factory)), FailRate: f.failRate, Seed: f.seed,
		Register: func(ctx context.Context, id, secret string) error {
			_, err := cl.AddDevice(ctx, publisher.NewDevice{ID: id, Class: f.class, Secret: secret})
			if errors.Is(err, publisher.ErrExists) {
				return fmt.Errorf("%w (choose another --prefix, or remove the devices)", err)
			}
			return err
		},
	}, nil
}

// remoteBackend is a server's HTTP API as a fleet.Backend.
type remoteBackend struct{ cl *publisher.Client }

func (b remoteBackend) Upload(ctx context.Context, name string, image []byte) (string, error) {
	img, err := b.cl.UploadImage(ctx, name, bytes.NewReader(image))
	return img.Digest, err
}

func (b remoteBackend) Start(ctx context.Context, req publisher.CampaignRequest) (string, error) {
	st, err := b.cl.CreateCampaign(ctx, req)
	return st.ID, err
}

func (b remoteBackend) Status(ctx context.Context, id string) (publisher.Status, error) {
	return b.cl.Campaign(ctx, id)
}

func (b remoteBackend) Egress() int64 { return -1 }

func runSim(cmd *cobra.Command, f *simFlags) error {
	fail := func(err error) error { return &exitError{code: 1, err: fmt.Errorf("sim: %w", err)} }
	f.demoFlags.json = f.api.json
	cl, err := f.api.client()
	if err != nil {
		return fail(err)
	}
	var image []byte
	if f.image != "" {
		if image, err = os.ReadFile(f.image); err != nil {
			return fail(fmt.Errorf("--image: %w", err))
		}
	}
	size, err := parseSize("image-size", f.imageSize)
	if err != nil {
		return fail(err)
	}
	if len(image) > 0 {
		size = len(image)
	}
	fc, err := f.fleetConfig(cl, size)
	if err != nil {
		return fail(err)
	}
	cfg, err := f.demoFlags.config()
	if err != nil {
		return fail(err)
	}
	if f.procs < 1 || f.procs > f.devices {
		return fail(fmt.Errorf("--procs %d: want 1..%d (--devices)", f.procs, f.devices))
	}
	dir, cleanup, err := workDir(f.dir, f.keep, "firmcast-sim-")
	if err != nil {
		return fail(err)
	}
	defer cleanup()
	cfg.Dir = dir
	logPath := filepath.Join(dir, "firmcast.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Logger = log
	ctx := cmd.Context()
	errw := cmd.ErrOrStderr()
	t0 := time.Now()
	where := ""
	if f.procs > 1 {
		where = fmt.Sprintf(" in %d processes", f.procs)
	}
	fmt.Fprintf(errw, "firmcast sim: %d devices (%s-0001..) of class %s%s against %s, broker %s\n", f.devices, f.prefix, f.class, where, f.api.server, f.mqtt)
	fc.Dir, fc.Logger = filepath.Join(dir, "devices"), log
	var sim fleet.Sim
	var procs *fleet.Procs
	if f.procs > 1 {
		procs, err = f.startProcs(ctx, fc, dir, logPath)
		if err != nil {
			return fail(err)
		}
		defer procs.Close()
		sim = procs
	} else {
		fl, err := fleet.NewFleet(ctx, fc)
		if err != nil {
			return fail(err)
		}
		defer fl.Close()
		defer fl.Stop()
		if err := fl.Run(ctx); err != nil {
			return fail(err)
		}
		sim = fl
	}
	defer sim.Stop()
	sum := fleet.Summary{Devices: f.devices, ImageSize: size, Dir: dir, Seed: f.seed, FailRate: f.failRate, Broker: f.mqtt, NATS: f.api.server}
	sum.SetupSeconds = time.Since(t0).Seconds()
	if len(image) == 0 {
		return simUntilInterrupted(ctx, errw, sim, f, sum.SetupSeconds)
	}
	pv := newProgressView(ctx, errw, f.devices, size)
	cfg.OnReady = func(d time.Duration) {
		fmt.Fprintf(errw, "fleet ready in %.1fs; campaign starting\n", d.Seconds())
		pv.start()
	}
	cfg.OnProgress = pv.update
	cfg.Brokers = []string{f.mqtt}
	err = fleet.RunCampaign(ctx, sim, remoteBackend{cl}, image, f.class, &cfg, &sum)
	pv.stop()
	if procs != nil {
		u := procs.Usage()
		sum.Simulator = &u
	}
	if err != nil {
		if sum.Campaign != "" {
			_ = printSummary(cmd.OutOrStdout(), f.api.json, sum)
		}
		return fail(err)
	}
	if !f.keep && f.dir == "" {
		sum.Next = sum.Next[2:]
	}
	if err := printSummary(cmd.OutOrStdout(), f.api.json, sum); err != nil {
		return err
	}
	return summaryExit(sum)
}

// simUntilInterrupted prints the devices' states every --interval until
// ctx ends (nil) or a child process fails.
func simUntilInterrupted(ctx context.Context, errw io.Writer, sim fleet.Sim, f *simFlags, setup float64) error {
	fmt.Fprintf(errw, "fleet of %d devices connected in %.1fs; running until interrupted\n", f.devices, setup)
	tk := time.NewTicker(f.interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			sim.Stop()
			fmt.Fprintf(errw, "stopped; device states: %v\n", sim.Tally().States)
			return nil
		case <-tk.C:
			t := sim.Tally()
			if t.Failed != "" {
				return &exitError{code: 1, err: fmt.Errorf("sim: %w: %s", fleet.ErrSimFailed, t.Failed)}
			}
			fmt.Fprintf(errw, "  device states: %v, received %s\n", t.States, humanBytes(t.RxBytes))
		}
	}
}

// startProcs shares the fleet fc describes out among --procs children
// (sim share), each with a consecutive range of devices.
func (f *simFlags) startProcs(ctx context.Context, fc fleet.FleetConfig, dir, logPath string) (*fleet.Procs, error) {
	factory := f.factory
	if factory == "" {
		// The children install the same generated factory image.
		factory = filepath.Join(dir, "factory.bin")
		if err := os.WriteFile(factory, fc.Factory, 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{"sim", "share", "--server", f.api.server, "--broker", f.mqtt, "--root", f.root,
		"--prefix", f.prefix, "--class", f.class, "--vendor-id", f.vendorID, "--class-id", f.classID,
		"--factory", factory, "--factory-version", strconv.FormatUint(f.factoryVersion, 10),
		"--image-size", strconv.Itoa(fc.MaxImage), "--fail-rate", strconv.FormatFloat(f.failRate, 'g', -1, 64),
		"--seed", strconv.FormatUint(f.seed, 10), "--devices", strconv.Itoa(f.devices),
		"--dir", fc.Dir, "--log", logPath}
	for _, t := range f.trust {
		args = append(args, "--trust", t)
	}
	for flag, v := range map[string]string{"ca": f.api.ca, "client-cert": f.api.cert, "client-key": f.api.certKey} {
		if v != "" {
			args = append(args, "--"+flag, v)
		}
	}
	return fleet.StartProcs(ctx, fleet.ProcsConfig{
		Procs: f.procs, Dir: filepath.Join(dir, "shares"), UpTimeout: 10 * time.Minute,
		Command: func(i int) (*exec.Cmd, error) {
			first, next := i*f.devices/f.procs, (i+1)*f.devices/f.procs
			cmd, err := f.child(append(args, "--first", strconv.Itoa(first), "--count", strconv.Itoa(next-first))...)
			if err != nil {
				return nil, err
			}
			// The API key in the environment, not on a command line
			// that every user of the machine can read.
			if cmd.Env == nil {
				cmd.Env = os.Environ()
			}
			cmd.Env = append(cmd.Env, "FIRMCAST_API_KEY="+f.api.key)
			return cmd, nil
		},
	})
}

// newSimShareCmd is the hidden `sim share`: one child process of `sim
// --procs`, running devices --first+1 .. --first+--count of a fleet of
// --devices, reporting to its parent on stdout (fleet.ServeShare).
// Its API flags are sim's (persistent), parsed into api.
func newSimShareCmd(api *apiFlags) *cobra.Command {
	f := &simFlags{}
	var first, count int
	var logPath string
	var every time.Duration
	c := &cobra.Command{
		Use:    "share --first I --count N [fleet flags as sim's]",
		Short:  "One share of a simulated fleet (a child process of sim --procs)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fail := func(err error) error { return &exitError{code: 1, err: fmt.Errorf("sim share: %w", err)} }
			cl, err := api.client()
			if err != nil {
				return fail(err)
			}
			size, err := parseSize("image-size", f.imageSize)
			if err != nil {
				return fail(err)
			}
			fc, err := f.fleetConfig(cl, size)
			if err != nil {
				return fail(err)
			}
			fc.First, fc.Devices, fc.FleetSize, fc.Dir = first, count, f.devices, f.dir
			logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fail(err)
			}
			defer logf.Close()
			fc.Logger = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo})).With("share", first)
			err = fleet.ServeShare(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), every, func(ctx context.Context) (*fleet.Fleet, error) {
				return fleet.StartFleet(ctx, fc)
			})
			if err != nil {
				return fail(err)
			}
			return nil
		},
	}
	fl := c.Flags()
	f.addFleetFlags(fl)
	fl.IntVar(&first, "first", 0, "index of the share's first device in the fleet")
	fl.IntVar(&count, "count", 0, "devices in the share")
	fl.StringVar(&f.dir, "dir", "", "directory of the devices (required)")
	fl.StringVar(&logPath, "log", "", "log file, appended to (required)")
	fl.DurationVar(&every, "every", 200*time.Millisecond, "interval of the reports to the parent")
	return c
}
