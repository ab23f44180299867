package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

func newDeviceCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "device",
		Short: "Register, list, show and remove devices",
		Long: `Devices are registered with an id, a class, groups and tags. Their broker
secret is stored hashed; the embedded broker and the mosquitto password file
read it from the registry.`,
	}
	a.add(c)
	var nd publisher.NewDevice
	add := &cobra.Command{
		Use:   "add ID --class CLASS [--group G...] [--tag T...] [--secret S]",
		Short: "Register a device (prints its secret once)",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "device add",
			func(ctx context.Context, cl *publisher.Client, args []string) (publisher.NewDeviceReply, error) {
				nd.ID = args[0]
				return cl.AddDevice(ctx, nd)
			},
			func(w io.Writer, r publisher.NewDeviceReply) error {
				fmt.Fprintf(w, "device %s (class %s) registered\nsecret: %s\n", r.Device.ID, r.Device.Class, r.Secret)
				return nil
			}),
	}
	add.Flags().StringVar(&nd.Class, "class", "", "device class (required)")
	add.Flags().StringSliceVar(&nd.Groups, "group", nil, "groups (repeatable)")
	add.Flags().StringSliceVar(&nd.Tags, "tag", nil, "tags (repeatable)")
	add.Flags().StringVar(&nd.Secret, "secret", "", "broker secret, at least 128 bits (32 hex or 22 base64 characters; default: 192 random bits generated)")
	list := apiListCmd(a, "device list", "list", "List devices",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.Device, error) { return cl.Devices(ctx) },
		[]string{"ID", "CLASS", "GROUPS", "TAGS", "VERSION", "LAST STATE"},
		func(d publisher.Device) []string {
			last := "-"
			if d.LastReport != nil {
				last = d.LastReport.State
			}
			return []string{d.ID, d.Class, strings.Join(d.Groups, ","), strings.Join(d.Tags, ","), fmt.Sprint(d.ActiveVersion), last}
		})
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a device: active version, last report, campaign history, failure reasons",
		Args:  cobra.ExactArgs(1),
		RunE: apiRunE(a, "device show",
			func(ctx context.Context, cl *publisher.Client, args []string) (publisher.DeviceDetail, error) {
				return cl.Device(ctx, args[0])
			},
			printDevice),
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a device from the registry",
		Args:  cobra.ExactArgs(1),
		RunE: apiExecE(a, "device remove",
			func(ctx context.Context, cl *publisher.Client, args []string) error {
				return cl.RemoveDevice(ctx, args[0])
			},
			func(w io.Writer, args []string) { fmt.Fprintf(w, "device %s removed\n", args[0]) }),
	}
	c.AddCommand(add, list, show, remove, newDeviceKeyCmd(a), newDeviceHistoryCmd(a))
	return c
}

// printDevice prints what "device show" shows without --json.
func printDevice(w io.Writer, d publisher.DeviceDetail) error {
	fmt.Fprintf(w, "device %s\n  class           %s\n  groups          %s\n  tags            %s\n  active version  %d\n",
		d.ID, d.Class, strings.Join(d.Groups, ","), strings.Join(d.Tags, ","), d.ActiveVersion)
	if r := d.LastReport; r != nil {
		fmt.Fprintf(w, "  last report     %s (campaign %q, counter %d, at %s)", r.State, r.Campaign, r.Counter, r.Received.Format(time.RFC3339))
		if r.Code != "" {
			fmt.Fprintf(w, " error %s: %s", r.Code, r.Text)
		}
		fmt.Fprintln(w)
	}
	if len(d.Campaigns) > 0 {
		fmt.Fprintln(w, "  campaigns:")
		for _, c := range d.Campaigns {
			fmt.Fprintf(w, "    %s  phase %d  %s", c.Campaign, c.Phase, c.State)
			if c.Code != "" {
				fmt.Fprintf(w, "  reason %s: %s", c.Code, c.Text)
			}
			fmt.Fprintf(w, "  (%s)\n", c.Updated.Format(time.RFC3339))
		}
	}
	return nil
}
