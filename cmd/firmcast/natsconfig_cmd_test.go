package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

const replicasCredentials = `# two publisher replicas, each its own backend account
backend firmcast-1 backend-secret-one-0123456789
backend firmcast-2 backend-secret-two-0123456789
service ci-bot     service-secret-0123456789
device  dev1       device-secret-0123456789 sensor
`

func TestNATSConfigCmd(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte(replicasCredentials), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "nats")
	msg, err := runBrokerCmd(t, "broker", "nats-config", "--out", out, "--credentials", creds, "--service", "ops:ops-secret-0123456789", "--root", "acme/fc")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "2 backend, 2 service, 1 device users") {
		t.Errorf("output %q does not count the roles", msg)
	}
	conf, err := os.ReadFile(filepath.Join(out, "firmcast.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"user": "firmcast-1"`, `"user": "firmcast-2"`, `"user": "ci-bot"`, `"user": "ops"`, `"user": "dev1"`,
		`"acme.fc.v1.api.campaign.*"`, `"acme.fc.v1.api.inbox.ci-bot.>"`, `"jetstream": "enabled"`} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("firmcast.conf lacks %s", want)
		}
	}
	if strings.Contains(string(conf), "secret-0123456789") {
		t.Error("firmcast.conf holds a clear secret")
	}
	if bin, err := brokerproc.LookBinary("nats-server"); err == nil {
		if b, err := exec.Command(bin, "-c", filepath.Join(out, "firmcast.conf"), "-t").CombinedOutput(); err != nil {
			t.Errorf("nats-server refuses the generated file: %v\n%s", err, b)
		}
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no out", []string{"--backend-secret", "b"}, "--out is required"},
		{"no accounts", []string{"--out", dir}, "no accounts"},
		{"no backend", []string{"--out", dir, "--service", "svc:s1"}, "no backend account"},
		{"bad service flag", []string{"--out", dir, "--backend-secret", "b", "--service", "svc"}, "want USER:SECRET"},
		{"bad service name", []string{"--out", dir, "--backend-secret", "b", "--service", "s.vc:s1"}, "s.vc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := runBrokerCmd(t, append([]string{"broker", "nats-config"}, c.args...)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s1") {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

// TestServeReplicasOnGeneratedNATSConfig is compose.yaml's NATS side
// without containers: `broker nats-config` writes the accounts of a
// credentials file with two backend accounts, a nats-server 2.9.10
// process runs with it, and two `serve --nats` replicas start, each with
// its own backend account (--backend-user). Both take API calls; a
// service calls the campaign API over NATS with its key; a replica given
// the service account as its own is refused.
func TestServeReplicasOnGeneratedNATSConfig(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte(replicasCredentials), 0o600); err != nil {
		t.Fatal(err)
	}
	root := "fct" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := runBrokerCmd(t, "broker", "nats-config", "--out", filepath.Join(dir, "nats"), "--credentials", creds, "--root", root); err != nil {
		t.Fatal(err)
	}
	ns := testutil.StartNATSProcess(t, "-c", filepath.Join(dir, "nats", "firmcast.conf"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const key = "fk-replicas-test-admin-key-0123456789"
	var urls []string
	var dones []chan error
	for _, user := range []string{"firmcast-1", "firmcast-2"} {
		port := testutil.FreePort(t)
		done := make(chan error, 1)
		cmd := newRootCmd()
		cmd.SetArgs([]string{"serve", "--nats", ns.URL(), "--credentials", creds, "--backend-user", user, "--root", root,
			"--http-listen", "127.0.0.1:" + strconv.Itoa(port), "--api-key", key, "--data-dir", t.TempDir(), "--log-level", "error"})
		go func() { done <- cmd.ExecuteContext(ctx) }()
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", port))
		dones = append(dones, done)
	}
	for i, u := range urls {
		waitHealthy(t, u, dones[i])
		cl := &publisher.Client{BaseURL: u, Key: key}
		if _, err := cl.Campaigns(ctx); err != nil {
			t.Errorf("replica %d: campaign list: %v", i+1, err)
		}
	}
	// A service calls the campaign API over NATS, with a read key.
	cl := &publisher.Client{BaseURL: urls[1], Key: key}
	nk, err := cl.CreateAPIKey(ctx, publisher.KeyRequest{Name: "ci", Scopes: []string{"read"}})
	if err != nil {
		t.Fatal(err)
	}
	topics := schemas.MustTopics(root)
	svc := testutil.Dial(t, broker.Config{URL: ns.URL(), Topics: topics, ClientID: "ci-bot", Username: "ci-bot", Password: "service-secret-0123456789"})
	list, _ := topics.API("campaign.list")
	b, _ := schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "list", Key: nk.Token})
	rb, err := svc.(broker.Requester).Request(ctx, list, b)
	var rep schemas.CampaignReply
	if err != nil || schemas.Decode(rb, &rep) != nil || !rep.OK {
		t.Errorf("service campaign.list over NATS: %+v, %v", rep, err)
	}
	// The service account is not a publisher's.
	_, err = runFirmcast(t, "serve", "--nats", ns.URL(), "--credentials", creds, "--backend-user", "ci-bot", "--root", root,
		"--http-listen", "127.0.0.1:0", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "ci-bot") {
		t.Errorf("serve with the service account as its own: %v, want an error naming it", err)
	}
	cancel()
	for i, d := range dones {
		if err := <-d; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("replica %d: %v", i+1, err)
		}
	}
}

// waitHealthy waits until base/healthz answers 200, failing when serve
// exits first or 20s pass.
func waitHealthy(t *testing.T, base string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered /healthz", base)
		}
	}
}
