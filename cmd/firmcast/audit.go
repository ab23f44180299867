package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

func newAuditCmd() *cobra.Command {
	a := &apiFlags{}
	var limit int
	c := apiListCmd(a, "audit", "audit", "Show the audit log: who did what, when",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.AuditEntry, error) {
			return cl.Audit(ctx, limit)
		},
		[]string{"SEQ", "TIME", "WHO", "ACTION", "TARGET", "DETAIL"},
		func(e publisher.AuditEntry) []string {
			return []string{fmt.Sprint(e.Seq), e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, e.Detail}
		})
	a.add(c)
	c.Flags().IntVar(&limit, "limit", 100, "number of most recent entries")
	return c
}
