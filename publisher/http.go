package publisher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/firmcast/firmcast/schemas"
)

// maxJSONBody bounds every JSON request body.
const maxJSONBody = 1 << 20

// CampaignRequest is the JSON body of POST /api/v1/campaigns.
type CampaignRequest struct {
	Name string `json:"name,omitempty"`
	// Image is the hex SHA-256 of a stored image.
	Image string `json:"image"`
	// Envelope is an already signed SUIT envelope (base64); empty = the
	// server signs one.
	Envelope  []byte   `json:"envelope,omitempty"`
	Devices   []string `json:"devices,omitempty"`
	Groups    []string `json:"groups,omitempty"`
	Class     string   `json:"class,omitempty"`
	Tags      []string `json:"tags,omitempty"`
	OnVersion *uint64  `json:"on_version,omitempty"`
	// Phases are cumulative percentages ending at 100, e.g. [1, 10, 100].
	Phases []int `json:"phases,omitempty"`
	// PhaseDevices, instead of targets and Phases, lists the devices of
	// each phase explicitly.
	PhaseDevices    [][]string `json:"phase_devices,omitempty"`
	SuccessPermille uint16     `json:"success_permille,omitempty"`
	FailPermille    uint16     `json:"fail_permille,omitempty"`
	// Deadline, Unix seconds; 0 = none.
	Deadline int64 `json:"deadline,omitempty"`
	Start    bool  `json:"start,omitempty"`
	// AllowDowngrade lets the campaign install an image older than what
	// some targets run (audited); without it such a campaign is refused.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// RetryFailed lets devices on which the image failed before install
	// it again; without it they report failed-before and download nothing.
	RetryFailed bool `json:"retry_failed,omitempty"`
	// Component is the SUIT component the server-signed manifest updates
	// ("bootloader": the devices' bootloader stage); empty: the
	// application.
	Component string `json:"component,omitempty"`
}

// Spec converts the request to the wire spec. Errors: ErrInvalid.
func (r CampaignRequest) Spec() (schemas.CampaignSpec, error) {
	img, err := parseDigest(r.Image)
	if err != nil {
		return schemas.CampaignSpec{}, err
	}
	s := schemas.CampaignSpec{
		Image: img, Envelope: r.Envelope, Devices: r.Devices, Groups: r.Groups, Class: r.Class, Tags: r.Tags,
		OnVersion: r.OnVersion, SuccessPermille: r.SuccessPermille, FailPermille: r.FailPermille,
		Deadline: r.Deadline, Start: r.Start, Name: r.Name, AllowDowngrade: r.AllowDowngrade, RetryFailed: r.RetryFailed,
		Component: r.Component,
	}
	for _, v := range r.Phases {
		if v < 1 || v > 100 {
			return s, fmt.Errorf("%w: phase %d outside 1..100", ErrInvalid, v)
		}
		s.Phases = append(s.Phases, uint8(v))
	}
	return s, nil
}

// GroupRequest is the body of POST/DELETE /api/v1/groups/{group}/devices.
type GroupRequest struct {
	Devices []string `json:"devices"`
}

// KeyRequest is the body of POST /api/v1/apikeys.
type KeyRequest struct {
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
}

// NewKey is the answer to POST /api/v1/apikeys: the token, shown once.
type NewKey struct {
	Token string `json:"token"`
	Key   APIKey `json:"key"`
}

// NewDeviceReply is the answer to POST /api/v1/devices: the secret, shown once.
type NewDeviceReply struct {
	Device Device `json:"device"`
	Secret string `json:"secret"`
}

// ErrorReply is the body of every error answer.
type ErrorReply struct {
	Error string `json:"error"`
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists), errors.Is(err, ErrState), errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrNoSigner):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

type apiFunc func(w http.ResponseWriter, r *http.Request, who Principal) (int, any, error)

// Handler returns the HTTP handler: /healthz, /metrics, GET /images/{digest}
// and /images/{digest}.table (image bytes with Range support and the chunk
// table, for the HTTP fetch source, under Config.ImageAccess; see
// serveImage) and the JSON API under /api/v1, where every call needs
// "Authorization: Bearer <key>".
func (p *Publisher) Handler() http.Handler {
	h, _ := p.handler()
	return h
}

// handler builds Handler and returns it with the patterns of its /api/v1
// routes (the OpenAPI test compares them with api/openapi.yaml).
func (p *Publisher) handler() (http.Handler, []string) {
	mux := http.NewServeMux()
	var routes []string
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.gath, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /images/{digest}", p.serveImage)
	api := func(pattern string, scope Scope, f apiFunc) {
		routes = append(routes, pattern)
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { p.serveAPI(w, r, scope, f) })
	}
	api("POST /api/v1/images", ScopeCampaign, p.apiUpload)
	p.encryptionAPI(api)
	api("POST /api/v1/deltas", ScopeCampaign, p.apiDelta)
	api("GET /api/v1/images", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.ImageUses(r.Context())
		return 200, nonNil(v), err
	})
	api("GET /api/v1/images/{digest}", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.ImageUseOf(r.Context(), r.PathValue("digest"))
		return 200, v, err
	})
	api("POST /api/v1/devices", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		var nd NewDevice
		if err := decodeJSON(r, &nd); err != nil {
			return 0, nil, err
		}
		d, secret, err := p.AddDevice(r.Context(), who, nd)
		return 201, NewDeviceReply{Device: d, Secret: secret}, err
	})
	api("GET /api/v1/devices", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.Devices(r.Context())
		return 200, nonNil(v), err
	})
	api("GET /api/v1/devices/{id}", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.DeviceDetail(r.Context(), r.PathValue("id"))
		return 200, v, err
	})
	api("DELETE /api/v1/devices/{id}", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		return 204, nil, p.RemoveDevice(r.Context(), who, r.PathValue("id"))
	})
	group := func(add bool) apiFunc {
		return func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
			var g GroupRequest
			if err := decodeJSON(r, &g); err != nil {
				return 0, nil, err
			}
			if add {
				return 204, nil, p.GroupAdd(r.Context(), who, r.PathValue("group"), g.Devices)
			}
			return 204, nil, p.GroupRemove(r.Context(), who, r.PathValue("group"), g.Devices)
		}
	}
	api("POST /api/v1/groups/{group}/devices", ScopeAdmin, group(true))
	api("DELETE /api/v1/groups/{group}/devices", ScopeAdmin, group(false))
	api("POST /api/v1/campaigns", ScopeCampaign, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		var cr CampaignRequest
		if err := decodeJSON(r, &cr); err != nil {
			return 0, nil, err
		}
		spec, err := cr.Spec()
		if err != nil {
			return 0, nil, err
		}
		var c Campaign
		if len(cr.PhaseDevices) > 0 {
			c, err = p.CreatePhasedCampaign(r.Context(), who, spec, cr.PhaseDevices)
		} else {
			c, err = p.CreateCampaign(r.Context(), who, spec)
		}
		if err != nil {
			return 0, nil, err
		}
		return 201, p.status(&c), nil
	})
	api("GET /api/v1/campaigns", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.Campaigns(r.Context())
		return 200, nonNil(v), err
	})
	api("GET /api/v1/campaigns/{id}", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.CampaignStatus(r.Context(), r.PathValue("id"))
		return 200, v, err
	})
	api("POST /api/v1/campaigns/{id}/{action}", ScopeCampaign, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		if err := decodeEmpty(r); err != nil {
			return 0, nil, err
		}
		ops := map[string]func() (Campaign, error){
			"start":  func() (Campaign, error) { return p.StartCampaign(r.Context(), who, r.PathValue("id")) },
			"pause":  func() (Campaign, error) { return p.PauseCampaign(r.Context(), who, r.PathValue("id")) },
			"resume": func() (Campaign, error) { return p.ResumeCampaign(r.Context(), who, r.PathValue("id")) },
			"abort":  func() (Campaign, error) { return p.AbortCampaign(r.Context(), who, r.PathValue("id")) },
		}
		op, ok := ops[r.PathValue("action")]
		if !ok {
			return 0, nil, fmt.Errorf("%w: unknown campaign action %q (want start, pause, resume or abort)", ErrNotFound, r.PathValue("action"))
		}
		c, err := op()
		if err != nil {
			return 0, nil, err
		}
		return 200, p.status(&c), nil
	})
	api("POST /api/v1/apikeys", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		var kr KeyRequest
		if err := decodeJSON(r, &kr); err != nil {
			return 0, nil, err
		}
		var scopes []Scope
		for _, s := range kr.Scopes {
			sc, err := ParseScope(s)
			if err != nil {
				return 0, nil, err
			}
			scopes = append(scopes, sc)
		}
		tok, k, err := p.CreateAPIKey(r.Context(), who, kr.Name, scopes)
		return 201, NewKey{Token: tok, Key: k}, err
	})
	api("GET /api/v1/apikeys", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.APIKeys(r.Context())
		return 200, nonNil(v), err
	})
	api("DELETE /api/v1/apikeys/{id}", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		return 204, nil, p.RevokeAPIKey(r.Context(), who, r.PathValue("id"))
	})
	api("GET /api/v1/audit", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 10000 {
				return 0, nil, fmt.Errorf("%w: limit %q, want 1..10000", ErrInvalid, s)
			}
			limit = n
		}
		v, err := p.Audit(r.Context(), limit)
		return 200, nonNil(v), err
	})
	routes = append(routes, p.consoleRoutes(mux, api)...)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ErrorReply{Error: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
	})
	return mux, routes
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}

// serveAPI authenticates, checks the scope, runs f and writes its answer.
func (p *Publisher) serveAPI(w http.ResponseWriter, r *http.Request, scope Scope, f apiFunc) {
	status, body, err := func() (int, any, error) {
		who, err := p.bearer(r, scope)
		if err != nil {
			return 0, nil, err
		}
		return f(w, r, who)
	}()
	if err != nil {
		status = statusOf(err)
		if status == http.StatusInternalServerError {
			p.log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		body = ErrorReply{Error: err.Error()}
	}
	p.met.apiRequests.WithLabelValues("http", strconv.Itoa(status)).Inc()
	writeJSON(w, status, body)
}

// bearer authenticates r's "Authorization: Bearer <key>", or without that
// header a console session cookie (with its CSRF token for a change:
// sessions.go), and checks that the key has scope. Errors:
// ErrUnauthorized, ErrForbidden.
func (p *Publisher) bearer(r *http.Request, scope Scope) (Principal, error) {
	var who Principal
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case ok:
		var err error
		if who, err = p.Authenticate(r.Context(), strings.TrimSpace(tok)); err != nil {
			return Principal{}, err
		}
	case r.Header.Get("Authorization") == "" && p.live != nil:
		// A console session (sessions.go): cookie, and CSRF token for
		// anything but GET and HEAD.
		w, _, found, err := p.cookieAuth(r)
		if !found {
			return Principal{}, fmt.Errorf("%w: missing \"Authorization: Bearer <key>\" header", ErrUnauthorized)
		}
		if err != nil {
			return Principal{}, err
		}
		who = w
	default:
		return Principal{}, fmt.Errorf("%w: missing \"Authorization: Bearer <key>\" header", ErrUnauthorized)
	}
	if !who.Can(scope) {
		return Principal{}, fmt.Errorf("%w: key %s lacks scope %s", ErrForbidden, who.KeyID, scope)
	}
	return who, nil
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	if status == http.StatusNoContent || body == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}

// decodeJSON reads one JSON value into v: bounded, unknown fields and
// trailing data rejected. Errors wrap ErrInvalid or ErrTooLarge.
func decodeJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return fmt.Errorf("%w: reading body: %v", ErrInvalid, err)
	}
	if len(body) > maxJSONBody {
		return fmt.Errorf("%w: JSON body over %d bytes", ErrTooLarge, maxJSONBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: JSON body: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: JSON body: trailing data after the value", ErrInvalid)
	}
	return nil
}

// decodeEmpty accepts an empty body or "{}".
func decodeEmpty(r *http.Request) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1024))
	if err != nil {
		return fmt.Errorf("%w: reading body: %v", ErrInvalid, err)
	}
	if s := strings.TrimSpace(string(body)); s != "" && s != "{}" {
		return fmt.Errorf("%w: this call takes no body (or {})", ErrInvalid)
	}
	return nil
}

func (p *Publisher) apiUpload(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
	q := r.URL.Query()
	up := ImageUpload{Name: q.Get("name"), Version: q.Get("version")}
	if s := q.Get("security_version"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: security_version %q is not an unsigned integer", ErrInvalid, s)
		}
		up.SecurityVersion = v
	}
	if q.Get("encrypt") == "true" {
		return p.apiUploadEncrypted(r, who, up)
	}
	img, created, err := p.UploadImageWith(r.Context(), who, up, r.Body)
	if err != nil {
		return 0, nil, err
	}
	if created {
		return 201, img, nil
	}
	return 200, img, nil
}
