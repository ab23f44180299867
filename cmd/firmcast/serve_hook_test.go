package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// TestServeBrokerHook runs `serve --broker --nats --broker-hook-listen`
// with the hook secret from the environment, as compose.yaml's emqx
// profile does, and asks the hook what EMQX would: a device registered
// through the API after serve started may connect and publish its
// report, not read another device's notice; the backend account may
// connect; once the device is removed through the API it may do neither.
func TestServeBrokerHook(t *testing.T) {
	const hookSecret = "serve-hook-secret-0123456789"
	t.Setenv("FIRMCAST_BROKER_HOOK_SECRET", hookSecret)
	mq := testutil.StartMochi(t, broker.MQTTServerConfig{})
	ns := testutil.StartNATS(t, broker.NATSServerConfig{})
	creds := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(creds, []byte("backend pub-1 pub-1-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, hookPort := testutil.FreePort(t), testutil.FreePort(t)
	root := "fchook" + randomSuffix(t)
	const key = "fk-hook-test-key-0123456789abcdef"
	cl, stop := startServe(t, port, key, "--broker", mq.URL(), "--nats", ns.URL(), "--http-listen", "127.0.0.1:"+strconv.Itoa(port),
		"--credentials", creds, "--backend-user", "pub-1", "--root", root,
		"--broker-hook-listen", "127.0.0.1:"+strconv.Itoa(hookPort), "--api-key", key, "--data-dir", t.TempDir(), "--log-level", "error")
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	ctx := context.Background()
	const dev, secret = "hook-dev-1", "4f0c9a7e2b1d8c3a6e5f0b9d2c7a1e4f8b3d6c0a"
	if _, err := cl.AddDevice(ctx, publisher.NewDevice{ID: dev, Class: "cls", Secret: secret}); err != nil {
		t.Fatal(err)
	}
	topics := schemas.MustTopics(root)
	report, _ := topics.Report(dev)
	other, _ := topics.Notice("hook-dev-2")
	hook := "http://127.0.0.1:" + strconv.Itoa(hookPort)
	ask := func(path string, body map[string]string) string {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hook+path, strings.NewReader(string(b)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+hookSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct{ Result string }
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&res) != nil {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		return res.Result
	}
	connect := func(user, pw string) string {
		return ask(broker.HookAuthnPath, map[string]string{"clientid": user, "username": user, "password": pw, "peerhost": "192.0.2.9"})
	}
	may := func(user, action, topic string) string {
		return ask(broker.HookAuthzPath, map[string]string{"clientid": user, "username": user, "peerhost": "192.0.2.9",
			"topic": topic, "action": action, "qos": "1", "retain": "false"})
	}
	for _, c := range []struct{ name, got, want string }{
		{"device connects", connect(dev, secret), "allow"},
		{"backend connects", connect("pub-1", "pub-1-secret-0123456789"), "allow"},
		{"wrong secret", connect(dev, "nope"), "deny"},
		{"device publishes its report", may(dev, "publish", report.MQTT), "allow"},
		{"device reads another's notice", may(dev, "subscribe", other.MQTT), "deny"},
		{"backend shared subscription", may("pub-1", "subscribe", "$share/firmcast-publishers/"+topics.ReportsAll().MQTT), "allow"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	if err := cl.RemoveDevice(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if r := connect(dev, secret); r != "deny" {
		t.Errorf("removed device connects: %q", r)
	}
	if r := may(dev, "publish", report.MQTT); r != "deny" {
		t.Errorf("removed device publishes: %q", r)
	}
	// Without the secret the hook answers nothing.
	resp, err := http.Post(hook+broker.HookAuthnPath, "application/json", strings.NewReader(`{"username":"pub-1","password":"pub-1-secret-0123456789"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without the hook secret: status %d", resp.StatusCode)
	}
}
