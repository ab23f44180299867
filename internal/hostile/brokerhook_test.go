package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestAccessMatrixBrokerHook states the access matrix (matrix, the MQTT
// cells) through the broker auth hook an external EMQX cluster asks
// (broker.HTTPHook, `firmcast serve --broker-hook-listen`), as `serve`
// runs it: devices A and B registered through the publisher's registry
// (not the credentials), the other accounts from the credentials. Every
// decision must be the matrix's and the embedded brokers' own
// (broker.Policy.Allow for the same identity); the backend's shared
// subscriptions are allowed and nobody else's; a removed device is
// refused from then on. There is no EMQX here: the requests are the
// bodies EMQX 5 renders from compose.yaml's emqx.conf templates.
func TestAccessMatrixBrokerHook(t *testing.T) {
	const hookSecret = "hostile-hook-secret-0123456789"
	secretA, secretB := "5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f", "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
	topics := testutil.UniqueTopics(t)
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	var accts []broker.Account
	for _, a := range accAccounts() {
		if a.Role != broker.RoleDevice {
			accts = append(accts, a)
		}
	}
	pc := publisher.Config{Signer: publisher.SUITSigner(signer), VendorID: bytes.Repeat([]byte{1}, 16), ClassID: bytes.Repeat([]byte{2}, 16), Logger: quietLogger()}
	st := stacktest.Start(t, stack.Config{Topics: topics, NoMQTT: true, Accounts: accts, Backend: accts[0], Publisher: pc,
		BrokerHookListen: "127.0.0.1:0", BrokerHookSecret: hookSecret, Logger: quietLogger()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for dev, secret := range map[string]string{accDevA: secretA, accDevB: secretB} {
		if err := st.RegisterDevice(ctx, dev, accClass, secret); err != nil {
			t.Fatal(err)
		}
	}
	call := func(path, secret string, body map[string]string) (int, string) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, st.HookURL+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var res struct {
			Result string `json:"result"`
		}
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(raw, &res); err != nil {
				t.Fatalf("%s: %q: %v", path, raw, err)
			}
		}
		return resp.StatusCode, res.Result
	}
	connect := func(user, secret string) string {
		t.Helper()
		_, r := call(broker.HookAuthnPath, hookSecret, map[string]string{"clientid": user, "username": user, "password": secret, "peerhost": "192.0.2.1"})
		return r
	}
	may := func(user, action, topic string) string {
		t.Helper()
		_, r := call(broker.HookAuthzPath, hookSecret, map[string]string{"clientid": user, "username": user, "peerhost": "192.0.2.1",
			"topic": topic, "action": action, "qos": "1", "retain": "false"})
		return r
	}
	total := 0
	// Who may connect at all (the matrix's refused rows, MQTT).
	for _, c := range []struct{ name, user, secret string }{
		{"anonymous", "", ""},
		{"wrong secret", accDevA, "not-the-secret-0123"},
		{"unknown user", "mallory", secretA},
		{"device secret for the backend", backendUser, secretA},
		{"service secret for the backend", backendUser, accSvcSecret},
		{"service on MQTT", accSvc, accSvcSecret},
	} {
		total++
		if r := connect(c.user, c.secret); r != "deny" {
			t.Errorf("%s: %q, want deny", c.name, r)
		}
	}
	if status, _ := call(broker.HookAuthnPath, "", map[string]string{"clientid": accDevA, "username": accDevA, "password": secretA}); status != http.StatusUnauthorized {
		t.Errorf("without the hook secret: status %d, want 401", status)
	}
	principals := map[string]struct {
		user, secret string
		id           broker.Identity
	}{
		"backend": {backendUser, backendSecret, broker.Identity{Username: backendUser, Role: broker.RoleBackend}},
		"A":       {accDevA, secretA, broker.Identity{Username: accDevA, Role: broker.RoleDevice, Device: accDevA, Class: accClass}},
		"B":       {accDevB, secretB, broker.Identity{Username: accDevB, Role: broker.RoleDevice, Device: accDevB, Class: accClass}},
	}
	for name, p := range principals {
		total++
		if r := connect(p.user, p.secret); r != "allow" {
			t.Errorf("%s may not connect: %q", name, r)
		}
	}
	// The cells, and the backend's shared subscriptions.
	policy := broker.Policy{Topics: topics}
	const share = "$share/firmcast-publishers/"
	// row is a cell on an MQTT topic name or filter; "none" is nobody,
	// not even the backend.
	type row struct{ name, topic, pubBy, subBy string }
	var rows []row
	for _, c := range matrix(topics, false) {
		rows = append(rows, row{c.name, c.topic.MQTT, c.pubBy, c.subBy})
	}
	rows = append(rows,
		row{"shared reports", share + topics.ReportsAll().MQTT, "none", ""},
		row{"shared chunk requests", share + topics.ChunkRequestsAll().MQTT, "none", ""},
		row{"all reports", topics.ReportsAll().MQTT, "", ""},
		row{"everything", "#", "none", "none"},
	)
	for _, c := range rows {
		for name, p := range principals {
			for _, action := range []string{"publish", "subscribe"} {
				list := c.subBy
				if action == "publish" {
					list = c.pubBy
				}
				want := list != "none" && allowed(list, name)
				embedded := policy.Allow(p.id, c.topic, action == "publish")
				got := may(p.user, action, c.topic)
				total++
				if (got == "allow") != want || embedded != want {
					t.Errorf("%s: %s %s %s: hook %q, embedded policy %v, matrix %v", c.name, name, action, c.topic, got, embedded, want)
				}
			}
		}
	}
	// A removed device is refused at once: connect and every check.
	if err := st.Pub.RemoveDevice(ctx, st.Admin, accDevA); err != nil {
		t.Fatal(err)
	}
	report, _ := topics.Report(accDevA)
	total += 2
	if r := connect(accDevA, secretA); r != "deny" {
		t.Errorf("removed device connects: %q", r)
	}
	if r := may(accDevA, "publish", report.MQTT); r != "deny" {
		t.Errorf("removed device publishes its report: %q", r)
	}
	t.Logf("broker hook: %d cells checked", total)
}
