package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/schemas"
)

// withExternalBrokers gives serve the --broker and --nats flags of a
// production topology (compose.yaml): the publisher and its HTTP API run
// against external brokers (an MQTT v5 broker such as Mosquitto, a NATS
// JetStream cluster) and no embedded broker starts. It steps aside when
// serve defines either flag itself.
func withExternalBrokers(c *cobra.Command) *cobra.Command {
	if c.Flags().Lookup("broker") != nil || c.Flags().Lookup("nats") != nil {
		return c
	}
	var mqttURL, natsURL string
	c.Flags().StringVar(&mqttURL, "broker", "", "external MQTT v5 broker URL devices use; with --nats, no embedded broker starts")
	c.Flags().StringVar(&natsURL, "nats", "", "external NATS URL with JetStream (one server of the cluster; the client learns the others); with --broker, no embedded broker starts")
	inner := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if mqttURL == "" && natsURL == "" {
			return inner(cmd, args)
		}
		if natsURL == "" {
			return errors.New("--broker needs --nats (the backend keeps its state in JetStream)")
		}
		return runServeExternal(cmd, mqttURL, natsURL)
	}
	return c
}

// runServeExternal runs only the publisher component, on external brokers.
func runServeExternal(cmd *cobra.Command, mqttURL, natsURL string) error {
	fl := cmd.Flags()
	get := func(name string) string {
		v, _ := fl.GetString(name)
		return v
	}
	o := &serveOptions{root: get("root"), credentials: get("credentials"), dataDir: get("data-dir")}
	o.pub = publisherOptions{
		httpListen: get("http-listen"), apiKey: get("api-key"), signKey: get("sign-key"),
		vendorID: get("vendor-id"), classID: get("class-id"), publicURL: get("public-url"),
	}
	o.pub.replicas, _ = fl.GetInt("replicas")
	if o.pub.httpListen == "" {
		return errors.New("--http-listen is empty: with external brokers serve runs only the publisher")
	}
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	log := slog.Default()
	env := &serveEnv{opts: o, topics: topics, log: log, mqttURL: mqttURL, natsURL: natsURL}
	pc := &publisherComponent{env: env}
	if err := pc.Start(cmd.Context()); err != nil {
		return fmt.Errorf("start publisher: %w", err)
	}
	log.Info("firmcast serving (external brokers)", "mqtt", mqttURL, "nats", natsURL, "root", topics.Root())
	<-cmd.Context().Done()
	log.Info("shutting down")
	pc.Stop()
	return nil
}
