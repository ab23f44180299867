package publisher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// putDevState writes a device's campaign state to the campdev bucket, as
// the engine and the report workers do (so the index watch and the
// event stream see it).
func putDevState(t testing.TB, p *Publisher, st DeviceState) {
	t.Helper()
	b, _ := json.Marshal(st)
	if _, err := p.st.campdev.of(st.Device).Put(context.Background(), devKey(st.Campaign, st.Device), b); err != nil {
		t.Fatal(err)
	}
}

func TestCampaignDevicesFilterAndPage(t *testing.T) {
	f := newAPIFixture(t)
	states := []DeviceState{
		{Device: "a1", Phase: 0, State: ds("confirmed")},
		{Device: "a2", Phase: 0, State: ds("failed"), Code: "verify-failed"},
		{Device: "a3", Phase: 1, State: ds("downloading")},
		{Device: "a4", Phase: 1, State: ds("timed-out")},
		{Device: "a5", Phase: 1, State: ds("failed"), Code: "no-space"},
		{Device: "a6", Phase: 1, State: ds("failed"), Code: "no-space"},
	}
	for i, st := range states {
		st.Campaign, st.Updated = f.campaign, time.Unix(int64(i), 0).UTC()
		f.p.idx.putDev(st, uint64(100+i))
	}
	one := 1
	for _, c := range []struct {
		name  string
		f     DeviceFilter
		want  []string
		total int
		next  string
	}{
		{"bucket failed", DeviceFilter{State: "failed"}, []string{"a2", "a4", "a5", "a6"}, 4, ""},
		{"exact state", DeviceFilter{State: "timed-out"}, []string{"a4"}, 1, ""},
		{"phase", DeviceFilter{Phase: &one, State: "failed"}, []string{"a4", "a5", "a6"}, 3, ""},
		{"reason", DeviceFilter{Reason: "no-space"}, []string{"a5", "a6"}, 2, ""},
		{"page 1", DeviceFilter{Limit: 2, State: "failed"}, []string{"a2", "a4"}, 4, "a4"},
		{"page 2", DeviceFilter{Limit: 2, State: "failed", After: "a4"}, []string{"a5", "a6"}, 4, ""},
		{"downloading bucket", DeviceFilter{State: "downloading"}, []string{"a3"}, 1, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			pg, err := f.p.CampaignDevices(context.Background(), f.campaign, c.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range pg.Devices {
				if strings.HasPrefix(d.Device, "a") {
					got = append(got, d.Device)
				}
			}
			if d := cmp.Diff(got, c.want); d != "" || pg.Next != c.next {
				t.Errorf("devices (-got +want):\n%s next %q want %q", d, pg.Next, c.next)
			}
		})
	}
	fails, err := f.p.CampaignFailures(context.Background(), f.campaign)
	if err != nil {
		t.Fatal(err)
	}
	want := []FailureGroup{
		{Reason: "no-space", Count: 2, Devices: []string{"a5", "a6"}},
		{Reason: "timed-out", Count: 1, Devices: []string{"a4"}},
		{Reason: "verify-failed", Count: 1, Devices: []string{"a2"}},
	}
	if d := cmp.Diff(fails, want); d != "" {
		t.Errorf("failures (-got +want):\n%s", d)
	}
	for _, q := range []string{"?limit=0", "?limit=5000", "?phase=x", "?state=a.b"} {
		if code, body := f.do(t, "GET", "/api/v1/campaigns/"+f.campaign+"/devices"+q, f.read, ""); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", q, code, body)
		}
	}
	if code, _ := f.do(t, "GET", "/api/v1/campaigns/c-nothere/devices", f.read, ""); code != http.StatusNotFound {
		t.Errorf("unknown campaign: %d, want 404", code)
	}
}

func TestImagesWithCampaignsAndDelete(t *testing.T) {
	f := newAPIFixture(t)
	var imgs []ImageUse
	code, body := f.do(t, "GET", "/api/v1/images", f.read, "")
	if code != 200 || json.Unmarshal([]byte(body), &imgs) != nil {
		t.Fatalf("images: %d %s", code, body)
	}
	uses := map[string][]string{}
	for _, im := range imgs {
		for _, c := range im.Campaigns {
			uses[im.Digest] = append(uses[im.Digest], c.ID)
		}
	}
	if !slices.Equal(uses[f.image], []string{f.campaign}) || len(uses[f.spare]) != 0 {
		t.Errorf("image uses %v, want %s used by %s only", uses, f.image, f.campaign)
	}
	if code, body := f.do(t, "DELETE", "/api/v1/images/"+f.image, testAdminKey, ""); code != http.StatusConflict || !strings.Contains(body, f.campaign) {
		t.Errorf("delete of a used image: %d %s, want 409 naming the campaign", code, body)
	}
	if code, body := f.do(t, "DELETE", "/api/v1/images/"+f.spare, testAdminKey, ""); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, body)
	}
	if code, _ := f.do(t, "GET", "/api/v1/images/"+f.spare, testAdminKey, ""); code != http.StatusNotFound {
		t.Errorf("deleted image still shown: %d", code)
	}
	if code, _ := f.do(t, "GET", "/images/"+f.spare, testAdminKey, ""); code != http.StatusNotFound {
		t.Errorf("deleted image still served: %d", code)
	}
	if code, _ := f.do(t, "DELETE", "/api/v1/images/"+f.spare, testAdminKey, ""); code != http.StatusNotFound {
		t.Errorf("second delete: %d, want 404", code)
	}
}

func TestFleetAndHistory(t *testing.T) {
	f := newAPIFixture(t)
	// The event stream copies the state bucket's writes as the server
	// sources them: a state replaced within a few milliseconds may be
	// missing from it, so each is awaited here.
	var hist []DeviceState
	for i, s := range []string{"notified", "downloading", "failed"} {
		putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: devName(0), State: ds(s), Counter: uint64(i + 1), Progress: time.Now().UTC()})
		waitFor(t, 10*time.Second, func() string { return "history of " + s }, func() bool {
			h, err := f.p.DeviceHistory(context.Background(), devName(0), 100)
			return err == nil && len(h) > 0 && h[len(h)-1].State.String() == s
		})
	}
	waitFor(t, 10*time.Second, func() string { return fmt.Sprint(hist) }, func() bool {
		var err error
		hist, err = f.p.DeviceHistory(context.Background(), devName(0), 100)
		return err == nil && len(hist) >= 3 && hist[len(hist)-1].State.String() == "failed"
	})
	var got []string
	for _, h := range hist {
		got = append(got, h.State.String())
	}
	if !slices.Equal(got[len(got)-3:], []string{"notified", "downloading", "failed"}) {
		t.Errorf("history %v", got)
	}
	if h, _ := f.p.DeviceHistory(context.Background(), devName(0), 2); len(h) != 2 || h[1].State.String() != "failed" {
		t.Errorf("history limited to 2: %v", h)
	}
	var fl FleetSummary
	code, body := f.do(t, "GET", "/api/v1/fleet", f.read, "")
	if code != 200 || json.Unmarshal([]byte(body), &fl) != nil {
		t.Fatalf("fleet: %d %s", code, body)
	}
	if fl.Devices != 3 || fl.ByClass["sensor"] != 3 || fl.ByGroup["all"] != 3 || fl.Campaigns["created"] != 1 {
		t.Errorf("fleet %+v", fl)
	}
}

// sseEvent is one server-sent event.
type sseEvent struct{ id, kind, data string }

// openEvents opens GET /api/v1/events with key (and Last-Event-ID when
// last is not empty) and returns its events as they come.
func openEvents(t *testing.T, f *apiFixture, key, query, last string) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/api/v1/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		t.Fatalf("events: %d %s", res.StatusCode, b)
	}
	ch := make(chan sseEvent, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 4<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.kind != "" {
					select {
					case ch <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return ch, func() {
		cancel()
		res.Body.Close()
		<-done
	}
}

// nextEvent returns the next event that is not an empty update.
func nextEvent(t *testing.T, ch <-chan sseEvent, what string) sseEvent {
	t.Helper()
	tm := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			return ev
		case <-tm:
			t.Fatalf("%s: no event in 10s", what)
		}
	}
}

// awaitDevice reads events until one carries device dev in state.
func awaitDevice(t *testing.T, ch <-chan sseEvent, dev, state string) (sseEvent, []string) {
	t.Helper()
	var seen []string
	for {
		ev := nextEvent(t, ch, "device "+dev+" "+state)
		var b EventBatch
		json.Unmarshal([]byte(ev.data), &b)
		for _, d := range b.Devices {
			seen = append(seen, d.Device+":"+d.State.String())
			if d.Device == dev && d.State.String() == state {
				return ev, seen
			}
		}
	}
}

func TestEventsReplayAfterResumeAndSnapshotAfterGap(t *testing.T) {
	f := newAPIFixture(t)
	ch, stop := openEvents(t, f, f.read, "?campaign="+f.campaign, "")
	first := nextEvent(t, ch, "snapshot")
	if first.kind != "snapshot" || !strings.Contains(first.data, f.campaign) {
		t.Fatalf("first event %+v, want a snapshot of the campaign", first)
	}
	putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: "e1", State: ds("notified"), Counter: 1})
	ev, _ := awaitDevice(t, ch, "e1", "notified")
	if ev.id == "" {
		t.Fatalf("update without an id: %+v", ev)
	}
	stop()

	// Written while nobody listens: a resumed stream replays them in
	// order, with no snapshot.
	for i, s := range []string{"downloading", "staged", "confirmed"} {
		putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: "e1", State: ds(s), Counter: uint64(2 + i)})
		putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: fmt.Sprintf("e%d", 2+i), State: ds("failed"), Counter: 1})
	}
	ch, stop = openEvents(t, f, f.read, "?campaign="+f.campaign, ev.id)
	_, seen := awaitDevice(t, ch, "e4", "failed")
	for _, want := range []string{"e2:failed", "e3:failed", "e1:confirmed"} {
		if !slices.Contains(seen, want) {
			t.Errorf("resumed stream skipped %s: saw %v", want, seen)
		}
	}
	stop()

	// A gap older than the stream: a snapshot comes first, with the
	// exact counters.
	if err := f.p.live.events.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
	putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: "e5", State: ds("failed"), Counter: 1})
	waitFor(t, 10*time.Second, func() string { return "first seq" }, func() bool {
		info, err := f.p.live.events.Info(context.Background())
		return err == nil && info.State.Msgs > 0
	})
	ch, stop = openEvents(t, f, f.read, "?campaign="+f.campaign, "1")
	defer stop()
	snap := nextEvent(t, ch, "snapshot after a gap")
	var b EventBatch
	if snap.kind != "snapshot" || json.Unmarshal([]byte(snap.data), &b) != nil || len(b.Campaigns) != 1 {
		t.Fatalf("after a gap: %+v, want a snapshot", snap)
	}
	waitFor(t, 10*time.Second, func() string { return "counts" }, func() bool {
		s, _ := f.p.CampaignStatus(context.Background(), f.campaign)
		return s.Counts["failed"] == 4
	})
}

func TestEventsCoalesce(t *testing.T) {
	f := newAPIFixture(t)
	ch, stop := openEvents(t, f, f.read, "?campaign="+f.campaign, "")
	defer stop()
	nextEvent(t, ch, "snapshot")
	const n = 300
	for i := range n {
		for k, s := range []string{"notified", "downloading", "confirmed"} {
			putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: fmt.Sprintf("k%03d", i), State: ds(s), Counter: uint64(k + 1)})
		}
	}
	events, confirmed := 0, map[string]bool{}
	for len(confirmed) < n {
		ev := nextEvent(t, ch, "coalesced updates")
		events++
		var b EventBatch
		json.Unmarshal([]byte(ev.data), &b)
		for _, d := range b.Devices {
			if d.State.String() == "confirmed" {
				confirmed[d.Device] = true
			}
		}
	}
	if events > n/2 {
		t.Errorf("%d events for %d device changes, want them coalesced", events, 3*n)
	}
}

func TestEventsEndWhenKeyRevoked(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	tok, k, err := f.p.CreateAPIKey(ctx, System, "watcher", []Scope{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	ch, stop := openEvents(t, f, tok, "", "")
	defer stop()
	nextEvent(t, ch, "snapshot")
	if err := f.p.RevokeAPIKey(ctx, System, k.ID); err != nil {
		t.Fatal(err)
	}
	for {
		ev := nextEvent(t, ch, "end event")
		if ev.kind == "end" {
			if !strings.Contains(ev.data, "revoked") {
				t.Errorf("end event %+v", ev)
			}
			break
		}
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("stream goes on after its end event")
		}
	case <-time.After(10 * time.Second):
		t.Error("stream not closed after revocation")
	}
	for _, c := range []struct{ what, key string }{{"no key", ""}, {"revoked key", tok}, {"unknown key", "fck_0123456789ab_nope"}} {
		if code, body := f.do(t, "GET", "/api/v1/events", c.key, ""); code != http.StatusUnauthorized {
			t.Errorf("events with %s: %d %s, want 401", c.what, code, body)
		}
	}
}

// browser is a cookie-keeping client of the fixture's server.
type browser struct {
	t      *testing.T
	f      *apiFixture
	jar    []*http.Cookie
	origin string
}

func (b *browser) do(method, path, body string, hdr map[string]string) (int, string) {
	b.t.Helper()
	req, _ := http.NewRequest(method, b.f.srv.URL+path, strings.NewReader(body))
	for _, c := range b.jar {
		req.AddCookie(c)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	for _, c := range res.Cookies() {
		b.jar = slices.DeleteFunc(b.jar, func(o *http.Cookie) bool { return o.Name == c.Name })
		if c.MaxAge >= 0 {
			b.jar = append(b.jar, c)
		}
	}
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(out)
}

// login signs b in with key through the pre-session token.
func (b *browser) login(key string) (int, Session) {
	b.t.Helper()
	tok := NewLoginToken()
	b.jar = slices.DeleteFunc(b.jar, func(c *http.Cookie) bool { return c.Name == LoginCookie })
	b.jar = append(b.jar, &http.Cookie{Name: LoginCookie, Value: tok})
	code, body := b.do("POST", "/api/v1/session", `{"key":"`+key+`"}`, map[string]string{CSRFHeader: tok})
	var s Session
	json.Unmarshal([]byte(body), &s)
	return code, s
}

func TestSessionCookieCSRFAndRevocation(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	tok, k, err := f.p.CreateAPIKey(ctx, System, "operator", []Scope{ScopeCampaign})
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, f: f}

	// The sign-in needs its pre-session token in cookie and header alike.
	if code, body := b.do("POST", "/api/v1/session", `{"key":"`+tok+`"}`, nil); code != http.StatusForbidden {
		t.Errorf("sign-in without a token: %d %s, want 403", code, body)
	}
	b.jar = append(b.jar, &http.Cookie{Name: LoginCookie, Value: "cookie-token"})
	if code, body := b.do("POST", "/api/v1/session", `{"key":"`+tok+`"}`, map[string]string{CSRFHeader: "other"}); code != http.StatusForbidden {
		t.Errorf("sign-in with a forged token: %d %s, want 403", code, body)
	}
	b.jar = nil
	if code, _ := b.login("fck_0123456789ab_bad"); code != http.StatusUnauthorized {
		t.Errorf("sign-in with a bad key: %d, want 401", code)
	}
	code, sess := b.login(tok)
	if code != http.StatusCreated || sess.CSRF == "" || !sess.Can["campaign"] || sess.Can["admin"] {
		t.Fatalf("sign-in: %d %+v", code, sess)
	}
	for _, c := range b.jar {
		if strings.Contains(c.Value, tok) || c.Name == LoginCookie {
			t.Errorf("cookie %s after sign-in", c.Name)
		}
	}
	if code, body := b.do("GET", "/api/v1/campaigns", "", nil); code != 200 {
		t.Fatalf("cookie GET: %d %s", code, body)
	}
	act := "/api/v1/campaigns/" + f.campaign + "/pause"
	for _, c := range []struct {
		name string
		hdr  map[string]string
	}{
		{"no CSRF token", nil},
		{"wrong CSRF token", map[string]string{CSRFHeader: "x"}},
		{"cross-site", map[string]string{CSRFHeader: sess.CSRF, "Sec-Fetch-Site": "cross-site"}},
		{"foreign origin", map[string]string{CSRFHeader: sess.CSRF, "Origin": "https://evil.example"}},
	} {
		if code, body := b.do("POST", act, "", c.hdr); code != http.StatusForbidden {
			t.Errorf("%s: %d %s, want 403", c.name, code, body)
		}
	}
	// The campaign is created, not running: 409 means the CSRF check passed.
	if code, body := b.do("POST", act, "", map[string]string{CSRFHeader: sess.CSRF, "Origin": f.srv.URL}); code != http.StatusConflict {
		t.Errorf("pause with the CSRF token: %d %s, want 409 (not running)", code, body)
	}
	if code, body := b.do("POST", "/api/v1/apikeys", `{"name":"x","scopes":["read"]}`, map[string]string{CSRFHeader: sess.CSRF}); code != http.StatusForbidden {
		t.Errorf("admin call by a campaign key's session: %d %s, want 403", code, body)
	}

	if err := f.p.RevokeAPIKey(ctx, System, k.ID); err != nil {
		t.Fatal(err)
	}
	if code, body := b.do("GET", "/api/v1/campaigns", "", nil); code != http.StatusUnauthorized || !strings.Contains(body, "revoked") {
		t.Errorf("after revocation: %d %s, want 401 saying so", code, body)
	}
	if code, _ := b.do("GET", "/api/v1/session", "", nil); code != http.StatusUnauthorized {
		t.Errorf("session after revocation: %d, want 401", code)
	}
}

func TestNATSCallMatchesHTTP(t *testing.T) {
	f := newAPIFixture(t)
	ctx := context.Background()
	for _, c := range []struct {
		method, path, key string
	}{
		{"GET", "/api/v1/campaigns/" + f.campaign + "/devices", f.read},
		{"GET", "/api/v1/campaigns/" + f.campaign + "/failures", f.read},
		{"GET", "/api/v1/fleet", f.read},
		{"GET", "/api/v1/fleet", ""},
		{"GET", "/api/v1/fleet", f.revoked},
		{"DELETE", "/api/v1/images/" + f.spare, f.read},
		{"GET", "/api/v1/images/" + f.spare, f.read},
	} {
		req, _ := json.Marshal(CallRequest{Key: c.key, Method: c.method, Path: c.path})
		// Over the broker, as a service would call it.
		tp, _ := f.p.cfg.Topics.API(callOp)
		rb, err := f.hub.Conn().Request(ctx, tp, req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		var rep CallReply
		if err := json.Unmarshal(rb, &rep); err != nil {
			t.Fatalf("reply %s: %v", rb, err)
		}
		code, body := f.do(t, c.method, c.path, c.key, "")
		if rep.Status != code {
			t.Errorf("%s %s key %q: NATS %d %s, HTTP %d %s", c.method, c.path, c.key, rep.Status, rep.Body, code, body)
		}
	}
	for _, bad := range []string{
		`{"key":"x","method":"GET","path":"/api/v1/events"}`,
		`{"key":"x","method":"GET","path":"/metrics"}`,
		`{"key":"x","method":"PUT","path":"/api/v1/fleet"}`,
		`{"key":"x","method":"GET","path":"/api/v1/fleet","extra":1}`,
	} {
		if rep := f.p.call(ctx, []byte(bad)); rep.Status < 400 {
			t.Errorf("%s: %d, want refused", bad, rep.Status)
		}
	}
}

// TestOpenAPIMatchesRoutes checks api/openapi.yaml against the routes the
// handler serves, both ways.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	b, err := os.ReadFile("../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi version %q", doc.OpenAPI)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for m, op := range ops {
			if m == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+path)
			if o, ok := op.(map[string]any); !ok || o["responses"] == nil {
				t.Errorf("%s %s documents no responses", m, path)
			}
		}
	}
	e := newEnv(t)
	p, _ := e.start(nil)
	_, routes := p.handler()
	slices.Sort(documented)
	slices.Sort(routes)
	if d := cmp.Diff(documented, routes); d != "" {
		t.Errorf("api/openapi.yaml (-documented +served):\n%s", d)
	}
}

// ds is the device state named name; an unknown name panics.
func ds(name string) DevState {
	d, ok := ParseDevState(name)
	if !ok {
		panic("unknown device state " + name)
	}
	return d
}

func TestPercentsJSON(t *testing.T) {
	b, err := json.Marshal(Status{Phases: Percents{10, 50, 100}})
	if err != nil || !strings.Contains(string(b), `"phases":[10,50,100]`) {
		t.Fatalf("%s %v", b, err)
	}
	for _, in := range []string{`[10,50,100]`, `"CjJk"`} {
		var p Percents
		if err := json.Unmarshal([]byte(in), &p); err != nil || !slices.Equal(p, Percents{10, 50, 100}) {
			t.Errorf("%s: %v %v", in, p, err)
		}
	}
	for _, in := range []string{`[300]`, `"!!"`, `{}`} {
		var p Percents
		if json.Unmarshal([]byte(in), &p) == nil {
			t.Errorf("%s accepted", in)
		}
	}
}

func TestClientEvents(t *testing.T) {
	f := newAPIFixture(t)
	cl := &Client{BaseURL: f.srv.URL, Key: f.read}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var kinds []string
	errSeen := fmt.Errorf("seen")
	err := cl.Events(ctx, f.campaign, "", func(ev Event) error {
		kinds = append(kinds, ev.Kind)
		if ev.Kind == "snapshot" {
			putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: "w1", State: ds("downloading"), Counter: 1})
			return nil
		}
		for _, d := range ev.Batch.Devices {
			if d.Device == "w1" && ev.ID != "" && len(ev.Batch.Campaigns) == 1 && ev.Batch.Campaigns[0].Counts["downloading"] == 1 {
				return errSeen
			}
		}
		return nil
	})
	if err != errSeen || kinds[0] != "snapshot" {
		t.Fatalf("events %v: %v", kinds, err)
	}
	bad := &Client{BaseURL: f.srv.URL, Key: f.revoked}
	if err := bad.Events(ctx, "", "", func(Event) error { return nil }); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("revoked key: %v", err)
	}
}

// TestEventsOutliveWriteTimeout: a server's write timeout for ordinary
// requests does not cut an event stream, which sets its own deadline.
func TestEventsOutliveWriteTimeout(t *testing.T) {
	f := newAPIFixture(t)
	srv := httptest.NewUnstartedServer(f.p.Handler())
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	g := *f
	g.srv = srv
	ch, stop := openEvents(t, &g, f.read, "?campaign="+f.campaign, "")
	defer stop()
	nextEvent(t, ch, "snapshot")
	time.Sleep(time.Second) // well past the server's write timeout
	putDevState(t, f.p, DeviceState{Campaign: f.campaign, Device: "late", State: ds("notified"), Counter: 1})
	awaitDevice(t, ch, "late", "notified")
}

// TestSessionCookieUnderTLS: under TLS both cookies take the __Host-
// prefix and Secure, and the plain names are not honoured.
func TestSessionCookieUnderTLS(t *testing.T) {
	f := newAPIFixture(t)
	srv := httptest.NewTLSServer(f.p.Handler())
	t.Cleanup(srv.Close)
	tok := NewLoginToken()
	login := func(cookie string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/session", strings.NewReader(`{"key":"`+f.read+`"}`))
		req.AddCookie(&http.Cookie{Name: cookie, Value: tok})
		req.Header.Set(CSRFHeader, tok)
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if res := login(LoginCookie); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign-in with the plain token cookie under TLS: %d, want 403", res.StatusCode)
	}
	res := login("__Host-" + LoginCookie)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("sign-in: %d", res.StatusCode)
	}
	var sess *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == "__Host-"+SessionCookie {
			sess = c
		}
	}
	if sess == nil || !sess.Secure || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || sess.Path != "/" || sess.Domain != "" {
		t.Fatalf("session cookie %+v", sess)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/campaigns", nil)
	req.AddCookie(&http.Cookie{Name: SessionCookie, Value: sess.Value})
	if code := tlsStatus(t, srv, req); code != http.StatusUnauthorized {
		t.Errorf("the session under its plain name: %d, want 401", code)
	}
	req, _ = http.NewRequest("GET", srv.URL+"/api/v1/campaigns", nil)
	req.AddCookie(sess)
	if code := tlsStatus(t, srv, req); code != http.StatusOK {
		t.Errorf("the session: %d, want 200", code)
	}
}

func tlsStatus(t *testing.T, srv *httptest.Server, req *http.Request) int {
	t.Helper()
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}
