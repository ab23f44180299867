package publisher

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

type apiFixture struct {
	srv      *httptest.Server
	p        *Publisher
	image    string
	campaign string
	revoked  string
	read     string
	spare    string // an image no campaign uses
	env      string // base64 envelope for the image
	hub      *testutil.MemHub
}

func newAPIFixture(t *testing.T) *apiFixture {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	who := e.who(p)
	img := setupFleet(t, e, p, 3)
	c, err := p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Devices: []string{devName(0)}})
	if err != nil {
		t.Fatal(err)
	}
	revoked, k, err := p.CreateAPIKey(ctx, who, "old", []Scope{ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RevokeAPIKey(ctx, who, k.ID); err != nil {
		t.Fatal(err)
	}
	read, _, err := p.CreateAPIKey(ctx, who, "reader", []Scope{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	spare, _, err := p.UploadImage(ctx, who, "spare", bytes.NewReader(randomImage(t, 1500)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	return &apiFixture{srv: srv, p: p, image: hex.EncodeToString(img), campaign: c.ID, revoked: revoked, read: read, spare: spare.Digest,
		env: base64.StdEncoding.EncodeToString(testEnvelope(t, img)), hub: e.hub}
}

func (f *apiFixture) do(t *testing.T, method, path, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

type endpoint struct {
	method, path, body string
	scope              Scope
	json               bool // takes a JSON object body
}

func (f *apiFixture) endpoints() []endpoint {
	return []endpoint{
		{"POST", "/api/v1/images?name=x", "firmware-bytes", ScopeCampaign, false},
		{"GET", "/api/v1/images", "", ScopeRead, false},
		{"GET", "/api/v1/images/" + f.image, "", ScopeRead, false},
		{"POST", "/api/v1/devices", `{"id":"new-dev","class":"sensor"}`, ScopeAdmin, true},
		{"GET", "/api/v1/devices", "", ScopeRead, false},
		{"GET", "/api/v1/devices/" + devName(0), "", ScopeRead, false},
		{"DELETE", "/api/v1/devices/" + devName(2), "", ScopeAdmin, false},
		{"POST", "/api/v1/groups/g1/devices", `{"devices":["` + devName(1) + `"]}`, ScopeAdmin, true},
		{"DELETE", "/api/v1/groups/g1/devices", `{"devices":["` + devName(1) + `"]}`, ScopeAdmin, true},
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","envelope":"` + f.env + `","devices":["` + devName(1) + `"],"phases":[50,100]}`, ScopeCampaign, true},
		{"GET", "/api/v1/campaigns", "", ScopeRead, false},
		{"GET", "/api/v1/campaigns/" + f.campaign, "", ScopeRead, false},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/start", "", ScopeCampaign, false},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/pause", "", ScopeCampaign, false},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/resume", "", ScopeCampaign, false},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/abort", "", ScopeCampaign, false},
		{"POST", "/api/v1/apikeys", `{"name":"ci","scopes":["read"]}`, ScopeAdmin, true},
		{"GET", "/api/v1/apikeys", "", ScopeAdmin, false},
		{"DELETE", "/api/v1/apikeys/bootstrap-none", "", ScopeAdmin, false},
		{"GET", "/api/v1/audit?limit=5", "", ScopeAdmin, false},
		{"GET", "/api/v1/campaigns/" + f.campaign + "/devices?state=queued&limit=10", "", ScopeRead, false},
		{"GET", "/api/v1/campaigns/" + f.campaign + "/failures", "", ScopeRead, false},
		{"GET", "/api/v1/devices/" + devName(0) + "/history", "", ScopeRead, false},
		{"GET", "/api/v1/fleet", "", ScopeRead, false},
		{"DELETE", "/api/v1/images/" + f.spare, "", ScopeCampaign, false},
	}
}

func TestAPIAuth(t *testing.T) {
	f := newAPIFixture(t)
	for _, ep := range f.endpoints() {
		name := ep.method + " " + ep.path
		t.Run(name, func(t *testing.T) {
			for _, c := range []struct{ what, key string }{{"no key", ""}, {"revoked key", f.revoked}, {"unknown key", "fck_0123456789ab_nope"}} {
				code, body := f.do(t, ep.method, ep.path, c.key, ep.body)
				if code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
					t.Errorf("%s: %d %s, want 401 with an error message", c.what, code, body)
				}
			}
			code, body := f.do(t, ep.method, ep.path, f.read, ep.body)
			if ep.scope != ScopeRead && code != http.StatusForbidden {
				t.Errorf("read-only key: %d %s, want 403", code, body)
			}
			if ep.scope == ScopeRead && code != http.StatusOK {
				t.Errorf("read-only key: %d %s, want 200", code, body)
			}
			code, body = f.do(t, ep.method, ep.path, testAdminKey, ep.body)
			switch {
			case code >= 500:
				t.Errorf("valid key: %d %s", code, body)
			case code >= 400 && ep.path != "/api/v1/apikeys/bootstrap-none":
				t.Errorf("valid key: %d %s, want success", code, body)
			case code == http.StatusNotFound && !strings.Contains(body, "not found"):
				t.Errorf("valid key: %d %s, want a message", code, body)
			}
		})
	}
}

func TestAPIBadBodies(t *testing.T) {
	f := newAPIFixture(t)
	bad := []struct{ name, body string }{
		{"malformed", `{"id":`},
		{"not an object", `[1,2]`},
		{"unknown field", `{"id":"x","class":"c","bogus":1}`},
		{"trailing data", `{} {}`},
		{"wrong type", `{"id":5}`},
		{"empty", ``},
	}
	for _, ep := range f.endpoints() {
		if !ep.json {
			continue
		}
		for _, b := range bad {
			t.Run(ep.method+" "+ep.path+"/"+b.name, func(t *testing.T) {
				code, body := f.do(t, ep.method, ep.path, testAdminKey, b.body)
				var er ErrorReply
				if code < 400 || code >= 500 || json.Unmarshal([]byte(body), &er) != nil || er.Error == "" {
					t.Errorf("%d %s, want 4xx with a message", code, body)
				}
			})
		}
	}
	// Semantically bad input is a 4xx too.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/v1/devices", `{"id":"a.b","class":"c"}`},
		{"POST", "/api/v1/devices", `{"id":"` + devName(0) + `","class":"c"}`},
		{"POST", "/api/v1/campaigns", `{"image":"zz","devices":["x"]}`},
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","devices":["nobody"],"envelope":"AQ=="}`},
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","class":"sensor","phases":[50,10],"envelope":"AQ=="}`},
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","class":"sensor"}`},                                                                                           // no signer
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","class":"sensor","envelope":"AQID"}`},                                                                         // not SUIT
		{"POST", "/api/v1/campaigns", `{"image":"` + f.image + `","class":"sensor","envelope":"` + base64.StdEncoding.EncodeToString(testEnvelope(t, make([]byte, 32))) + `"}`}, // another image
		{"POST", "/api/v1/campaigns", `{"image":"` + strings.Repeat("0", 64) + `","class":"sensor"}`},
		{"POST", "/api/v1/apikeys", `{"name":"x","scopes":["root"]}`},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/explode", ``},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/resume", ``},
		{"POST", "/api/v1/campaigns/" + f.campaign + "/start", `{"x":1}`},
		{"GET", "/api/v1/images/nothex", ``},
		{"GET", "/api/v1/audit?limit=-1", ``},
		{"GET", "/api/v1/nothing", ``},
		{"POST", "/api/v1/images", ``},
	} {
		code, body := f.do(t, c.method, c.path, testAdminKey, c.body)
		if code < 400 || code >= 500 || !strings.Contains(body, "error") {
			t.Errorf("%s %s %q: %d %s, want 4xx with a message", c.method, c.path, c.body, code, body)
		}
	}
}

func TestImageDownloadRange(t *testing.T) {
	f := newAPIFixture(t)
	data := randomImage(t, 3000)
	code, body := f.do(t, "POST", "/api/v1/images?name=r", testAdminKey, string(data))
	if code != http.StatusCreated {
		t.Fatalf("upload: %d %s", code, body)
	}
	var img Image
	json.Unmarshal([]byte(body), &img)
	if img.Size != 3000 || img.Chunks != 3 {
		t.Fatalf("image %+v, want 3000 bytes in 3 chunks", img)
	}
	if code, _ := f.do(t, "POST", "/api/v1/images?name=r", testAdminKey, string(data)); code != http.StatusOK {
		t.Errorf("re-upload: %d, want 200 (already stored)", code)
	}
	req, _ := http.NewRequest("GET", f.srv.URL+"/images/"+img.Digest, nil)
	req.Header.Set("Range", "bytes=1000-1499")
	req.Header.Set("Authorization", "Bearer "+f.read)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[1000:1500]) {
		t.Fatalf("range: %d, %d bytes, want 206 with bytes 1000..1499", res.StatusCode, len(got))
	}
	code, _ = f.do(t, "GET", "/images/"+strings.Repeat("ab", 32), f.read, "")
	if code != http.StatusNotFound {
		t.Errorf("unknown image: %d, want 404", code)
	}
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, _ := f.do(t, "GET", path, "", ""); code != http.StatusOK {
			t.Errorf("%s: %d", path, code)
		}
	}
}

func TestNATSAPI(t *testing.T) {
	f := newAPIFixture(t)
	cl := f.hub.Conn()
	topics := f.p.cfg.Topics
	call := func(op string, cmd schemas.CampaignCommand) *schemas.CampaignReply {
		t.Helper()
		cmd.V, cmd.Op = schemas.Version, op
		b, err := schemas.Encode(&cmd)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		tp, _ := topics.API("campaign." + op)
		rb, err := cl.Request(context.Background(), tp, b)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		var rep schemas.CampaignReply
		if err := schemas.Decode(rb, &rep); err != nil {
			t.Fatalf("%s reply: %v", op, err)
		}
		return &rep
	}
	if rep := call("list", schemas.CampaignCommand{}); rep.OK || rep.Code != schemas.CodeUnauthorized {
		t.Errorf("list without key: %+v", rep)
	}
	if rep := call("list", schemas.CampaignCommand{Key: f.revoked}); rep.OK || rep.Code != schemas.CodeUnauthorized {
		t.Errorf("list with revoked key: %+v", rep)
	}
	if rep := call("start", schemas.CampaignCommand{Key: f.read, Campaign: f.campaign}); rep.OK || rep.Code != schemas.CodeUnauthorized {
		t.Errorf("start with read key: %+v", rep)
	}
	if rep := call("list", schemas.CampaignCommand{Key: f.read}); !rep.OK || len(rep.List) != 1 {
		t.Errorf("list: %+v", rep)
	}
	img, _ := hex.DecodeString(f.image)
	rep := call("create", schemas.CampaignCommand{Key: testAdminKey, Spec: &schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Devices: []string{devName(1)}, Start: true}})
	if !rep.OK || rep.Status == nil || rep.Status.State != CampaignRunning {
		t.Fatalf("create: %+v", rep)
	}
	id := rep.Status.ID
	for _, c := range []struct {
		op    string
		ok    bool
		state string
	}{{"pause", true, CampaignPaused}, {"pause", false, ""}, {"resume", true, CampaignRunning}, {"status", true, CampaignRunning}, {"abort", true, CampaignAborted}, {"start", false, ""}} {
		rep := call(c.op, schemas.CampaignCommand{Key: testAdminKey, Campaign: id})
		if rep.OK != c.ok || (c.ok && rep.Status.State != c.state) || (!c.ok && (rep.Code != schemas.CodeConflict || rep.Error == "")) {
			t.Errorf("%s: %+v, want ok=%v state %q", c.op, rep, c.ok, c.state)
		}
	}
	if rep := call("status", schemas.CampaignCommand{Key: testAdminKey, Campaign: "c-nope"}); rep.OK || rep.Code != schemas.CodeNotFound {
		t.Errorf("status of unknown: %+v", rep)
	}
	// A malformed command gets a reply naming the problem.
	tp, _ := topics.API("campaign.list")
	rb, err := cl.Request(context.Background(), tp, []byte{0xff})
	var r schemas.CampaignReply
	if err != nil || schemas.Decode(rb, &r) != nil || r.OK || r.Code != schemas.CodeMalformed || r.Error == "" {
		t.Errorf("malformed: %+v %v", r, err)
	}
	_ = fmt.Sprint
}
