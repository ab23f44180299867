package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func newUpdateCmd() *cobra.Command {
	a := &apiFlags{}
	f := &campaignFlags{}
	var image string
	c := &cobra.Command{
		Use:   "update --image FILE --device ID...",
		Short: "One-shot developer update: upload, sign, create, start and watch",
		Long: `Upload an image, have the server sign a manifest for it, create a
campaign to the given devices (or any other targets), start it and watch it
until it ends. Exits non-zero unless the campaign completes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			digest, err := resolveImage(cmd.Context(), cl, image, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			f.start = true
			req, err := f.request(digest)
			if err != nil {
				return err
			}
			st, err := cl.CreateCampaign(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "campaign %s started\n", st.ID)
			st, err = watchCampaign(cmd.Context(), cl, st.ID, time.Second, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			if err := printStatus(cmd.OutOrStdout(), a, st); err != nil {
				return err
			}
			if st.State != "completed" {
				return &exitError{code: 1, err: fmt.Errorf("update: campaign %s ended %s: %s", st.ID, st.State, st.Reason)}
			}
			return nil
		},
	}
	a.add(c)
	c.Flags().StringVar(&image, "image", "", "image file (or digest) (required)")
	f.add(c)
	return c
}
