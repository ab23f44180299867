package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

func TestPrintTable(t *testing.T) {
	type item struct {
		name string
		n    int
		at   time.Time
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	row := func(i item) []string { return []string{i.name, fmt.Sprint(i.n), i.at.Format(time.RFC3339)} }
	for _, tc := range []struct {
		name  string
		items []item
	}{
		{"none", nil},
		{"one", []item{{"a", 1, at}}},
		{"ragged", []item{{"a-long-name", 1, at}, {"", 123456, at}, {"b", -7, time.Time{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// want: what the list commands printed before printTable.
			var want bytes.Buffer
			tw := tabwriter.NewWriter(&want, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tN\tAT")
			for _, i := range tc.items {
				fmt.Fprintf(tw, "%s\t%d\t%s\n", i.name, i.n, i.at.Format(time.RFC3339))
			}
			tw.Flush()
			var got bytes.Buffer
			if err := printTable(&got, []string{"NAME", "N", "AT"}, tc.items, row); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Errorf("got\n%s\nwant\n%s", got.String(), want.String())
			}
		})
	}
}

var errTestCall = errors.New("call failed")

// TestAPIRunE runs apiRunE and apiExecE without a server: do never
// touches the client.
func TestAPIRunE(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     string
		json    bool
		exec    bool  // apiExecE instead of apiRunE
		callErr error // what do returns
		wantOut string
		wantErr string // "" for none
		called  bool   // do must have been called
	}{
		{name: "no key", wantErr: "no API key: pass --api-key or set FIRMCAST_API_KEY"},
		{name: "no key exec", exec: true, wantErr: "no API key: pass --api-key or set FIRMCAST_API_KEY"},
		{name: "text", key: "k", wantOut: "v=7 [a b]\n", called: true},
		{name: "json", key: "k", json: true, wantOut: "{\n  \"N\": 7,\n  \"Args\": [\n    \"a\",\n    \"b\"\n  ]\n}\n", called: true},
		{name: "call error", key: "k", callErr: errTestCall, wantErr: "thing verb: call failed", called: true},
		{name: "exec", key: "k", exec: true, wantOut: "done [a b]\n", called: true},
		{name: "exec json prints text", key: "k", exec: true, json: true, wantOut: "done [a b]\n", called: true},
		{name: "exec error", key: "k", exec: true, callErr: errTestCall, wantErr: "thing verb: call failed", called: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &apiFlags{key: tc.key, json: tc.json}
			type result struct {
				N    int
				Args []string
			}
			called := false
			var runE func(*cobra.Command, []string) error
			if tc.exec {
				runE = apiExecE(a, "thing verb",
					func(_ context.Context, cl *publisher.Client, args []string) error {
						called = cl != nil
						return tc.callErr
					},
					func(w io.Writer, args []string) { fmt.Fprintf(w, "done %v\n", args) })
			} else {
				runE = apiRunE(a, "thing verb",
					func(_ context.Context, cl *publisher.Client, args []string) (result, error) {
						called = cl != nil
						return result{7, args}, tc.callErr
					},
					func(w io.Writer, r result) error {
						_, err := fmt.Fprintf(w, "v=%d %v\n", r.N, r.Args)
						return err
					})
			}
			var out bytes.Buffer
			cmd := &cobra.Command{}
			cmd.SetOut(&out)
			cmd.SetContext(context.Background())
			err := runE(cmd, []string{"a", "b"})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			case tc.callErr != nil && !errors.Is(err, tc.callErr):
				t.Errorf("error %v does not wrap %v", err, tc.callErr)
			}
			if called != tc.called {
				t.Errorf("do called: %v, want %v", called, tc.called)
			}
			if out.String() != tc.wantOut {
				t.Errorf("output %q, want %q", out.String(), tc.wantOut)
			}
			if tc.wantErr != "" && strings.TrimSpace(out.String()) != "" {
				t.Errorf("output on error: %q", out.String())
			}
		})
	}
}
