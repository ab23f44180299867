package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/publisher"
)

// apiFlags are the flags of every command that calls the server's API.
type apiFlags struct {
	server string
	key    string
	json   bool
	// TLS: the CA bundle that verifies the server, and a client
	// certificate for servers that ask for one.
	ca, cert, certKey string
}

func (a *apiFlags) add(c *cobra.Command) {
	c.PersistentFlags().StringVar(&a.server, "server", "http://127.0.0.1:8080", "firmcast server URL")
	c.PersistentFlags().StringVar(&a.key, "api-key", "", "API key (also FIRMCAST_API_KEY)")
	c.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON")
	c.PersistentFlags().StringVar(&a.ca, "ca", "", "PEM CA bundle that verifies an https:// server (default: the system roots)")
	c.PersistentFlags().StringVar(&a.cert, "client-cert", "", "PEM client certificate, for servers that require one (serve --http-client-ca)")
	c.PersistentFlags().StringVar(&a.certKey, "client-key", "", "PEM private key for --client-cert")
}

func (a *apiFlags) client() (*publisher.Client, error) {
	if a.key == "" {
		return nil, errors.New("no API key: pass --api-key or set FIRMCAST_API_KEY")
	}
	cl := &publisher.Client{BaseURL: a.server, Key: a.key}
	if a.ca == "" && a.cert == "" && a.certKey == "" {
		return cl, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.ca != "" {
		pem, err := os.ReadFile(a.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate", a.ca)
		}
	}
	if a.cert != "" || a.certKey != "" {
		if a.cert == "" || a.certKey == "" {
			return nil, errors.New("--client-cert and --client-key go together")
		}
		c, err := tls.LoadX509KeyPair(a.cert, a.certKey)
		if err != nil {
			return nil, fmt.Errorf("--client-cert/--client-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	cl.HTTP = &http.Client{Transport: tr}
	return cl, nil
}

func printAPIJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiRunE returns the RunE of a command that makes one API call and prints
// its result. It builds the client from a (returning that error as is),
// calls do with the command's context and arguments, wraps do's error as
// "<what>: <err>", and prints the result to the command's output: indented
// JSON with --json, else with text.
func apiRunE[T any](a *apiFlags, what string,
	do func(ctx context.Context, cl *publisher.Client, args []string) (T, error),
	text func(w io.Writer, v T) error,
) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		v, err := do(cmd.Context(), cl, args)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if a.json {
			return printAPIJSON(cmd.OutOrStdout(), v)
		}
		return text(cmd.OutOrStdout(), v)
	}
}

// apiExecE is apiRunE for a call that returns nothing: after do succeeds,
// done prints its confirmation (with or without --json).
func apiExecE(a *apiFlags, what string,
	do func(ctx context.Context, cl *publisher.Client, args []string) error,
	done func(w io.Writer, args []string),
) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		if err := do(cmd.Context(), cl, args); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		done(cmd.OutOrStdout(), args)
		return nil
	}
}

// apiListCmd returns a command, taking no arguments, that prints what fetch
// returns: a table of header and one row per item, or JSON with --json.
// Errors of fetch read "<what>: <err>".
func apiListCmd[T any](a *apiFlags, what, use, short string,
	fetch func(context.Context, *publisher.Client) ([]T, error),
	header []string, row func(T) []string,
) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: apiRunE(a, what,
			func(ctx context.Context, cl *publisher.Client, _ []string) ([]T, error) { return fetch(ctx, cl) },
			func(w io.Writer, items []T) error { return printTable(w, header, items, row) }),
	}
}

// printTable writes header and then row(item) for each item as columns
// aligned with two spaces between them, as every list command prints.
func printTable[T any](w io.Writer, header []string, items []T, row func(T) []string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, it := range items {
		fmt.Fprintln(tw, strings.Join(row(it), "\t"))
	}
	return tw.Flush()
}
