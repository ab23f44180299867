package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

const hookSecret = "hook-secret-0123456789abcdef"

var quietHookLogger = slog.New(slog.DiscardHandler)

// The request bodies below are the JSON EMQX 5 renders from the body
// templates of compose.yaml's emqx.conf: every placeholder (${clientid},
// ${username}, ${password}, ${peerhost}, ${topic}, ${action}, ${qos},
// ${retain}) becomes a JSON string.

func authnBody(clientid, user, password string) string {
	b, _ := json.Marshal(map[string]string{"clientid": clientid, "username": user, "password": password, "peerhost": "10.0.0.7"})
	return string(b)
}

func authzBody(clientid, user, action, topic, qos, retain string) string {
	b, _ := json.Marshal(map[string]string{"clientid": clientid, "username": user, "peerhost": "10.0.0.7",
		"topic": topic, "action": action, "qos": qos, "retain": retain})
	return string(b)
}

// fakeClock is an injected clock for the failure window.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newHook(t testing.TB, topics schemas.Topics, store *broker.CredentialStore, clk *fakeClock) *httptest.Server {
	t.Helper()
	h, err := broker.NewHTTPHook(broker.HookConfig{Auth: store, Lookup: store, Policy: broker.Policy{Topics: topics},
		Secret: hookSecret, Now: clk.Now, Logger: quietHookLogger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// callHook posts body to path with the given bearer secret (empty: no
// Authorization header) and returns the status and decoded result.
func callHook(t *testing.T, url, path, secret, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if resp.StatusCode == http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("content type %q, EMQX wants application/json", ct)
		}
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("answer %q: %v", b, err)
		}
	}
	return resp.StatusCode, out
}

func TestHTTPHook(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	must := func(tp schemas.Topic, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return tp.MQTT
	}
	accts := append(aclAccounts(), broker.Account{Identity: broker.Identity{Username: "svc", Role: broker.RoleService}, Secret: "svc-secret-0123456789"})
	store := testutil.CredentialStore(t, accts)
	srv := newHook(t, topics, store, &fakeClock{now: time.Unix(1e9, 0)})
	root := topics.Root()
	shared := "$share/firmcast-publishers/"
	for _, tc := range []struct {
		name, path, secret, body string
		status                   int
		result                   string // "" when status is not 200
	}{
		// Authentication (a CONNECT).
		{"device, right secret", broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", dev1Secret), 200, "allow"},
		{"backend, right secret", broker.HookAuthnPath, hookSecret, authnBody(backendUser, backendUser, backendSecret), 200, "allow"},
		{"device, wrong secret", broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", dev2Secret), 200, "deny"},
		{"device, empty secret", broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", ""), 200, "deny"},
		{"unknown user", broker.HookAuthnPath, hookSecret, authnBody("mallory", "mallory", dev1Secret), 200, "deny"},
		{"anonymous", broker.HookAuthnPath, hookSecret, authnBody("x", "", ""), 200, "deny"},
		{"device secret for the backend", broker.HookAuthnPath, hookSecret, authnBody(backendUser, backendUser, dev1Secret), 200, "deny"},
		{"service on MQTT", broker.HookAuthnPath, hookSecret, authnBody("svc", "svc", "svc-secret-0123456789"), 200, "deny"},
		{"device under another client id", broker.HookAuthnPath, hookSecret, authnBody("dev2", "dev1", dev1Secret), 200, "deny"},
		{"device without client id", broker.HookAuthnPath, hookSecret, `{"username":"dev1","password":"` + dev1Secret + `"}`, 200, "deny"},
		// The hook's own secret.
		{"authn without hook secret", broker.HookAuthnPath, "", authnBody("dev1", "dev1", dev1Secret), 401, ""},
		{"authn with a wrong hook secret", broker.HookAuthnPath, "hook-secret-0123456789abcdeX", authnBody("dev1", "dev1", dev1Secret), 401, ""},
		{"authz without hook secret", broker.HookAuthzPath, "", authzBody("dev1", "dev1", "publish", must(topics.Report("dev1")), "1", "false"), 401, ""},
		{"bad body", broker.HookAuthzPath, hookSecret, `{"username":`, 400, ""},
		{"oversized body", broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", strings.Repeat("x", 9<<10)), 400, ""},
		{"unknown path", "/v1/broker/other", hookSecret, authnBody("dev1", "dev1", dev1Secret), 404, ""},
		// Authorization: a device's own topics.
		{"device publishes its report", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "publish", must(topics.Report("dev1")), "1", "false"), 200, "allow"},
		{"device publishes its chunk requests", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "publish", must(topics.ChunkRequestsFrom("dev1")), "0", "false"), 200, "allow"},
		{"device reads its notice", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.Notice("dev1")), "1", "false"), 200, "allow"},
		{"device reads its chunk replies", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.ChunkReply("dev1")), "0", "false"), 200, "allow"},
		{"device reads its class", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.Announce("sensor")), "1", "false"), 200, "allow"},
		{"device reads image chunks", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.Chunks(imageDigest)), "0", "false"), 200, "allow"},
		// Another device's, and the backend's.
		{"device publishes another's report", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "publish", must(topics.Report("dev2")), "1", "false"), 200, "deny"},
		{"device reads another's notice", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.Notice("dev2")), "1", "false"), 200, "deny"},
		{"device reads another class", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", must(topics.Announce("other")), "1", "false"), 200, "deny"},
		{"device publishes its own notice, retained", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "publish", must(topics.Notice("dev1")), "1", "true"), 200, "deny"},
		{"device reads every report", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", root+"/v1/dev/+/report", "1", "false"), 200, "deny"},
		{"device reads everything", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", "#", "0", "false"), 200, "deny"},
		{"device reads $SYS", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", "$SYS/#", "0", "false"), 200, "deny"},
		{"device joins the backend's shared subscription", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "subscribe", shared+root+"/v1/dev/+/report", "1", "false"), 200, "deny"},
		{"device acts under another client id", broker.HookAuthzPath, hookSecret, authzBody("dev2", "dev1", "publish", must(topics.Report("dev1")), "1", "false"), 200, "deny"},
		{"unknown action", broker.HookAuthzPath, hookSecret, authzBody("dev1", "dev1", "all", must(topics.Report("dev1")), "1", "false"), 200, "deny"},
		{"unknown user", broker.HookAuthzPath, hookSecret, authzBody("mallory", "mallory", "subscribe", must(topics.Notice("dev1")), "1", "false"), 200, "deny"},
		{"service", broker.HookAuthzPath, hookSecret, authzBody("svc", "svc", "subscribe", must(topics.Notice("dev1")), "1", "false"), 200, "deny"},
		// The backend: anything under the root, shared subscriptions too.
		{"backend shared subscription to reports", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "subscribe", shared+root+"/v1/dev/+/report", "1", "false"), 200, "allow"},
		{"backend shared subscription to chunk requests", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "subscribe", shared+root+"/v1/dev/+/req", "0", "false"), 200, "allow"},
		{"backend publishes a retained notice", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "publish", must(topics.Notice("dev1")), "1", "true"), 200, "allow"},
		{"backend publishes to a $share name", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "publish", shared+must(topics.Notice("dev1")), "1", "false"), 200, "deny"},
		{"backend outside the root", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "subscribe", "other-root/#", "1", "false"), 200, "deny"},
		{"backend shared subscription outside the root", broker.HookAuthzPath, hookSecret, authzBody(backendUser, backendUser, "subscribe", shared+"#", "1", "false"), 200, "deny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, res := callHook(t, srv.URL, tc.path, tc.secret, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d", status, tc.status)
			}
			if tc.result == "" {
				return
			}
			if res["result"] != tc.result {
				t.Errorf("result %v, want %s", res, tc.result)
			}
			if su, ok := res["is_superuser"]; ok && su != false {
				t.Errorf("is_superuser %v", su)
			}
			if tc.path == broker.HookAuthnPath && tc.result == "allow" && res["is_superuser"] != false {
				t.Errorf("an allowed CONNECT without is_superuser=false: %v", res)
			}
		})
	}
	// A method other than POST, with the secret.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+broker.HookAuthzPath, nil)
	req.Header.Set("Authorization", "Bearer "+hookSecret)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// TestHTTPHookRevocation: authorization asks for the identity at every
// (uncached) check, so a removed device is denied from then on.
func TestHTTPHookRevocation(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	store := testutil.CredentialStore(t, aclAccounts())
	srv := newHook(t, topics, store, &fakeClock{now: time.Unix(1e9, 0)})
	report, _ := topics.Report("dev1")
	body := authzBody("dev1", "dev1", "publish", report.MQTT, "1", "false")
	if _, res := callHook(t, srv.URL, broker.HookAuthzPath, hookSecret, body); res["result"] != "allow" {
		t.Fatalf("before removal: %v", res)
	}
	store.Remove("dev1")
	if _, res := callHook(t, srv.URL, broker.HookAuthzPath, hookSecret, body); res["result"] != "deny" {
		t.Errorf("after removal: %v", res)
	}
	if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", dev1Secret)); res["result"] != "deny" {
		t.Errorf("connect after removal: %v", res)
	}
}

// TestHTTPHookFailureBound: past MaxFailures failed CONNECTs of one user
// name in a window, even the right secret is refused unchecked until the
// window ends; other user names are not affected.
func TestHTTPHookFailureBound(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	store := testutil.CredentialStore(t, aclAccounts())
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	srv := newHook(t, topics, store, clk)
	for i := 0; i < broker.DefaultHookMaxFailures; i++ {
		if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", "guess")); res["result"] != "deny" {
			t.Fatalf("guess %d: %v", i, res)
		}
	}
	if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", dev1Secret)); res["result"] != "deny" {
		t.Errorf("right secret past the bound: %v, want deny", res)
	}
	if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody("dev2", "dev2", dev2Secret)); res["result"] != "allow" {
		t.Errorf("another device: %v", res)
	}
	clk.Add(broker.DefaultHookFailureWindow)
	if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody("dev1", "dev1", dev1Secret)); res["result"] != "allow" {
		t.Errorf("right secret after the window: %v", res)
	}
}

// TestHTTPHookNoDecision: when the identity store fails (not a refusal),
// the hook answers 503, which EMQX takes as "ignore": a refusal when
// nothing follows the hook, never an allow.
func TestHTTPHookNoDecision(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	h, err := broker.NewHTTPHook(broker.HookConfig{Auth: failingStore{}, Lookup: failingStore{}, Policy: broker.Policy{Topics: topics},
		Secret: hookSecret, Logger: quietHookLogger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	report, _ := topics.Report("dev1")
	for path, body := range map[string]string{
		broker.HookAuthnPath: authnBody("dev1", "dev1", dev1Secret),
		broker.HookAuthzPath: authzBody("dev1", "dev1", "publish", report.MQTT, "1", "false"),
	} {
		if status, _ := callHook(t, srv.URL, path, hookSecret, body); status != http.StatusServiceUnavailable {
			t.Errorf("%s: status %d, want 503", path, status)
		}
	}
}

type failingStore struct{}

var errStoreDown = errors.New("registry unreachable")

func (failingStore) Authenticate(context.Context, string, string) (broker.Identity, error) {
	return broker.Identity{}, errStoreDown
}

func (failingStore) LookupIdentity(context.Context, string) (broker.Identity, error) {
	return broker.Identity{}, errStoreDown
}

func TestNewHTTPHookRejects(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	store := broker.NewCredentialStore()
	for name, cfg := range map[string]broker.HookConfig{
		"no auth":      {Lookup: store, Policy: broker.Policy{Topics: topics}, Secret: hookSecret},
		"no lookup":    {Auth: store, Policy: broker.Policy{Topics: topics}, Secret: hookSecret},
		"no root":      {Auth: store, Lookup: store, Secret: hookSecret},
		"short secret": {Auth: store, Lookup: store, Policy: broker.Policy{Topics: topics}, Secret: "short"},
	} {
		if _, err := broker.NewHTTPHook(cfg); !errors.Is(err, broker.ErrBadServerConfig) {
			t.Errorf("%s: %v, want ErrBadServerConfig", name, err)
		}
	}
}

// TestHTTPHookFailureTableBounded: failures of many user names never
// hold more than MaxTracked entries.
func TestHTTPHookFailureTableBounded(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	store := testutil.CredentialStore(t, aclAccounts())
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	h, err := broker.NewHTTPHook(broker.HookConfig{Auth: store, Lookup: store, Policy: broker.Policy{Topics: topics},
		Secret: hookSecret, MaxTracked: 5, Now: clk.Now, Logger: quietHookLogger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for i := 0; i < 40; i++ {
		user := "guesser-" + strconv.Itoa(i)
		if _, res := callHook(t, srv.URL, broker.HookAuthnPath, hookSecret, authnBody(user, user, "guess")); res["result"] != "deny" {
			t.Fatalf("%s: %v", user, res)
		}
		if n := h.Tracked(); n > 5 {
			t.Fatalf("after %d user names: %d tracked, bound 5", i+1, n)
		}
		if i == 20 {
			clk.Add(broker.DefaultHookFailureWindow) // the expired ones go first
		}
	}
}

// FuzzHTTPHook throws arbitrary bodies at both paths: the hook answers
// 200 or 400 and never panics, and an "allow" is always one the policy
// gives the named user's identity (authorization) or the right secret of
// a non-service account whose client id is bound (authentication).
func FuzzHTTPHook(f *testing.F) {
	topics := schemas.MustTopics("fuzzhook")
	report, _ := topics.Report("dev1")
	f.Add(true, authnBody("dev1", "dev1", dev1Secret))
	f.Add(true, authnBody("dev2", "dev1", dev1Secret))
	f.Add(false, authzBody("dev1", "dev1", "publish", report.MQTT, "1", "false"))
	f.Add(false, authzBody(backendUser, backendUser, "subscribe", "$share/g/fuzzhook/v1/dev/+/report", "1", "false"))
	f.Add(false, `{"username":"dev1","clientid":"dev1","topic":"#","action":"subscribe","extra":[1,2,{}]}`)
	f.Add(true, `{"username":1}`)
	store := testutil.CredentialStore(f, aclAccounts())
	h, err := broker.NewHTTPHook(broker.HookConfig{Auth: store, Lookup: store, Policy: broker.Policy{Topics: topics},
		Secret: hookSecret, MaxFailures: 1 << 30, Logger: quietHookLogger})
	if err != nil {
		f.Fatal(err)
	}
	secrets := map[string]string{}
	for _, a := range aclAccounts() {
		secrets[a.Username] = a.Secret
	}
	f.Fuzz(func(t *testing.T, authn bool, body string) {
		path := broker.HookAuthzPath
		if authn {
			path = broker.HookAuthnPath
		}
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hookSecret)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusBadRequest {
			return
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
		var res struct{ Result string }
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || (res.Result != "allow" && res.Result != "deny") {
			t.Fatalf("answer %q: %v", rec.Body.Bytes(), err)
		}
		if res.Result != "allow" {
			return
		}
		// The request as the hook's decoder reads it (first JSON value,
		// field names matched as encoding/json does).
		var in struct{ ClientID, Username, Password, Topic, Action string }
		if err := json.NewDecoder(strings.NewReader(body)).Decode(&in); err != nil {
			t.Fatalf("allow for a body that does not decode: %v", err)
		}
		id, err := store.LookupIdentity(context.Background(), in.Username)
		if err != nil {
			t.Fatalf("allow for unknown user %q", in.Username)
		}
		if id.Role == broker.RoleDevice && in.ClientID != id.Device {
			t.Fatalf("allow for device %q under client id %q", id.Device, in.ClientID)
		}
		if authn {
			if in.Password != secrets[in.Username] || id.Role == broker.RoleService {
				t.Fatalf("allowed connect of %q", in.Username)
			}
			return
		}
		if !(broker.Policy{Topics: topics}).Allow(id, in.Topic, in.Action == "publish") || (in.Action != "publish" && in.Action != "subscribe") {
			t.Fatalf("allowed %+v for %+v", in, id)
		}
	})
}
