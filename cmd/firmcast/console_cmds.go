package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

// The commands of the questions an operator asks during a rollout (issue
// 18), beside the console: a campaign's devices and failures, a device's
// report history, the fleet, and deleting an image.

func newCampaignDevicesCmd(a *apiFlags) *cobra.Command {
	var f publisher.DeviceFilter
	phase := -1
	c := &cobra.Command{
		Use:   "devices ID [--state S] [--phase N] [--reason CODE]",
		Short: "List a campaign's devices, filtered by state, phase or failure reason, a page at a time",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "campaign devices",
			func(ctx context.Context, cl *publisher.Client, args []string) (publisher.DevicePage, error) {
				if phase >= 1 {
					p := phase - 1
					f.Phase = &p
				}
				return cl.CampaignDevices(ctx, args[0], f)
			},
			func(w io.Writer, pg publisher.DevicePage) error {
				err := printTable(w, []string{"DEVICE", "PHASE", "STATE", "REASON", "UPDATED"}, pg.Devices, func(d publisher.DeviceState) []string {
					reason := d.Code
					if d.Text != "" {
						reason += ": " + d.Text
					}
					return []string{d.Device, fmt.Sprint(d.Phase + 1), d.State.String(), reason, d.Updated.Format(time.RFC3339)}
				})
				fmt.Fprintf(w, "%d of %d matching devices", len(pg.Devices), pg.Total)
				if pg.Next != "" {
					fmt.Fprintf(w, "; next page: --after %s", pg.Next)
				}
				fmt.Fprintln(w)
				return err
			}),
	}
	fl := c.Flags()
	fl.StringVar(&f.State, "state", "", "a state (confirmed, failed, timed-out...) or a counter (pending, downloading, staged)")
	fl.IntVar(&phase, "phase", -1, "phase number (1 = first)")
	fl.StringVar(&f.Reason, "reason", "", "failure code (see campaign failures)")
	fl.StringVar(&f.After, "after", "", "start after this device id (the previous page's last)")
	fl.IntVar(&f.Limit, "limit", 0, "page size (default 100, at most 1000)")
	return c
}

func newCampaignFailuresCmd(a *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "failures ID",
		Short: "Show a campaign's failed devices grouped by reason",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "campaign failures",
			func(ctx context.Context, cl *publisher.Client, args []string) ([]publisher.FailureGroup, error) {
				return cl.CampaignFailures(ctx, args[0])
			},
			func(w io.Writer, gs []publisher.FailureGroup) error {
				if len(gs) == 0 {
					fmt.Fprintln(w, "no failures")
					return nil
				}
				return printTable(w, []string{"REASON", "DEVICES", "EXAMPLE", "MESSAGE"}, gs, func(g publisher.FailureGroup) []string {
					return []string{g.Reason, fmt.Sprint(g.Count), strings.Join(g.Devices[:min(3, len(g.Devices))], ","), g.Text}
				})
			}),
	}
}

func newDeviceHistoryCmd(a *apiFlags) *cobra.Command {
	limit := 0
	c := &cobra.Command{
		Use:   "history ID",
		Short: "Show what a device reported, oldest first (kept in JetStream, the last 32 states per campaign)",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "device history",
			func(ctx context.Context, cl *publisher.Client, args []string) ([]publisher.DeviceState, error) {
				return cl.DeviceHistory(ctx, args[0], limit)
			},
			func(w io.Writer, hs []publisher.DeviceState) error {
				return printTable(w, []string{"WHEN", "CAMPAIGN", "STATE", "BYTES", "VERSION", "REASON"}, hs, func(h publisher.DeviceState) []string {
					bytes := ""
					if h.BytesTotal > 0 {
						bytes = fmt.Sprintf("%d/%d", h.BytesDone, h.BytesTotal)
					}
					return []string{h.Updated.Format(time.RFC3339), h.Campaign, h.State.String(), bytes, fmt.Sprint(h.ActiveVersion), h.Code}
				})
			}),
	}
	c.Flags().IntVar(&limit, "limit", 0, "at most this many, the newest (default 100, at most 500)")
	return c
}

func newFleetCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "fleet",
		Short: "Summarize the fleet: devices by version, class, group and last report; campaigns by state",
		Args:  cobra.NoArgs,
		RunE: apiRunE(a, "fleet",
			func(ctx context.Context, cl *publisher.Client, _ []string) (publisher.FleetSummary, error) {
				return cl.Fleet(ctx)
			},
			func(w io.Writer, f publisher.FleetSummary) error {
				fmt.Fprintf(w, "%d devices\n", f.Devices)
				for _, s := range []struct {
					name string
					m    map[string]int
				}{{"by active version", f.ByVersion}, {"by class", f.ByClass}, {"by group", f.ByGroup}, {"by last report", f.LastSeen}, {"campaigns by state", f.Campaigns}} {
					keys := make([]string, 0, len(s.m))
					for k := range s.m {
						keys = append(keys, k)
					}
					sort.Strings(keys)
					fmt.Fprintf(w, "%s:", s.name)
					for _, k := range keys {
						fmt.Fprintf(w, " %s=%d", k, s.m[k])
					}
					fmt.Fprintln(w)
				}
				return nil
			}),
	}
	a.add(c)
	return c
}

func newImageDeleteCmd(a *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete DIGEST",
		Short: "Delete an image that no campaign in progress delivers",
		Args:  cobra.ExactArgs(1),
		RunE: apiExecE(a, "image delete",
			func(ctx context.Context, cl *publisher.Client, args []string) error {
				return cl.DeleteImage(ctx, args[0])
			},
			func(w io.Writer, args []string) { fmt.Fprintf(w, "image %s deleted\n", args[0]) }),
	}
}
