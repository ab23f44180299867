package publisher

import (
	"fmt"
	"net/http"
	"strconv"
)

// consoleRoutes adds the routes of issue 18 to mux: the questions asked
// during a rollout (query.go), image deletion, the event stream
// (events_http.go) and console sessions (sessions.go). api registers a
// key-authenticated route as in Handler; it returns the patterns of the
// routes it adds itself.
func (p *Publisher) consoleRoutes(mux *http.ServeMux, api func(string, Scope, apiFunc)) []string {
	api("GET /api/v1/campaigns/{id}/devices", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		f, err := ParseDeviceFilter(r.URL.Query().Get)
		if err != nil {
			return 0, nil, err
		}
		v, err := p.CampaignDevices(r.Context(), r.PathValue("id"), f)
		return 200, v, err
	})
	api("GET /api/v1/campaigns/{id}/failures", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.CampaignFailures(r.Context(), r.PathValue("id"))
		return 200, nonNil(v), err
	})
	api("GET /api/v1/devices/{id}/history", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		limit, err := queryLimit(r, 100, MaxHistory)
		if err != nil {
			return 0, nil, err
		}
		v, err := p.DeviceHistory(r.Context(), r.PathValue("id"), limit)
		return 200, v, err
	})
	api("GET /api/v1/fleet", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.Fleet(r.Context())
		return 200, v, err
	})
	api("DELETE /api/v1/images/{digest}", ScopeCampaign, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		return 204, nil, p.DeleteImage(r.Context(), who, r.PathValue("digest"))
	})
	var own []string
	plain := func(pattern string, f func(http.ResponseWriter, *http.Request) (int, any, error)) {
		own = append(own, pattern)
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			status, body, err := f(w, r)
			if err != nil {
				p.writeErr(w, r, err)
				return
			}
			p.met.apiRequests.WithLabelValues("http", strconv.Itoa(status)).Inc()
			writeJSON(w, status, body)
		})
	}
	plain("POST /api/v1/session", p.serveLogin)
	plain("GET /api/v1/session", p.serveSession)
	plain("DELETE /api/v1/session", p.serveLogout)
	own = append(own, "GET /api/v1/events")
	mux.HandleFunc("GET /api/v1/events", p.serveEvents)
	return own
}

// queryLimit reads the limit query parameter: def when absent, else
// 1..most. Errors wrap ErrInvalid.
func queryLimit(r *http.Request, def, most int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, fmt.Errorf("%w: limit %q, want 1..%d", ErrInvalid, s, most)
	}
	return n, nil
}
