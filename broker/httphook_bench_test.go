package broker_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// BenchmarkHTTPHook measures one EMQX-shaped request through the broker
// hook over loopback HTTP (keep-alive, one connection, as one connection
// of EMQX's pool), against its peer in the same run: the policy decision
// alone (Policy.Allow), which is what the embedded broker pays. The
// identity store is the in-memory CredentialStore: a registry read (a
// JetStream KV get) comes on top in `serve`.
//
//	go test -run '^$' -bench HTTPHook -count 3 ./broker/
func BenchmarkHTTPHook(b *testing.B) {
	topics := testutil.UniqueTopics(b)
	store := testutil.CredentialStore(b, aclAccounts())
	srv := newHook(b, topics, store, &fakeClock{now: time.Unix(1e9, 0)})
	report, _ := topics.Report("dev1")
	authz := authzBody("dev1", "dev1", "publish", report.MQTT, "1", "false")
	authn := authnBody("dev1", "dev1", dev1Secret)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	post := func(b *testing.B, path, body string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hookSecret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var buf [64]byte
		n, _ := resp.Body.Read(buf[:])
		resp.Body.Close()
		if !strings.Contains(string(buf[:n]), `"allow"`) {
			b.Fatalf("%s: %q", path, buf[:n])
		}
	}
	b.Run("authz", func(b *testing.B) {
		for b.Loop() {
			post(b, broker.HookAuthzPath, authz)
		}
	})
	b.Run("authn", func(b *testing.B) {
		for b.Loop() {
			post(b, broker.HookAuthnPath, authn)
		}
	})
	b.Run("policy-only", func(b *testing.B) {
		p := broker.Policy{Topics: topics}
		id := broker.Identity{Username: "dev1", Role: broker.RoleDevice, Device: "dev1", Class: "sensor"}
		for b.Loop() {
			if !p.Allow(id, report.MQTT, true) {
				b.Fatal("denied")
			}
		}
	})
}
