package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/firmcast/firmcast/publisher"
)

func newCampaignCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "campaign",
		Short: "Create, drive and watch update campaigns",
		Long: `A campaign delivers one image to a set of devices in phases. Each phase
opens when the previous one reached its success threshold; the campaign
aborts (or pauses) when failures reach the failure threshold.`,
	}
	a.add(c)
	c.AddCommand(newCampaignCreateCmd(a), newCampaignListCmd(a), newCampaignStatusCmd(a), newCampaignWatchCmd(a),
		newCampaignDevicesCmd(a), newCampaignFailuresCmd(a))
	for _, op := range []string{"start", "pause", "resume", "abort"} {
		c.AddCommand(newCampaignActionCmd(a, op))
	}
	return c
}

type campaignFlags struct {
	image, class, name, fail, success, deadline, envelope, component string
	groups, devices, tags, phaseDevices                              []string
	phases                                                           []int
	onVersion                                                        int64
	start, allowDowngrade, retryFailed                               bool
}

func (f *campaignFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.class, "class", "", "target every device of this class")
	fl.StringSliceVar(&f.groups, "group", nil, "target the devices of these groups (repeatable)")
	fl.StringSliceVar(&f.devices, "device", nil, "target these devices (repeatable)")
	fl.StringSliceVar(&f.tags, "tag", nil, "target devices with any of these tags (repeatable)")
	fl.Int64Var(&f.onVersion, "on-version", -1, "target devices currently on this version")
	fl.IntSliceVar(&f.phases, "phases", nil, "cumulative rollout percentages, e.g. 1,10,100 (default 100)")
	fl.StringArrayVar(&f.phaseDevices, "phase-devices", nil, "explicit phases instead: the devices of one phase, comma separated (repeat per phase, in order)")
	fl.StringVar(&f.fail, "fail-threshold", "", "failures (of the devices notified so far) that stop the campaign, e.g. 5%")
	fl.StringVar(&f.success, "success-threshold", "", "confirmed devices of a phase that open the next, e.g. 90%")
	fl.StringVar(&f.deadline, "deadline", "", "campaign deadline: a duration from now (72h) or RFC 3339 time")
	fl.StringVar(&f.envelope, "envelope", "", "already signed SUIT envelope file (default: the server signs)")
	fl.StringVar(&f.name, "name", "", "campaign name")
	fl.BoolVar(&f.allowDowngrade, "allow-downgrade", false, "allow an image older (by version or security version) than what some targets run; audited")
	fl.StringVar(&f.component, "component", "", "SUIT component the server-signed manifest updates, such as bootloader (a device's bootloader stage); default: the application")
	fl.BoolVar(&f.retryFailed, "retry-failed", false, "install the image also on devices where it failed before (their bootloader reverted it); without it they report failed-before and download nothing")
}

var percentRE = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?)%$`)

// parsePermille turns "5%" or "2.5%" into permille.
func parsePermille(flag, s string) (uint16, error) {
	if s == "" {
		return 0, nil
	}
	m := percentRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("--%s %q: want a percentage such as 5%%", flag, s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	if v <= 0 || v > 100 {
		return 0, fmt.Errorf("--%s %q: want more than 0%% and at most 100%%", flag, s)
	}
	return uint16(v*10 + 0.5), nil
}

func parseDeadline(s string, now time.Time) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d).Unix(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return 0, fmt.Errorf("--deadline %q: want a duration (72h) or an RFC 3339 time", s)
	}
	return t.Unix(), nil
}

func (f *campaignFlags) request(image string) (publisher.CampaignRequest, error) {
	r := publisher.CampaignRequest{
		Name: f.name, Image: image, Devices: f.devices, Groups: f.groups, Class: f.class, Tags: f.tags,
		Phases: f.phases, Start: f.start, AllowDowngrade: f.allowDowngrade, RetryFailed: f.retryFailed,
		Component: f.component,
	}
	if f.onVersion >= 0 {
		v := uint64(f.onVersion)
		r.OnVersion = &v
	}
	var err error
	if r.FailPermille, err = parsePermille("fail-threshold", f.fail); err != nil {
		return r, err
	}
	if r.SuccessPermille, err = parsePermille("success-threshold", f.success); err != nil {
		return r, err
	}
	if r.Deadline, err = parseDeadline(f.deadline, time.Now()); err != nil {
		return r, err
	}
	if f.envelope != "" {
		if r.Envelope, err = os.ReadFile(f.envelope); err != nil {
			return r, fmt.Errorf("--envelope: %w", err)
		}
	}
	for _, p := range f.phaseDevices {
		r.PhaseDevices = append(r.PhaseDevices, strings.Split(p, ","))
	}
	if r.Class == "" && len(r.Groups)+len(r.Devices)+len(r.Tags)+len(r.PhaseDevices) == 0 && r.OnVersion == nil {
		return r, errors.New("no targets: give --class, --group, --device, --tag, --on-version or --phase-devices")
	}
	return r, nil
}

// resolveImage returns the digest of --image: a 64-hex digest as is, or a
// file, which is uploaded first.
func resolveImage(ctx context.Context, cl *publisher.Client, img string, out io.Writer) (string, error) {
	if img == "" {
		return "", errors.New("--image is required (a digest or a file)")
	}
	if b, err := hex.DecodeString(img); err == nil && len(b) == 32 {
		return strings.ToLower(img), nil
	}
	st, err := uploadFile(ctx, cl, img, out)
	if err != nil {
		return "", err
	}
	return st.Digest, nil
}

func newCampaignCreateCmd(a *apiFlags) *cobra.Command {
	f := &campaignFlags{}
	c := &cobra.Command{
		Use:   "create --image DIGEST|FILE --class ID|--group G|--device ID... [--phases 1,10,100] [--fail-threshold 5%] [--start]",
		Short: "Create a campaign (and start it with --start)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			digest, err := resolveImage(cmd.Context(), cl, f.image, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			req, err := f.request(digest)
			if err != nil {
				return err
			}
			st, err := cl.CreateCampaign(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("campaign create: %w", err)
			}
			return printStatus(cmd.OutOrStdout(), a, st)
		},
	}
	c.Flags().StringVar(&f.image, "image", "", "image digest (hex) or file to upload (required)")
	c.Flags().BoolVar(&f.start, "start", false, "start the campaign at once")
	f.add(c)
	return c
}

func newCampaignActionCmd(a *apiFlags, op string) *cobra.Command {
	return &cobra.Command{
		Use:   op + " ID",
		Short: strings.ToUpper(op[:1]) + op[1:] + " a campaign",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "campaign "+op,
			func(ctx context.Context, cl *publisher.Client, args []string) (publisher.Status, error) {
				return cl.CampaignAction(ctx, args[0], op)
			},
			printStatusText),
	}
}

func newCampaignStatusCmd(a *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status ID",
		Short: "Show a campaign's state and counters",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "campaign status",
			func(ctx context.Context, cl *publisher.Client, args []string) (publisher.Status, error) {
				return cl.Campaign(ctx, args[0])
			},
			printStatusText),
	}
}

// printStatus prints st as JSON with --json, else as printStatusText does.
func printStatus(w io.Writer, a *apiFlags, st publisher.Status) error {
	if a.json {
		return printAPIJSON(w, st)
	}
	return printStatusText(w, st)
}

// printStatusText prints a campaign's state and counters.
func printStatusText(w io.Writer, st publisher.Status) error {
	fmt.Fprintf(w, "campaign %s", st.ID)
	if st.Name != "" {
		fmt.Fprintf(w, " (%s)", st.Name)
	}
	fmt.Fprintf(w, "\n  state    %s\n  image    %s\n  phases   %v (open: %d, %d of %d devices)\n", st.State, st.Image, st.Phases, st.Phase, st.Opened, st.Targets)
	if st.Reason != "" {
		fmt.Fprintf(w, "  reason   %s\n", st.Reason)
	}
	keys := make([]string, 0, len(st.Counts))
	for k := range st.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-18s %d\n", k, st.Counts[k])
	}
	if st.Ignored > 0 {
		fmt.Fprintf(w, "  %-18s %d\n", "ignored reports", st.Ignored)
	}
	return nil
}

func newCampaignListCmd(a *apiFlags) *cobra.Command {
	return apiListCmd(a, "campaign list", "list", "List campaigns",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.Status, error) { return cl.Campaigns(ctx) },
		[]string{"ID", "NAME", "STATE", "PHASE", "TARGETS", "CONFIRMED", "FAILED", "CREATED"},
		func(s publisher.Status) []string {
			return []string{s.ID, s.Name, s.State, fmt.Sprintf("%d/%d", s.Phase+1, len(s.Phases)), fmt.Sprint(s.Targets),
				fmt.Sprint(s.Counts["confirmed"]), fmt.Sprint(s.Counts["failed"] + s.Counts["rolled-back"]), s.Created.Format(time.RFC3339)}
		})
}

func newCampaignWatchCmd(a *apiFlags) *cobra.Command {
	var retry time.Duration
	c := &cobra.Command{
		Use:   "watch ID",
		Short: "Show live progress bars per state until the campaign ends",
		Long: `Follow the campaign's live events (GET /api/v1/events, server-sent
events) and draw one progress bar per state until the campaign is no
longer created or running. A dropped stream is resumed where it left off.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			st, err := watchCampaign(cmd.Context(), cl, args[0], retry, cmd.OutOrStdout())
			if err != nil {
				return fmt.Errorf("campaign watch: %w", err)
			}
			return printStatus(cmd.OutOrStdout(), a, st)
		},
	}
	c.Flags().DurationVar(&retry, "interval", time.Second, "wait before resuming a dropped event stream")
	return c
}

// watchStates are the counters watch draws a bar for.
var watchStates = []string{"queued", "pending", "downloading", "staged", "confirmed", "failed", "rolled-back"}

// watchResumes bounds how often in a row watch resumes a stream that
// ends without an event.
const watchResumes = 5

// watchCampaign draws one bar per state (out of the campaign's targets)
// and moves them with the campaign's live events until the campaign is no
// longer created or running. A stream that drops is resumed after retry
// from its last event id.
func watchCampaign(ctx context.Context, cl *publisher.Client, id string, retry time.Duration, out io.Writer) (publisher.Status, error) {
	st, err := cl.Campaign(ctx, id)
	if err != nil {
		return st, err
	}
	pr := mpb.NewWithContext(ctx, mpb.WithOutput(out), mpb.WithWidth(40), mpb.WithAutoRefresh())
	bars := map[string]*mpb.Bar{}
	for _, s := range watchStates {
		bars[s] = pr.AddBar(int64(max(st.Targets, 1)),
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-12s", s))),
			mpb.AppendDecorators(decor.CountersNoUnit("%d / %d")))
	}
	draw := func() {
		for _, s := range watchStates {
			bars[s].SetCurrent(int64(st.Counts[s]))
		}
	}
	ended := func() bool { return st.State != publisher.CampaignRunning && st.State != publisher.CampaignCreated }
	errDone := errors.New("campaign ended")
	last, idle := "", 0
	for draw(); !ended(); {
		progressed := false
		err := cl.Events(ctx, id, last, func(ev publisher.Event) error {
			progressed = true
			if ev.ID != "" {
				last = ev.ID
			}
			if ev.Kind == "end" {
				return fmt.Errorf("%w: %s", publisher.ErrUnauthorized, ev.End.Error)
			}
			for _, s := range ev.Batch.Campaigns {
				if s.ID == id {
					st = s
				}
			}
			draw()
			if ended() {
				return errDone
			}
			return nil
		})
		switch {
		case errors.Is(err, errDone):
		case ctx.Err() != nil:
			pr.Shutdown()
			return st, ctx.Err()
		case errors.Is(err, publisher.ErrUnauthorized), errors.Is(err, publisher.ErrForbidden), errors.Is(err, publisher.ErrNotFound):
			pr.Shutdown()
			return st, err
		case err != nil:
			if progressed {
				idle = 0
			} else if idle++; idle >= watchResumes {
				pr.Shutdown()
				return st, err
			}
			select {
			case <-ctx.Done():
				pr.Shutdown()
				return st, ctx.Err()
			case <-time.After(retry):
			}
		}
	}
	// Complete every bar at its final count so the last frame is drawn.
	for _, s := range watchStates {
		bars[s].SetTotal(int64(max(st.Targets, 1)), true)
	}
	pr.Wait()
	return st, nil
}
