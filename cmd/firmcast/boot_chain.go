package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/devicefile"
)

// newBootChainCmd is `firmcast boot chain`: the multi-stage boot
// (bootctl.Chain) over one flash file per stage.
func newBootChainCmd() *cobra.Command {
	var (
		flashes  []string
		confirm  bool
		asJSON   bool
		cutAfter int64
		cutStage int
	)
	c := &cobra.Command{
		Use:   "chain --flash STAGE1 [--flash STAGE2 ...] [--confirm]",
		Short: "Boot a multi-stage device once: each stage selects (and may roll back) the next",
		Long: `chain boots a device of several upgradable stages, one flash file each (made
with boot init; stage images with boot stage), in boot order: typically the
bootloader stage, then the application. Each stage selects the next one's
image; a stage whose trial runs out is reverted by the stage before it, and
the later stages are selected again under the restored one (depth first).
With --confirm, every stage's trial image is confirmed after the boot (the
last stage first), as a healthy device's agent does. --cut-after K cuts the
power at flash operation K of stage --cut-stage (from 1). Exit status 3
means a stage has nothing to boot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(flashes) == 0 {
				return errors.New("--flash: give one flash file per stage, in boot order")
			}
			var devs []*bootctl.Device
			var files []*bootctl.Flash
			defer func() {
				for _, f := range files {
					f.Close()
				}
			}()
			for _, p := range flashes {
				d, f, err := devicefile.Open(p)
				if err != nil {
					return err
				}
				devs, files = append(devs, d), append(files, f)
			}
			if cutAfter >= 0 {
				if cutStage < 1 || cutStage > len(files) {
					return fmt.Errorf("--cut-stage %d: want 1..%d", cutStage, len(files))
				}
				files[cutStage-1].Arm(bootctl.Fault{After: uint64(cutAfter), Kind: bootctl.FaultCut})
			}
			ch, err := bootctl.NewChain(devs...)
			if err != nil {
				return err
			}
			decs, berr := ch.Boot(cmd.Context())
			cut := errors.Is(berr, bootctl.ErrPowerLost)
			if berr != nil && !cut && !errors.Is(berr, bootctl.ErrNoBootableImage) {
				return berr
			}
			if berr == nil && confirm {
				if err := ch.Confirm(); err != nil {
					return err
				}
			}
			res := struct {
				Stages    []bootctl.Decision `json:"stages"`
				PowerCut  bool               `json:"power_cut"`
				Confirmed bool               `json:"confirmed"`
				Error     string             `json:"error,omitempty"`
			}{Stages: decs, PowerCut: cut, Confirmed: berr == nil && confirm}
			if berr != nil {
				res.Error = berr.Error()
			}
			if err := bootOut(cmd, asJSON, res, func(w io.Writer) {
				for i, d := range decs {
					fmt.Fprintf(w, "stage %d (%s): ", i+1, flashes[i])
					if d.Booted {
						fmt.Fprintf(w, "version %d, %s", d.Version, d.Action)
						if d.Trial {
							fmt.Fprintf(w, ", trial boot %d of %d", d.TrialBoots, d.TrialLimit)
						}
					} else {
						fmt.Fprintf(w, "%s", d.Action)
					}
					fmt.Fprintln(w)
				}
				if berr != nil {
					fmt.Fprintf(w, "%v\n", berr)
				} else if confirm {
					fmt.Fprintln(w, "confirmed")
				}
			}); err != nil {
				return err
			}
			if berr != nil && !cut {
				return &exitError{code: 3, err: berr}
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&flashes, "flash", nil, "flash file of a stage, in boot order (repeat; required)")
	c.Flags().BoolVar(&confirm, "confirm", false, "confirm every stage's trial image after the boot")
	c.Flags().Int64Var(&cutAfter, "cut-after", -1, "cut power at flash operation K of --cut-stage (-1: no cut)")
	c.Flags().IntVar(&cutStage, "cut-stage", 1, "the stage whose flash --cut-after counts")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
