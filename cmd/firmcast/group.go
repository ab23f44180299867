package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newGroupCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "group",
		Short: "Put devices in groups and take them out",
	}
	a.add(c)
	for _, add := range []bool{true, false} {
		use, short := "add GROUP DEVICE...", "Add devices to a group"
		if !add {
			use, short = "remove GROUP DEVICE...", "Remove devices from a group"
		}
		c.AddCommand(&cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.MinimumNArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := a.client()
				if err != nil {
					return err
				}
				if add {
					err = cl.GroupAdd(cmd.Context(), args[0], args[1:])
				} else {
					err = cl.GroupRemove(cmd.Context(), args[0], args[1:])
				}
				if err != nil {
					return fmt.Errorf("group %s: %w", cmd.Name(), err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "group %s: %d devices %sed\n", args[0], len(args)-1, map[bool]string{true: "add", false: "remov"}[add])
				return nil
			},
		})
	}
	return c
}
