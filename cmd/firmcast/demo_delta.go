package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/fleet"
)

// demoFullRun is the first run of `firmcast demo --delta`: the same
// fleet, images and campaign with the full image only, whose bytes the
// delta run is compared with.
func demoFullRun(cmd *cobra.Command, cfg fleet.Config) (*fleet.Summary, error) {
	errw := cmd.ErrOrStderr()
	fmt.Fprintf(errw, "full-image run first (v2 is v1 with a small change; no delta)...\n")
	cfg.SmallChange, cfg.Delta = true, false
	cfg.Dir = filepath.Join(cfg.Dir, "full")
	cfg.OnReady, cfg.OnProgress = nil, nil
	sum, err := fleet.Run(cmd.Context(), cfg)
	if err != nil {
		return nil, fmt.Errorf("demo: full-image run: %w", err)
	}
	fmt.Fprintf(errw, "full-image run: campaign %s, %d / %d confirmed on v2, publisher sent %s; now the delta run\n",
		sum.Outcome, sum.ConfirmedV2, sum.Targeted, humanBytes(sum.PublisherBytes))
	return &sum, nil
}

// printDeltaComparison prints the bytes the delta run sent against the
// full-image run's.
func printDeltaComparison(w io.Writer, full, d fleet.Summary) {
	fmt.Fprintln(w, "\ndelta against full image (same fleet, images and campaign):")
	fmt.Fprintf(w, "  delta                  %s for a %s image (%.1f%%), applied by %d of %d devices\n",
		humanBytes(d.DeltaSize), humanBytes(int64(d.ImageSize)), 100*float64(d.DeltaSize)/float64(max(d.ImageSize, 1)), d.ViaDelta, d.ConfirmedV2)
	if full.PublisherBytes > 0 && d.PublisherBytes >= 0 {
		fmt.Fprintf(w, "  publisher sent         %s with the delta, %s with the full image (%.1f%%)\n",
			humanBytes(d.PublisherBytes), humanBytes(full.PublisherBytes), 100*float64(d.PublisherBytes)/float64(full.PublisherBytes))
	}
	fmt.Fprintf(w, "  devices received       %s with the delta, %s with the full image\n", humanBytes(d.DeviceBytes), humanBytes(full.DeviceBytes))
	fmt.Fprintf(w, "  campaign wall time     %.1fs with the delta, %.1fs with the full image\n", d.WallSeconds, full.WallSeconds)
}
