// Command firmcast-agent is the on-device update agent: it runs
// deviceagent against a simulated flash (made by `firmcast boot init`),
// over MQTT v5 or NATS.
//
//	firmcast-agent run --device-id ID --secret S --broker URL [--nats URL] \
//	    --flash FILE --state DIR --trust KEY.pub.pem ... [--source-cost KIND=PRICE ...]
//	firmcast-agent status --state DIR [--json]
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "firmcast-agent:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var level, format string
	root := &cobra.Command{
		Use:   "firmcast-agent",
		Short: "The firmcast on-device update agent",
		Long: `firmcast-agent receives update notices, verifies the signed SUIT manifest,
fetches the image from the cheapest source into a candidate slot of the
device's flash, has the bootloader install it, and confirms it after a
health check. Its state survives a crash or power cut at any point.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), level, format)
			if err != nil {
				return err
			}
			slog.SetDefault(log)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&format, "log-format", "text", "log format: text or json")
	root.AddCommand(newRunCmd(), newStatusCmd())
	return root
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
