package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/schemas"
)

// benchIdleOpts are the options of `firmcast bench idle`.
type benchIdleOpts struct {
	agents    int
	cases     []string
	parallel  int
	imageSize string
	json      bool
	dir       string
	timeout   time.Duration
	child     func(args ...string) (*exec.Cmd, error)
}

func newBenchIdleCmd() *cobra.Command { return benchIdleCmd(selfChild) }

// benchIdleCmd is `bench idle` with child starting the embedded broker
// process.
func benchIdleCmd(child func(args ...string) (*exec.Cmd, error)) *cobra.Command {
	o := &benchIdleOpts{child: child}
	c := &cobra.Command{
		Use:   "idle [--agents 10000] [--cases mosquitto,nats,embedded]",
		Short: "Measure the broker memory of N idle connected device agents",
		Long: `For each case, starts the broker as a separate process, reads its
resident memory (VmRSS, VmHWM from /proc/<pid>/status), connects N real
device agents from this process (each with its own credentials and client
id, subscribed to its notices and its class's announcements, its
"connected" report acknowledged by the broker), Parallel at a time, and
reads the broker's memory again once every agent is up and the figure has
settled. Agents run no update: this is the cost of an idle fleet.

Cases:
  mosquitto  a mosquitto process on a free port, with the password file and
             ACL that 'firmcast broker mosquitto-config' generates
  nats       a nats-server process with JetStream; agents on NATS
             (gateways' dialect: core subscriptions to the notice and the
             class announcements, the retained notice read by a direct
             get; no JetStream consumer), anonymous
  nats-core  the same nats-server, but lean nats.go connections with two
             core subscriptions each (notice, announcements) instead of
             agents: the bare connection cost
  embedded   the embedded MQTT v5 broker (mochi) in a child process of this
             binary, with a credential store holding every device

Per case it prints: agents connected, broker RSS before / after / settled
and its high-water mark, broker bytes per connection ((settled - before) /
N), connect time and the broker's CPU time meanwhile, and this process's growth per idle agent (RSS and Go
heap; each agent's simulated flash, in memory, is listed apart and
included in both). The process fd limit must exceed N.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := runBenchIdle(cmd.Context(), cmd.ErrOrStderr(), o)
			if err != nil && len(rows) == 0 {
				return &exitError{code: 1, err: fmt.Errorf("bench idle: %w", err)}
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				_ = enc.Encode(rows)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("bench idle: %w", err)}
				}
				return nil
			}
			printBenchIdle(cmd.OutOrStdout(), rows)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("bench idle: %w", err)}
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.IntVar(&o.agents, "agents", 10000, "idle agents per case")
	fl.StringSliceVar(&o.cases, "cases", []string{"mosquitto", "nats", "embedded"}, "brokers: mosquitto, nats, nats-core, embedded")
	fl.IntVar(&o.parallel, "parallel", 64, "connections set up at a time")
	fl.StringVar(&o.imageSize, "image-size", "4KiB", "factory image size (sizes each agent's in-memory flash)")
	fl.BoolVar(&o.json, "json", false, "print the results as JSON")
	fl.StringVar(&o.dir, "dir", "", "work directory (default: a temporary directory, removed afterwards)")
	fl.DurationVar(&o.timeout, "timeout", 15*time.Minute, "limit per case")
	c.AddCommand(newIdleChildCmd())
	return c
}

// selfChild runs this binary's hidden `bench idle serve-embedded`.
func selfChild(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, append([]string{"bench", "idle", "serve-embedded"}, args...)...), nil
}

// runBenchIdle parses the options and runs fleet.RunIdleBench.
func runBenchIdle(ctx context.Context, errw io.Writer, o *benchIdleOpts) ([]fleet.IdleRow, error) {
	size, err := parseSize("image-size", o.imageSize)
	if err != nil {
		return nil, err
	}
	dir, cleanup, err := workDir(o.dir, false, "firmcast-bench-idle-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	logf, err := os.Create(filepath.Join(dir, "agents.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	return fleet.RunIdleBench(ctx, fleet.IdleBenchConfig{
		Agents: o.agents, Cases: o.cases, Parallel: o.parallel, ImageSize: size, Dir: dir, Timeout: o.timeout,
		Child: o.child, Progress: errw,
		Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
}

func printBenchIdle(w io.Writer, rows []fleet.IdleRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tagents\tconnected\tsubs\tbroker RSS before\tafter\tsettled\tHWM\tbroker/conn\tconnect\tbroker CPU\tagent RSS/agent\tagent heap/agent\t(flash/agent)\tgoroutines/agent\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%.2fs\t%.2fs\t%s\t%s\t%s\t%.1f\t\n",
			r.Case, r.Agents, r.Connected, r.Subscriptions, humanBytes(r.BrokerRSSBefore), humanBytes(r.BrokerRSSAfter),
			humanBytes(r.BrokerRSSSettled), humanBytes(r.BrokerHWM), humanBytes(r.BrokerPerConn), r.ConnectSeconds, r.BrokerCPUSeconds,
			humanBytes(r.AgentRSSPerAgent), humanBytes(r.AgentHeapPerAgent), humanBytes(r.FlashPerAgent), r.GoroutinesPer)
	}
	_ = tw.Flush()
	for _, r := range rows {
		fmt.Fprintf(w, "%s: %s", r.Case, r.Broker)
		if r.BrokerGoroutinesPerConn > 0 {
			fmt.Fprintf(w, "; per connection: %.1f goroutines, %s heap, %s stacks", r.BrokerGoroutinesPerConn,
				humanBytes(r.BrokerHeapPerConn), humanBytes(r.BrokerStacksPerConn))
		}
		fmt.Fprintln(w)
	}
}

// newIdleChildCmd is the hidden `bench idle serve-embedded`: the
// embedded MQTT broker alone, for bench idle to measure apart. It prints
// "listening <url>", answers "ok" to each "gc" line on stdin (after
// returning freed memory to the system), and exits when stdin closes.
func newIdleChildCmd() *cobra.Command {
	var creds, root string
	c := &cobra.Command{
		Use:    "serve-embedded --credentials FILE --root ROOT",
		Short:  "The embedded MQTT broker alone (for bench idle)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fleet.ServeIdleChild(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), creds, root)
		},
	}
	c.Flags().StringVar(&creds, "credentials", "", "credentials file")
	c.Flags().StringVar(&root, "root", schemas.DefaultRoot, "topic root")
	return c
}
