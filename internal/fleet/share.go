package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// The protocol between Procs (the parent) and ServeShare (each child):
// JSON objects, one a line. The child writes on its stdout: one up
// message once its devices are connected, a tally every interval, and the
// answers to the parent's commands; or one error message, and exits. The
// parent writes commands on the child's stdin; when it closes stdin (it
// is done, or it died) the child stops its devices and exits.

// shareMsg is one message of a child to its parent; one field is set.
type shareMsg struct {
	Up      *shareUp `json:"up,omitempty"`
	Tally   *Tally   `json:"tally,omitempty"`
	Stopped bool     `json:"stopped,omitempty"`
	Outcome *Outcome `json:"outcome,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// shareUp: the child's devices are connected and subscribed.
type shareUp struct {
	Devices int     `json:"devices"`
	Seconds float64 `json:"seconds"`
}

// shareCmd is one command of the parent to a child; one field is set.
type shareCmd struct {
	// Stop: stop the agents (Sim.Stop); answered by a tally, then stopped.
	Stop bool `json:"stop,omitempty"`
	// Outcome: the hex SHA-256 of v2 (Sim.Outcome); answered by outcome.
	Outcome string `json:"outcome,omitempty"`
}

// ServeShare is the body of a child process of Procs (`firmcast sim
// share`). start builds and runs the child's share of the fleet
// (NewFleet, then Fleet.Run) with a context that ends when ctx ends or
// in closes.
// ServeShare then writes the share's Tally to out every interval and
// answers the parent's commands read from in, until in closes (it
// returns nil) or ctx ends (ctx's error); either way it stops the agents
// and closes the fleet first. Nothing else may write to out. When start
// fails, ServeShare writes the error to out and returns it.
func ServeShare(ctx context.Context, in io.Reader, out io.Writer, interval time.Duration, start func(context.Context) (*Fleet, error)) error {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	enc := json.NewEncoder(out)
	gone := make(chan struct{})
	cmds := make(chan shareCmd)
	go func() {
		defer close(gone)
		dec := json.NewDecoder(in)
		for {
			var c shareCmd
			if err := dec.Decode(&c); err != nil {
				return
			}
			select {
			case cmds <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	t0 := time.Now()
	// The fleet's agents run until ctx ends (Fleet.Run): from here on,
	// ctx ends when in closes too.
	go func() {
		select {
		case <-gone:
			cancel()
		case <-ctx.Done():
		}
	}()
	fl, err := start(ctx)
	if err != nil {
		_ = enc.Encode(shareMsg{Error: err.Error()})
		return err
	}
	defer fl.Close()
	defer fl.Stop()
	tally := func() error {
		t := fl.Tally()
		return enc.Encode(shareMsg{Tally: &t})
	}
	if err := enc.Encode(shareMsg{Up: &shareUp{Devices: len(fl.Devices), Seconds: time.Since(t0).Seconds()}}); err != nil {
		return err
	}
	if err := tally(); err != nil {
		return err
	}
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		var err error
		select {
		case <-gone:
			return nil
		case <-ctx.Done():
			select {
			case <-gone:
				return nil
			default:
			}
			return ctx.Err()
		case <-tk.C:
			err = tally()
		case c := <-cmds:
			switch {
			case c.Stop:
				fl.Stop()
				if err = tally(); err == nil {
					err = enc.Encode(shareMsg{Stopped: true})
				}
			case c.Outcome != "":
				b, derr := hex.DecodeString(c.Outcome)
				if derr != nil || len(b) != 32 {
					err = fmt.Errorf("fleet: outcome: bad digest %q", c.Outcome)
					_ = enc.Encode(shareMsg{Error: err.Error()})
					return err
				}
				o, _ := fl.Outcome([32]byte(b))
				err = enc.Encode(shareMsg{Outcome: &o})
			}
		}
		if err != nil {
			return fmt.Errorf("fleet: writing to the parent: %w", err)
		}
	}
}
