package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

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
}

func newSimCmd() *cobra.Command {
	f := &simFlags{}
	c := &cobra.Command{
		Use:   "sim --server URL --broker URL --trust KEY.pub.pem --vendor-id UUID --class-id UUID [--image FILE]",
		Short: "Run a simulated fleet against a running firmcast server and broker",
		Long: `Run N simulated devices (each a real update agent with its own simulated
flash, bootloader and state directory, all in this process) against a
running firmcast server and its MQTT broker: for load tests and for demos
with separate processes.

Each device is registered through the server's API (class --class, a
random secret) and connects to --broker with its own credentials. Devices
start with a factory image installed (--factory FILE, or generated with the
size of --image). The manifests the server signs must carry --vendor-id and
--class-id and be signed by a --trust key.

With --image, sim uploads it, creates a campaign to the fleet's class,
follows it to its end and prints the summary (exit codes as for demo: 0
every targeted device confirmed, 3 aborted, 1 other). Without --image the
devices run until interrupted, for campaigns created by hand.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(cmd, f) },
	}
	fl := c.Flags()
	f.api.add(c)
	fl.IntVar(&f.devices, "devices", 100, "number of simulated devices")
	fl.StringVar(&f.mqtt, "broker", "mqtt://127.0.0.1:1883", "MQTT v5 broker URL the devices connect to")
	fl.StringVar(&f.root, "root", schemas.DefaultRoot, "topic root (as the server's)")
	fl.StringVar(&f.prefix, "prefix", "sim", "device id prefix: PREFIX-0001, ... (device ids are the MQTT client ids: unique per broker)")
	fl.StringVar(&f.class, "class", "sim", "device class the devices register with")
	fl.StringSliceVar(&f.trust, "trust", nil, "public key file(s) manifests must be signed with (required)")
	fl.StringVar(&f.vendorID, "vendor-id", "", "vendor UUID the server's manifests carry (required)")
	fl.StringVar(&f.classID, "class-id", "", "class UUID the server's manifests carry (required)")
	fl.StringVar(&f.image, "image", "", "image to roll out in a campaign to the fleet (default: none, run until interrupted)")
	fl.StringVar(&f.factory, "factory", "", "factory image installed on every device (default: generated, the size of --image or --image-size)")
	fl.Uint64Var(&f.factoryVersion, "factory-version", 1, "version (sequence number) of the factory image")
	fl.StringVar(&f.imageSize, "image-size", "1MiB", "size of the generated factory image when there is no --image")
	fl.Float64Var(&f.failRate, "fail-rate", 0, "fraction of devices whose health check fails (0..1)")
	fl.Uint64Var(&f.seed, "seed", 1, "seed for the factory image and which devices fail")
	fl.StringVar(&f.dir, "dir", "", "work directory (default: a temporary directory, removed unless --keep)")
	fl.BoolVar(&f.keep, "keep", false, "keep the work directory")
	fl.IntSliceVar(&f.phases, "phases", []int{10, 50, 100}, "cumulative rollout percentages (with --image)")
	fl.StringVar(&f.failAt, "fail-threshold", "10%", "failures that abort the campaign (with --image)")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Minute, "campaign timeout (with --image)")
	fl.DurationVar(&f.interval, "interval", 5*time.Second, "status line interval without --image")
	return c
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
	topics, err := schemas.NewTopics(f.root)
	if err != nil {
		return fail(fmt.Errorf("--root: %w", err))
	}
	if len(f.trust) == 0 || f.vendorID == "" || f.classID == "" {
		return fail(errors.New("--trust, --vendor-id and --class-id are required (what the server signs manifests with)"))
	}
	anchors, err := readTrustFiles("trust", f.trust)
	if err != nil {
		return fail(err)
	}
	vendor, err := parseUUID(f.vendorID)
	if err != nil {
		return fail(fmt.Errorf("--vendor-id: %w", err))
	}
	class, err := parseUUID(f.classID)
	if err != nil {
		return fail(fmt.Errorf("--class-id: %w", err))
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
	factory := fleet.Image(f.seed, "factory", size)
	if f.factory != "" {
		if factory, err = os.ReadFile(f.factory); err != nil {
			return fail(fmt.Errorf("--factory: %w", err))
		}
	}
	cfg, err := f.demoFlags.config()
	if err != nil {
		return fail(err)
	}
	dir, cleanup, err := workDir(f.dir, f.keep, "firmcast-sim-")
	if err != nil {
		return fail(err)
	}
	defer cleanup()
	cfg.Dir = dir
	logf, err := os.OpenFile(filepath.Join(dir, "firmcast.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Logger = log
	ctx := cmd.Context()
	errw := cmd.ErrOrStderr()
	t0 := time.Now()
	fmt.Fprintf(errw, "firmcast sim: %d devices (%s-0001..) of class %s against %s, broker %s\n", f.devices, f.prefix, f.class, f.api.server, f.mqtt)
	fl, err := fleet.NewFleet(ctx, fleet.FleetConfig{
		Devices: f.devices, Prefix: f.prefix, Class: f.class, Dir: filepath.Join(dir, "devices"), MQTTURL: f.mqtt, Topics: topics,
		VendorID: vendor, ClassID: class, Trust: anchors, Factory: factory, FactoryVersion: f.factoryVersion,
		MaxImage: max(size, len(factory)), FailRate: f.failRate, Seed: f.seed, Logger: log,
		Register: func(ctx context.Context, id, secret string) error {
			_, err := cl.AddDevice(ctx, publisher.NewDevice{ID: id, Class: f.class, Secret: secret})
			if errors.Is(err, publisher.ErrExists) {
				return fmt.Errorf("%w (choose another --prefix, or remove the devices)", err)
			}
			return err
		},
	})
	if err != nil {
		return fail(err)
	}
	defer fl.Close()
	defer fl.Stop()
	if err := fl.Run(ctx); err != nil {
		return fail(err)
	}
	sum := fleet.Summary{Devices: f.devices, ImageSize: size, Dir: dir, Seed: f.seed, FailRate: f.failRate, Broker: f.mqtt, NATS: f.api.server}
	sum.SetupSeconds = time.Since(t0).Seconds()
	if len(image) == 0 {
		fmt.Fprintf(errw, "fleet of %d devices connected in %.1fs; running until interrupted\n", f.devices, sum.SetupSeconds)
		tk := time.NewTicker(f.interval)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				fl.Stop()
				p := fl.Snapshot()
				fmt.Fprintf(errw, "stopped; device states: %v\n", p.States)
				return nil
			case <-tk.C:
				p := fl.Snapshot()
				fmt.Fprintf(errw, "  device states: %v, received %s\n", p.States, humanBytes(p.RxBytes))
			}
		}
	}
	pv := newProgressView(ctx, errw, f.devices, size)
	cfg.OnReady = func(d time.Duration) {
		fmt.Fprintf(errw, "fleet ready in %.1fs; campaign starting\n", d.Seconds())
		pv.start()
	}
	cfg.OnProgress = pv.update
	cfg.Brokers = []string{f.mqtt}
	err = fleet.RunCampaign(ctx, fl, remoteBackend{cl}, image, f.class, &cfg, &sum)
	pv.stop()
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
