package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
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
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			nd.ID = args[0]
			r, err := cl.AddDevice(cmd.Context(), nd)
			if err != nil {
				return fmt.Errorf("device add: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s (class %s) registered\nsecret: %s\n", r.Device.ID, r.Device.Class, r.Secret)
			return nil
		},
	}
	add.Flags().StringVar(&nd.Class, "class", "", "device class (required)")
	add.Flags().StringSliceVar(&nd.Groups, "group", nil, "groups (repeatable)")
	add.Flags().StringSliceVar(&nd.Tags, "tag", nil, "tags (repeatable)")
	add.Flags().StringVar(&nd.Secret, "secret", "", "broker secret (default: generated)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			devs, err := cl.Devices(cmd.Context())
			if err != nil {
				return fmt.Errorf("device list: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), devs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCLASS\tGROUPS\tTAGS\tVERSION\tLAST STATE")
			for _, d := range devs {
				last := "-"
				if d.LastReport != nil {
					last = d.LastReport.State
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Class, strings.Join(d.Groups, ","), strings.Join(d.Tags, ","), d.ActiveVersion, last)
			}
			return tw.Flush()
		},
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a device: active version, last report, campaign history, failure reasons",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			d, err := cl.Device(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("device show: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), d)
			}
			w := cmd.OutOrStdout()
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
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a device from the registry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.RemoveDevice(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("device remove: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s removed\n", args[0])
			return nil
		},
	}
	c.AddCommand(add, list, show, remove)
	return c
}
