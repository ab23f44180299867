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
		RunE: apiRunE(a, "apikey create",
			func(ctx context.Context, cl *publisher.Client, _ []string) (publisher.NewKey, error) {
				return cl.CreateAPIKey(ctx, kr)
			},
			func(w io.Writer, k publisher.NewKey) error {
				fmt.Fprintf(w, "key %s (%s) scopes %v\ntoken: %s\n", k.Key.ID, k.Key.Name, k.Key.Scopes, k.Token)
				return nil
			}),
	}
	create.Flags().StringVar(&kr.Name, "name", "", "key name (required)")
	create.Flags().StringSliceVar(&kr.Scopes, "scope", []string{"read"}, "scopes: read, campaign, admin")
	list := apiListCmd(a, "apikey list", "list", "List keys",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.APIKey, error) { return cl.APIKeys(ctx) },
		[]string{"ID", "NAME", "SCOPES", "CREATED", "REVOKED"},
		func(k publisher.APIKey) []string {
			rev := "-"
			if k.Revoked != nil {
				rev = k.Revoked.Format(time.RFC3339)
			}
			sc := make([]string, len(k.Scopes))
			for i, s := range k.Scopes {
				sc[i] = string(s)
			}
			return []string{k.ID, k.Name, strings.Join(sc, ","), k.Created.Format(time.RFC3339), rev}
		})
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a key",
		Args:  cobra.ExactArgs(1),
		RunE: apiExecE(a, "apikey revoke",
			func(ctx context.Context, cl *publisher.Client, args []string) error {
				return cl.RevokeAPIKey(ctx, args[0])
			},
			func(w io.Writer, args []string) { fmt.Fprintf(w, "key %s revoked\n", args[0]) }),
	}
	c.AddCommand(create, list, revoke)
	return c
}
