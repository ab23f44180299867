package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newAuditCmd() *cobra.Command {
	a := &apiFlags{}
	var limit int
	c := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: who did what, when",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			entries, err := cl.Audit(cmd.Context(), limit)
			if err != nil {
				return fmt.Errorf("audit: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), entries)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tWHO\tACTION\tTARGET\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, e.Detail)
			}
			return tw.Flush()
		},
	}
	a.add(c)
	c.Flags().IntVar(&limit, "limit", 100, "number of most recent entries")
	return c
}
