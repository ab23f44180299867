package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// logOptions are the global logging flags.
type logOptions struct {
	level  string
	format string
}

func (o *logOptions) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch o.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.format)
}

func newRootCmd() *cobra.Command {
	lo := &logOptions{}
	root := &cobra.Command{
		Use:   "firmcast",
		Short: "Over-the-air firmware updates for device fleets",
		Long: `firmcast updates the firmware of device fleets over the air.

It signs SUIT manifests, stores images, runs phased campaigns over MQTT v5
and NATS, and ships the on-device agent and bootloader module that install
an update so that a power cut at any moment leaves a bootable device.

Every flag can also be set from the environment as FIRMCAST_<FLAG>, with
dashes turned into underscores (for example FIRMCAST_LOG_FORMAT=json).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return err
			}
			log, err := lo.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			slog.SetDefault(log)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&lo.level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&lo.format, "log-format", "text", "log format: text or json")
	for _, c := range commands() {
		root.AddCommand(c)
	}
	return root
}

// applyEnv sets every flag of cmd (local and inherited) that was not given
// on the command line from FIRMCAST_<FLAG> when that variable is set.
func applyEnv(cmd *cobra.Command) error {
	var errs []string
	set := func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := "FIRMCAST_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			if err := sv.Replace(strings.Split(v, ",")); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
			f.Changed = true
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			return
		}
		f.Changed = true
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	if len(errs) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
	}
	return nil
}
