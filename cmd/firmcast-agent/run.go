package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

type runOptions struct {
	deviceID, secret, brokerURL, natsURL, bucket string
	flash, state, root, class                    string
	vendorID, classID                            string
	trust, noticeTrust, costs, localSources      []string
	fileDirs, urlPrefixes, stages                []string
	maxMetered                                   uint64
	freeOnly                                     bool
	window                                       string
	chunkIdle                                    time.Duration
	progressInterval                             time.Duration
	memLimit                                     int64
	selfTest                                     string
	imageURL                                     string
	kekFile, kekID                               string
	encryptedSlots                               bool
}

func newRunCmd() *cobra.Command {
	o := &runOptions{}
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the update agent until interrupted",
		Long: `run connects to the broker as the device, reports its active version and
state, resumes an update in progress, and handles update notices until it
is interrupted (SIGINT, SIGTERM).

Notices are signed by the campaign authority (the server's notice key):
the agent acts on a notice only when a key of --notice-trust (default: the
--trust keys) signed it for this device or its class.

Sources: the broker (chunk broadcast and requests) always; HTTP(S) URIs of
the signed manifest (only under a --url-prefix when one is given); file://
URIs of the signed manifest inside a --file-dir; the NATS object store when
--nats is given; local files or directories with --source. Notices name no
source the agent follows. A source kind's price per byte comes from the
notice or --source-cost KIND=PRICE (kinds: broker, http, objstore, file).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := c.Flags()
	f.StringVar(&o.deviceID, "device-id", "", "device id (required)")
	f.StringVar(&o.secret, "secret", "", "device secret for the broker")
	f.StringVar(&o.brokerURL, "broker", "", "broker URL: mqtt://, mqtts://, nats:// or tls:// (required)")
	f.StringVar(&o.natsURL, "nats", "", "NATS URL for the image object store (optional)")
	f.StringVar(&o.bucket, "bucket", "firmcast_images", "object store bucket holding images")
	f.StringVar(&o.kekFile, "kek-file", "", "file holding a key-encryption key for encrypted images in hex (16 or 32 bytes), besides the device file's \"kek\" (both are tried: a key rotation)")
	f.StringVar(&o.kekID, "kek-id", "", "the --kek-file key's id (\"<device>#<generation>\"); empty matches any")
	f.BoolVar(&o.encryptedSlots, "encrypted-slots", false, "keep encrypted images' ciphertext in the candidate slot for the bootloader to decrypt as it installs (default: the device file's \"encrypted_slots\"; needs the device file's \"kek\")")
	f.StringVar(&o.imageURL, "image-url", "", "the firmcast server's image URL prefix, e.g. https://fw.example.com/images/: HTTP sources under it send --device-id and --secret as basic auth (the server's default --image-access key policy asks for them)")
	f.StringVar(&o.flash, "flash", "", "flash file made by 'firmcast boot init' (required)")
	f.StringArrayVar(&o.stages, "stage", nil, "COMPONENT=FLASH: an upgradable boot stage before the application (a bootloader), its own flash file, updated by manifests for COMPONENT; repeat in boot order")
	f.StringVar(&o.state, "state", "", "state directory (required)")
	f.StringVar(&o.root, "root", schemas.DefaultRoot, "topic root")
	f.StringVar(&o.class, "class", "", "device class for class-wide announcements")
	f.StringVar(&o.vendorID, "vendor-id", "", "SUIT vendor id (UUID) the manifest must name (required)")
	f.StringVar(&o.classID, "class-id", "", "SUIT class id (UUID) the manifest must name (required)")
	f.StringArrayVar(&o.trust, "trust", nil, "PEM file of public keys trusted to sign manifests (repeatable, required)")
	f.StringArrayVar(&o.noticeTrust, "notice-trust", nil, "PEM file of public keys trusted to sign notices (repeatable; default: the --trust keys)")
	f.StringArrayVar(&o.fileDirs, "file-dir", nil, "absolute directory a signed manifest's file:// URIs may point into (repeatable; none: file URIs are not followed)")
	f.StringArrayVar(&o.urlPrefixes, "url-prefix", nil, "only fetch from signed manifests' http(s) URIs under this prefix (repeatable; none: any)")
	f.StringArrayVar(&o.costs, "source-cost", nil, "price per byte of a source kind, KIND=PRICE (repeatable)")
	f.StringArrayVar(&o.localSources, "source", nil, "local image file or directory (repeatable)")
	f.Uint64Var(&o.maxMetered, "max-metered-bytes", 0, "defer images over this size until a free source can serve them (0 = no limit)")
	f.BoolVar(&o.freeOnly, "free-source-only", false, "download only from sources with price 0")
	f.StringVar(&o.window, "window", "", "install only inside this daily window, HH:MM-HH:MM (local time)")
	f.DurationVar(&o.chunkIdle, "chunk-idle", 2*time.Second, "ask the broker again for missing chunks after this idle time")
	f.DurationVar(&o.progressInterval, "progress-interval", 0, "report download progress at least this often while chunks arrive (0: the agent's default, 1m); a second or less makes this agent one of the designated receivers whose reports pace a broadcast wave (firmcast serve --wave-pace)")
	f.StringVar(&o.selfTest, "self-test", "", "shell command run as the new image's self-test before it is confirmed (non-zero exit: not confirmed, the bootloader reverts)")
	f.Int64Var(&o.memLimit, "mem-limit", 12<<20, "soft memory limit in bytes for the Go runtime (ignored when GOMEMLIMIT is set; 0 = none)")
	for _, n := range []string{"device-id", "broker", "flash", "state", "trust", "vendor-id", "class-id"} {
		_ = c.MarkFlagRequired(n)
	}
	return c
}

func (o *runOptions) run(ctx context.Context) error {
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && o.memLimit > 0 {
		// A device agent keeps a small, steady footprint: collect early
		// rather than let the heap grow with the download's churn.
		debug.SetMemoryLimit(o.memLimit)
	}
	vendor, err := parseUUID("--vendor-id", o.vendorID)
	if err != nil {
		return err
	}
	class, err := parseUUID("--class-id", o.classID)
	if err != nil {
		return err
	}
	anchors, err := readTrust("--trust", o.trust)
	if err != nil {
		return err
	}
	noticeAnchors, err := readTrust("--notice-trust", o.noticeTrust)
	if err != nil {
		return err
	}
	prices := map[string]float64{}
	for _, kv := range o.costs {
		k, v, ok := strings.Cut(kv, "=")
		p, err := strconv.ParseFloat(v, 64)
		switch {
		case !ok || err != nil || p < 0:
			return fmt.Errorf("--source-cost %q: want KIND=PRICE with a price >= 0", kv)
		case k != "broker" && k != "http" && k != "objstore" && k != "file":
			return fmt.Errorf("--source-cost %q: kind must be broker, http, objstore or file", kv)
		}
		prices[k] = p
	}
	policy := deviceagent.Policy{MaxMeteredBytes: o.maxMetered, FreeSourceOnly: o.freeOnly}
	if o.window != "" {
		w, err := parseWindow(o.window)
		if err != nil {
			return err
		}
		policy.Window = &w
	}
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	dev, fl, err := devicefile.Open(o.flash)
	if err != nil {
		return fmt.Errorf("--flash: %w", err)
	}
	defer fl.Close()
	var stages []deviceagent.Stage
	for _, s := range o.stages {
		name, path, ok := strings.Cut(s, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("--stage %q: want COMPONENT=FLASH", s)
		}
		sd, sf, err := devicefile.Open(path)
		if err != nil {
			return fmt.Errorf("--stage %s: %w", name, err)
		}
		defer sf.Close()
		stages = append(stages, deviceagent.Stage{Component: name, Boot: sd})
	}
	log := slog.Default()
	tr, err := broker.Dial(ctx, broker.Config{URL: o.brokerURL, Username: o.deviceID, Password: o.secret, ClientID: o.deviceID, Topics: topics, Logger: log,
		ReceiveMaximum: broker.DeviceReceiveMaximum})
	if err != nil {
		return fmt.Errorf("--broker: %w", err)
	}
	defer tr.Close(context.WithoutCancel(ctx))
	cfg := deviceagent.Config{
		DeviceID: o.deviceID, Class: o.class,
		Identity:  suit.Identity{VendorID: vendor, ClassIDs: [][]byte{class}, DeviceID: []byte(o.deviceID)},
		Transport: tr, Topics: topics, Boot: dev, Stages: stages, StateDir: o.state, Trust: anchors, NoticeTrust: noticeAnchors,
		Prices: prices, Policy: policy, Logger: log, ChunkIdle: o.chunkIdle, FileDirs: o.fileDirs, URLPrefixes: o.urlPrefixes,
		ProgressInterval: o.progressInterval,
	}
	if cfg.Keys, err = o.keys(); err != nil {
		return err
	}
	if cfg.EncryptedSlots, err = o.slotsEncrypted(); err != nil {
		return err
	}
	if o.imageURL != "" {
		cfg.HTTPAuth = &deviceagent.HTTPAuth{URLPrefix: o.imageURL, Username: o.deviceID, Password: o.secret}
	}
	if o.selfTest != "" {
		cmdline := o.selfTest
		cfg.SelfTest = func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, "sh", "-c", cmdline).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s: %v: %s", cmdline, err, strings.TrimSpace(string(out)))
			}
			return nil
		}
	}
	for _, s := range o.localSources {
		cfg.Sources = append(cfg.Sources, fetcher.NewFileSource(s, prices["file"]))
	}
	if o.natsURL != "" {
		nt, err := broker.DialNATS(ctx, broker.Config{URL: o.natsURL, Username: o.deviceID, Password: o.secret, Topics: topics, Logger: log})
		if err != nil {
			return fmt.Errorf("--nats: %w", err)
		}
		defer nt.Close(context.WithoutCancel(ctx))
		obs, err := nt.JetStream().ObjectStore(ctx, o.bucket)
		if err != nil {
			return fmt.Errorf("--nats: object store %s: %w", o.bucket, err)
		}
		cfg.ObjectStore, cfg.ObjectBucket, cfg.ObjectJS = obs, o.bucket, nt.JetStream()
	}
	a, err := deviceagent.New(cfg)
	if err != nil {
		return err
	}
	err = a.Run(ctx)
	if ctx.Err() != nil {
		return nil // interrupted: the state is persisted
	}
	return err
}

// readTrust reads every public key of every PEM file in paths (a file may
// hold several, as when an anchor is rotated).
func readTrust(flag string, paths []string) (suit.TrustAnchors, error) {
	anchors, err := suit.ReadTrustFiles(paths...)
	if err != nil {
		return nil, fmt.Errorf("%s %w", flag, err)
	}
	return anchors, nil
}

// parseWindow parses "HH:MM-HH:MM".
func parseWindow(s string) (deviceagent.Window, error) {
	a, b, ok := strings.Cut(s, "-")
	ta, err1 := time.Parse("15:04", a)
	tb, err2 := time.Parse("15:04", b)
	if !ok || err1 != nil || err2 != nil {
		return deviceagent.Window{}, fmt.Errorf("--window %q: want HH:MM-HH:MM", s)
	}
	off := func(t time.Time) time.Duration {
		return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute
	}
	return deviceagent.Window{Start: off(ta), End: off(tb)}, nil
}

// slotsEncrypted reports whether candidate slots keep ciphertext:
// --encrypted-slots, or the device file's encrypted_slots.
func (o *runOptions) slotsEncrypted() (bool, error) {
	if o.encryptedSlots {
		return true, nil
	}
	df, err := devicefile.Read(o.flash)
	if err != nil {
		return false, fmt.Errorf("--flash: %w", err)
	}
	return df.EncryptedSlots, nil
}

// keys is the agent's content-key unwrapper: the device file's KEK (the
// secure element) and --kek-file, never anything in the state directory.
func (o *runOptions) keys() (suit.KeyUnwrapper, error) {
	df, err := devicefile.Read(o.flash)
	if err != nil {
		return nil, fmt.Errorf("--flash: %w", err)
	}
	var ring suit.Keyring
	k, err := df.Keys()
	if err != nil {
		return nil, fmt.Errorf("--flash: %w", err)
	}
	if k != nil {
		ring = append(ring, k)
	}
	if o.kekFile != "" {
		b, err := os.ReadFile(o.kekFile)
		if err != nil {
			return nil, fmt.Errorf("--kek-file: %w", err)
		}
		kek, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || (len(kek) != 16 && len(kek) != 32) {
			return nil, fmt.Errorf("--kek-file: %s must hold 16 or 32 bytes in hex", o.kekFile)
		}
		ring = append(ring, suit.KEK{KeyID: []byte(o.kekID), Key: kek})
	}
	if len(ring) == 0 {
		return nil, nil
	}
	return ring, nil
}
