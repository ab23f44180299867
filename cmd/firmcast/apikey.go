package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

func newAPIKeyCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "apikey",
		Short: "Create, list and revoke API keys",
		Long: `API keys authorize calls to the HTTP and NATS APIs. They are stored hashed
and carry scopes: read (list and show), campaign (upload images, drive
campaigns), admin (devices, groups, keys, audit log).`,
	}
	a.add(c)
	var kr publisher.KeyRequest
	create := &cobra.Command{
		Use:   "create --name NAME --scope read|campaign|admin",
		Short: "Create a key (prints its token once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			k, err := cl.CreateAPIKey(cmd.Context(), kr)
			if err != nil {
				return fmt.Errorf("apikey create: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s (%s) scopes %v\ntoken: %s\n", k.Key.ID, k.Key.Name, k.Key.Scopes, k.Token)
			return nil
		},
	}
	create.Flags().StringVar(&kr.Name, "name", "", "key name (required)")
	create.Flags().StringSliceVar(&kr.Scopes, "scope", []string{"read"}, "scopes: read, campaign, admin")
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			keys, err := cl.APIKeys(cmd.Context())
			if err != nil {
				return fmt.Errorf("apikey list: %w", err)
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), keys)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSCOPES\tCREATED\tREVOKED")
			for _, k := range keys {
				rev := "-"
				if k.Revoked != nil {
					rev = k.Revoked.Format(time.RFC3339)
				}
				sc := make([]string, len(k.Scopes))
				for i, s := range k.Scopes {
					sc[i] = string(s)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, strings.Join(sc, ","), k.Created.Format(time.RFC3339), rev)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.RevokeAPIKey(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("apikey revoke: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s revoked\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, list, revoke)
	return c
}
