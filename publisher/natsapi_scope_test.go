package publisher

import (
	"context"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// TestNATSAPIScopesMatchHTTP: the NATS campaign API authorises each
// operation by API key exactly as the HTTP API authorises the same
// operation: for every op and every kind of key (none, unknown, revoked,
// read, campaign, admin), the NATS request is refused (CodeUnauthorized)
// exactly when the HTTP request is (401 or 403).
func TestNATSAPIScopesMatchHTTP(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	admin, err := f.p.Authenticate(ctx, testAdminKey)
	if err != nil {
		t.Fatal(err)
	}
	campaignKey, _, err := f.p.CreateAPIKey(ctx, admin, "ci", []Scope{ScopeCampaign})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := hex.DecodeString(f.image)
	cl := f.hub.Conn()
	nats := func(op, key string) *schemas.CampaignReply {
		t.Helper()
		cmd := schemas.CampaignCommand{V: schemas.Version, Op: op, Key: key}
		switch op {
		case "create":
			cmd.Spec = &schemas.CampaignSpec{Image: img, Envelope: testEnvelope(t, img), Devices: []string{devName(1)}}
		case "list":
		default:
			cmd.Campaign = f.campaign
		}
		b, err := schemas.Encode(&cmd)
		if err != nil {
			t.Fatal(err)
		}
		tp, _ := f.p.cfg.Topics.API("campaign." + op)
		rb, err := cl.Request(ctx, tp, b)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		var rep schemas.CampaignReply
		if err := schemas.Decode(rb, &rep); err != nil {
			t.Fatalf("%s reply: %v", op, err)
		}
		return &rep
	}
	create := `{"image":"` + f.image + `","envelope":"` + f.env + `","devices":["` + devName(1) + `"]}`
	ops := []struct{ op, method, path, body string }{
		{"create", "POST", "/api/v1/campaigns", create},
		{"list", "GET", "/api/v1/campaigns", ""},
		{"status", "GET", "/api/v1/campaigns/" + f.campaign, ""},
		{"start", "POST", "/api/v1/campaigns/" + f.campaign + "/start", ""},
		{"pause", "POST", "/api/v1/campaigns/" + f.campaign + "/pause", ""},
		{"resume", "POST", "/api/v1/campaigns/" + f.campaign + "/resume", ""},
		{"abort", "POST", "/api/v1/campaigns/" + f.campaign + "/abort", ""},
	}
	if len(ops) != len(apiOps) {
		t.Fatalf("the table covers %d ops, the NATS API serves %d (%v)", len(ops), len(apiOps), apiOps)
	}
	keys := []struct{ name, key string }{
		{"no key", ""}, {"unknown key", "fck_0123456789ab_nope"}, {"revoked key", f.revoked},
		{"read key", f.read}, {"campaign key", campaignKey}, {"admin key", testAdminKey},
	}
	for _, o := range ops {
		for _, k := range keys {
			code, body := f.do(t, o.method, o.path, k.key, o.body)
			httpRefused := code == http.StatusUnauthorized || code == http.StatusForbidden
			rep := nats(o.op, k.key)
			natsRefused := !rep.OK && rep.Code == schemas.CodeUnauthorized
			if httpRefused != natsRefused {
				t.Errorf("%s with %s: HTTP %d %s, NATS %+v: one refuses, the other does not", o.op, k.name, code, body, rep)
			}
			if (k.name == "no key" || k.name == "read key" && o.op == "create") && !natsRefused {
				t.Errorf("%s with %s over NATS: %+v, want refused", o.op, k.name, rep)
			}
		}
	}
}
