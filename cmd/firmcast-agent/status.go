package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/schemas"
)

// statusJSON is the JSON form of `status --json`.
type statusJSON struct {
	State     string   `json:"state"`
	Campaign  string   `json:"campaign,omitempty"`
	Image     string   `json:"image,omitempty"`
	Version   uint64   `json:"version,omitempty"`
	Bytes     uint64   `json:"bytes_done,omitempty"`
	Size      uint64   `json:"bytes_total,omitempty"`
	Source    string   `json:"source,omitempty"`
	Slot      int      `json:"slot"`
	Attempts  uint32   `json:"attempts,omitempty"`
	Code      string   `json:"code,omitempty"`
	Text      string   `json:"text,omitempty"`
	Deferred  string   `json:"deferred,omitempty"`
	Counter   uint64   `json:"report_counter"`
	Completed []string `json:"completed,omitempty"`
}

func newStatusCmd() *cobra.Command {
	var dir string
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's persisted update state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := deviceagent.LoadState(dir)
			if err != nil {
				return err
			}
			s := statusJSON{State: r.State.String(), Campaign: r.Campaign, Version: r.Seq, Bytes: r.Bytes, Size: r.Size,
				Source: r.Source, Slot: r.Slot, Attempts: r.Attempts, Text: r.Text, Deferred: r.Deferred,
				Counter: r.Counter, Completed: r.Done}
			if len(r.Image) > 0 {
				s.Image = schemas.DigestHex(r.Image)
			}
			if r.Code != schemas.CodeNone {
				s.Code = r.Code.String()
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			fmt.Fprintf(w, "state      %s\n", s.State)
			if s.Campaign != "" {
				fmt.Fprintf(w, "campaign   %s (image %.16s, version %d)\n", s.Campaign, s.Image, s.Version)
			}
			if s.Size > 0 {
				fmt.Fprintf(w, "progress   %d / %d bytes via %s (slot %d)\n", s.Bytes, s.Size, s.Source, s.Slot)
			}
			if s.Code != "" {
				fmt.Fprintf(w, "last error %s: %s\n", s.Code, s.Text)
			}
			if s.Deferred != "" {
				fmt.Fprintf(w, "deferred   %s\n", s.Deferred)
			}
			fmt.Fprintf(w, "reports    %d sent\n", s.Counter)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "state", "", "state directory (required)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = c.MarkFlagRequired("state")
	return c
}
