package publisher

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// FuzzAPIBodies sends arbitrary bodies to every API endpoint with a valid
// admin key: the answer is never a 5xx, and every error carries a message.
func FuzzAPIBodies(f *testing.F) {
	e := newEnv(f)
	p, _ := e.start(nil)
	h := p.Handler()
	fx := &apiFixture{p: p, image: strings.Repeat("ab", 32), campaign: "c-0000000000000000", env: "AQID"}
	eps := fx.endpoints()
	for i, ep := range eps {
		f.Add(uint8(i), []byte(ep.body))
		f.Add(uint8(i), []byte(`{"id":"x","class":"c","bogus":1}`))
		f.Add(uint8(i), []byte(`{"image":"`+fx.image+`","phases":[0,300],"envelope":"!!"}`))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		ep := eps[int(which)%len(eps)]
		req := httptest.NewRequest(ep.method, ep.path, strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+testAdminKey)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", ep.method, ep.path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"error"`) && rec.Code != http.StatusMethodNotAllowed {
			t.Fatalf("%s %s %q: %d without a message: %s", ep.method, ep.path, body, rec.Code, rec.Body)
		}
	})
}

// FuzzCampaignCommand feeds arbitrary bytes to the NATS API's command
// handler: it always produces a valid reply, never an internal error.
func FuzzCampaignCommand(f *testing.F) {
	e := newEnv(f)
	p, _ := e.start(nil)
	topic, _ := p.cfg.Topics.API("campaign.list")
	for _, op := range apiOps {
		b, _ := schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: op, Key: testAdminKey, Campaign: "c-1", Spec: &schemas.CampaignSpec{Image: make([]byte, 32)}})
		f.Add(b)
	}
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		rep := p.command(t.Context(), topic.NATS, b)
		if _, err := schemas.Encode(rep); err != nil {
			t.Fatalf("reply does not encode: %v", err)
		}
		if rep.Code == schemas.CodeInternal {
			t.Fatalf("internal error for %x: %s", b, rep.Error)
		}
	})
}
