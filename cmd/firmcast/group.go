package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

func newGroupCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "group",
		Short: "Put devices in groups and take them out",
	}
	a.add(c)
	c.AddCommand(
		newGroupEditCmd(a, "add GROUP DEVICE...", "Add devices to a group", "added", (*publisher.Client).GroupAdd),
		newGroupEditCmd(a, "remove GROUP DEVICE...", "Remove devices from a group", "removed", (*publisher.Client).GroupRemove),
	)
	return c
}

// newGroupEditCmd returns "group add" or "group remove": edit is the
// client's GroupAdd or GroupRemove, done the past tense it prints.
func newGroupEditCmd(a *apiFlags, use, short, done string,
	edit func(cl *publisher.Client, ctx context.Context, group string, devices []string) error,
) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MinimumNArgs(2),
	}
	c.RunE = apiExecE(a, "group "+c.Name(),
		func(ctx context.Context, cl *publisher.Client, args []string) error {
			return edit(cl, ctx, args[0], args[1:])
		},
		func(w io.Writer, args []string) {
			fmt.Fprintf(w, "group %s: %d devices %s\n", args[0], len(args)-1, done)
		})
	return c
}
