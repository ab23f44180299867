package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

// updateNote is what `firmcast update` says about itself before it acts.
const updateNote = `firmcast update is a development flow: the server signs the manifest with
its own signing key (serve --sign-key), or sends the --envelope you give, for
the targets named here. For production, sign offline (firmcast manifest
create) and roll out with firmcast campaign create --envelope.`

func newUpdateCmd() *cobra.Command {
	a := &apiFlags{}
	f := &campaignFlags{}
	var image string
	c := &cobra.Command{
		Use:   "update --image FILE --device ID...",
		Short: "One-shot developer update: check targets, upload, sign, create, start and watch",
		Long: `Check that the targets exist, upload an image, have the server sign a
manifest for it, create a campaign to the given devices (or any other
targets), start it and watch it until it ends. Exits non-zero unless the
campaign completes. Nothing is uploaded when a named device is not
registered or the selectors match no device.

` + updateNote,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.ErrOrStderr(), updateNote)
			f.start = true
			req, err := f.request("")
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := checkTargets(cmd.Context(), cl, req); err != nil {
				return fmt.Errorf("update: %w; nothing was uploaded", err)
			}
			if req.Image, err = resolveImage(cmd.Context(), cl, image, cmd.ErrOrStderr()); err != nil {
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

// checkTargets checks a campaign's targets against the registry before
// anything is uploaded: every device it names is registered, and its
// selectors (class, groups, tags, on-version) match at least one device.
func checkTargets(ctx context.Context, cl *publisher.Client, req publisher.CampaignRequest) error {
	devs, err := cl.Devices(ctx)
	if err != nil {
		return fmt.Errorf("listing the devices to check the targets: %w", err)
	}
	known := make(map[string]bool, len(devs))
	for _, d := range devs {
		known[d.ID] = true
	}
	named := slices.Clone(req.Devices)
	for _, p := range req.PhaseDevices {
		named = append(named, p...)
	}
	var missing []string
	for _, id := range named {
		if !known[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("target device(s) not registered: %s (firmcast device list)", strings.Join(missing, ", "))
	}
	if req.Class == "" && len(req.Groups)+len(req.Tags) == 0 && req.OnVersion == nil {
		return nil
	}
	for _, d := range devs {
		switch {
		case req.Class != "" && d.Class != req.Class:
		case len(req.Groups) > 0 && !slices.ContainsFunc(req.Groups, func(g string) bool { return slices.Contains(d.Groups, g) }):
		case len(req.Tags) > 0 && !slices.ContainsFunc(req.Tags, func(t string) bool { return slices.Contains(d.Tags, t) }):
		case req.OnVersion != nil && d.ActiveVersion != *req.OnVersion:
		default:
			return nil
		}
	}
	return fmt.Errorf("no registered device matches the targets (class %q, groups %v, tags %v, on-version %v)",
		req.Class, req.Groups, req.Tags, versionOf(req.OnVersion))
}

func versionOf(v *uint64) string {
	if v == nil {
		return "any"
	}
	return fmt.Sprint(*v)
}
