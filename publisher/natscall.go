package publisher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/firmcast/firmcast/broker"
)

// The JSON API over NATS.
//
// Every call of the HTTP API under /api/v1 but the image upload, the
// event stream and console sessions can also be made over NATS
// request/reply on schemas.Topics.API(callOp): a JSON CallRequest in, a
// JSON CallReply out. The call runs through the very handler that serves
// HTTP, with the request's key as its bearer key, so both APIs answer
// alike and check the same scopes. (A service account may publish there:
// the broker lets it publish on the campaign API's subjects.)

// callOp is the API operation of the JSON API over NATS.
const callOp = "campaign.call"

// CallRequest is a call of the HTTP API over NATS.
type CallRequest struct {
	// Key is the API key (as in "Authorization: Bearer").
	Key string `json:"key"`
	// Method is the HTTP method: GET, POST or DELETE.
	Method string `json:"method"`
	// Path is the path under /api/v1, with its query, e.g.
	// "/api/v1/campaigns/c-1/devices?state=failed".
	Path string `json:"path"`
	// Body is the JSON body, if any.
	Body json.RawMessage `json:"body,omitempty"`
}

// CallReply is the answer: the HTTP status and the JSON body (an
// ErrorReply on errors).
type CallReply struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// callRefused are the routes not served over NATS.
var callRefused = []string{"/api/v1/events", "/api/v1/session"}

// handleCall serves one CallRequest received on the call subject.
func (p *Publisher) handleCall(ctx context.Context, m broker.Message) {
	rep := p.call(ctx, m.Payload)
	b, _ := json.Marshal(rep)
	if err := p.cfg.Transport.Reply(ctx, m, b); err != nil {
		p.log.Warn("api call reply", "topic", m.Topic, "err", err)
	}
}

// call runs payload (a CallRequest) through the HTTP handler.
func (p *Publisher) call(ctx context.Context, payload []byte) CallReply {
	fail := func(status int, format string, a ...any) CallReply {
		b, _ := json.Marshal(ErrorReply{Error: fmt.Sprintf(format, a...)})
		return CallReply{Status: status, Body: b}
	}
	if len(payload) > maxJSONBody {
		return fail(http.StatusRequestEntityTooLarge, "call over %d bytes", maxJSONBody)
	}
	var req CallRequest
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return fail(http.StatusBadRequest, "call: %v", err)
	}
	switch req.Method {
	case http.MethodGet, http.MethodPost, http.MethodDelete:
	default:
		return fail(http.StatusBadRequest, "call: method %q, want GET, POST or DELETE", req.Method)
	}
	if !strings.HasPrefix(req.Path, "/api/v1/") {
		return fail(http.StatusBadRequest, "call: path %q is not under /api/v1/", req.Path)
	}
	path, _, _ := strings.Cut(req.Path, "?")
	for _, r := range callRefused {
		if path == r || strings.HasPrefix(path, r+"/") {
			return fail(http.StatusNotFound, "call: %s is served over HTTP only", r)
		}
	}
	if req.Method == http.MethodPost && path == "/api/v1/images" {
		return fail(http.StatusNotFound, "call: image uploads are served over HTTP only")
	}
	hr, err := http.NewRequestWithContext(ctx, req.Method, "http://nats"+req.Path, bytes.NewReader(req.Body))
	if err != nil {
		return fail(http.StatusBadRequest, "call: %v", err)
	}
	if req.Key == "" {
		// No key: the same refusal as HTTP without one, never a session.
		hr.Header.Set("Authorization", "none")
	} else {
		hr.Header.Set("Authorization", "Bearer "+req.Key)
	}
	hr.Header.Set("Content-Type", "application/json")
	rec := &recorder{h: http.Header{}, status: http.StatusOK}
	p.callMux().ServeHTTP(rec, hr)
	return CallReply{Status: rec.status, Body: bytes.TrimSpace(rec.body.Bytes())}
}

// callMux is the handler calls run through, built once.
func (p *Publisher) callMux() http.Handler {
	p.callOnce.Do(func() { p.callH, _ = p.handler() })
	return p.callH
}

// recorder is the http.ResponseWriter of a call.
type recorder struct {
	h      http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.h }

func (r *recorder) WriteHeader(s int) {
	if !r.wrote {
		r.status, r.wrote = s, true
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.body.Len()+len(b) > 64<<20 {
		return 0, fmt.Errorf("%w: answer over 64 MiB", ErrTooLarge)
	}
	return r.body.Write(b)
}
