package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newImageDeltaCmd is `firmcast image delta`.
func newImageDeltaCmd(a *apiFlags) *cobra.Command {
	var from, to string
	c := &cobra.Command{
		Use:   "delta --from DIGEST --to DIGEST",
		Short: "Make the delta from one stored image to another",
		Long: `The server makes the delta that turns the image --from into the image --to
(both stored, by SHA-256) and stores it as an image of its own: its digest
and chunk table, broadcast and repaired like any image. A campaign to --to
then offers it, besides the full image, to the devices that report running
--from; campaigns the server signs make their deltas themselves. Making a
delta that exists returns it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			img, err := cl.MakeDelta(cmd.Context(), from, to)
			if err != nil {
				return err
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), img)
			}
			full, err := cl.Image(cmd.Context(), to)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s  delta of %d bytes (%.1f%% of the %d-byte image), %d chunks of %d\n",
				img.Digest, img.Size, 100*float64(img.Size)/float64(max(full.Size, 1)), full.Size, img.Chunks, img.ChunkSize)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "SHA-256 of the source image, the one devices run (required)")
	c.Flags().StringVar(&to, "to", "", "SHA-256 of the target image (required)")
	_ = c.MarkFlagRequired("from")
	_ = c.MarkFlagRequired("to")
	return c
}
