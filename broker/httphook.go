package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Paths of the broker auth hook (HTTPHook), relative to where it is
// mounted.
const (
	// HookAuthnPath answers EMQX HTTP authentication (a CONNECT).
	HookAuthnPath = "/v1/broker/authn"
	// HookAuthzPath answers EMQX HTTP authorization (a publish or a
	// subscribe).
	HookAuthzPath = "/v1/broker/authz"
)

// Defaults of HookConfig.
const (
	DefaultHookMaxFailures   = 10
	DefaultHookFailureWindow = time.Minute
	DefaultHookMaxTracked    = 10000
	// hookMaxBody bounds a request body: an MQTT password is at most
	// 65,535 bytes, but no firmcast secret comes near 1 KiB.
	hookMaxBody = 8 << 10
)

// IdentityLookup finds the identity of a broker user by name alone, for a
// broker that asks "may this user do that" after the CONNECT was
// authenticated (EMQX HTTP authorization). LookupIdentity returns
// ErrNotAuthorized (wrapped) for an unknown user. Safe for concurrent use.
// CredentialStore implements it, as does the backend's device registry.
type IdentityLookup interface {
	LookupIdentity(ctx context.Context, username string) (Identity, error)
}

// HookConfig configures an HTTPHook. It is taken by value.
type HookConfig struct {
	// Auth authenticates a CONNECT's user name and secret. Required.
	Auth Authenticator
	// Lookup finds the identity a publish or subscribe is checked as.
	// Required.
	Lookup IdentityLookup
	// Policy is the access policy: the same value the embedded brokers
	// enforce. Its topic root is required.
	Policy Policy
	// Secret is the shared secret the broker presents on every request,
	// as "Authorization: Bearer <Secret>". Required, at least 16 bytes.
	Secret string
	// MaxFailures is how many failed authentications of one user name
	// the hook checks per FailureWindow; past it, that user name is
	// refused without a check until the window ends. Default
	// DefaultHookMaxFailures.
	MaxFailures int
	// FailureWindow: see MaxFailures. Default DefaultHookFailureWindow.
	FailureWindow time.Duration
	// MaxTracked bounds the user names whose failures are counted; past
	// it an arbitrary entry is forgotten. Default DefaultHookMaxTracked.
	MaxTracked int
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives refusals. Default slog.Default().
	Logger *slog.Logger
}

// HTTPHook serves a broker's HTTP authentication and authorization
// requests in the shape of EMQX 5's HTTP authenticator and HTTP
// authorization source (the request body is a JSON object of strings
// built from the broker's placeholders; the answer is 200 with
// {"result":"allow"|"deny"[,"is_superuser":false]}), so that an external
// broker cluster enforces exactly the policy of the embedded brokers:
//
//   - POST HookAuthnPath {"clientid","username","password","peerhost"}:
//     allow a backend identity, or a device whose client id is its device
//     id (as the embedded broker binds it); deny a service identity
//     (NATS only), a wrong secret, an unknown user. Never a superuser.
//   - POST HookAuthzPath {"clientid","username","topic","action",
//     "qos","retain","peerhost"}: action "publish" or "subscribe",
//     decided by Policy.Allow for the user's current identity (a removed
//     device is denied), so shared subscriptions ($share/<group>/...) are
//     the backend's only, and notices, retained or not, are published
//     only by the backend.
//
// Every request must carry "Authorization: Bearer <Secret>"; one without
// it gets 401 and learns nothing (EMQX treats any status but 200 and 204
// as "ignore", which with no other authenticator or source is a refusal).
// The hook never answers 204, which EMQX authorization reads as allow.
// Failed authentications are bounded per user name (MaxFailures per
// FailureWindow). HTTPHook is an http.Handler, safe for concurrent use.
type HTTPHook struct {
	cfg    HookConfig
	secret [32]byte

	mu     sync.Mutex
	fails  map[string]*hookFailures
	pruned time.Time // last full scan for expired failures
}

type hookFailures struct {
	start time.Time
	n     int
}

// NewHTTPHook checks cfg and returns the hook (ErrBadServerConfig).
func NewHTTPHook(cfg HookConfig) (*HTTPHook, error) {
	switch {
	case cfg.Auth == nil || cfg.Lookup == nil:
		return nil, fmt.Errorf("%w: broker hook needs an authenticator and an identity lookup", ErrBadServerConfig)
	case cfg.Policy.Topics.Root() == "":
		return nil, fmt.Errorf("%w: broker hook needs the topic root", ErrBadServerConfig)
	case len(cfg.Secret) < 16:
		return nil, fmt.Errorf("%w: broker hook secret shorter than 16 bytes", ErrBadServerConfig)
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = DefaultHookMaxFailures
	}
	if cfg.FailureWindow <= 0 {
		cfg.FailureWindow = DefaultHookFailureWindow
	}
	if cfg.MaxTracked <= 0 {
		cfg.MaxTracked = DefaultHookMaxTracked
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &HTTPHook{cfg: cfg, secret: sha256.Sum256([]byte(cfg.Secret)), fails: map[string]*hookFailures{}}, nil
}

// hookRequest is the body EMQX sends: every placeholder is rendered as a
// string (qos and retain included).
type hookRequest struct {
	ClientID string `json:"clientid"`
	Username string `json:"username"`
	Password string `json:"password"`
	PeerHost string `json:"peerhost"`
	Topic    string `json:"topic"`
	Action   string `json:"action"`
	QoS      string `json:"qos"`
	Retain   string `json:"retain"`
}

// hookResult is the answer.
type hookResult struct {
	Result      string `json:"result"`
	IsSuperuser *bool  `json:"is_superuser,omitempty"`
}

func (h *HTTPHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != HookAuthnPath && r.URL.Path != HookAuthzPath {
		http.NotFound(w, r)
		return
	}
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="firmcast broker hook"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var req hookRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, hookMaxBody+1))
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad request body", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	var res hookResult
	var err error
	if r.URL.Path == HookAuthnPath {
		res, err = h.authenticate(ctx, req)
	} else {
		res, err = h.authorize(ctx, req)
	}
	if err != nil {
		// Not a decision (the registry is unreachable): EMQX takes the
		// status as "ignore", a refusal with nothing after the hook.
		h.cfg.Logger.Warn("broker hook: no decision", "path", r.URL.Path, "user", req.Username, "err", err)
		http.Error(w, "no decision", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(res)
}

// authorized checks the bearer secret in constant time.
func (h *HTTPHook) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	got := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(got[:], h.secret[:]) == 1
}

var (
	hookAllow = hookResult{Result: "allow", IsSuperuser: new(bool)}
	hookDeny  = hookResult{Result: "deny"}
)

// authenticate decides a CONNECT. An error is returned only when no
// decision could be made.
func (h *HTTPHook) authenticate(ctx context.Context, req hookRequest) (hookResult, error) {
	log := h.cfg.Logger.With("user", req.Username, "client", req.ClientID, "peer", req.PeerHost)
	if !h.mayTry(req.Username) {
		log.Info("broker hook: connect refused: too many failed attempts")
		return hookDeny, nil
	}
	id, err := h.cfg.Auth.Authenticate(ctx, req.Username, req.Password)
	if err != nil {
		if !errors.Is(err, ErrNotAuthorized) {
			return hookResult{}, err
		}
		h.failed(req.Username)
		log.Info("broker hook: connect refused", "err", err)
		return hookDeny, nil
	}
	h.succeeded(req.Username)
	switch id.Role {
	case RoleService:
		log.Info("broker hook: connect refused: service identities use NATS only")
		return hookDeny, nil
	case RoleDevice:
		if req.ClientID != id.Device {
			log.Info("broker hook: connect refused: device client id must be its device id")
			return hookDeny, nil
		}
	case RoleBackend:
	default:
		return hookDeny, nil
	}
	return hookAllow, nil
}

// authorize decides a publish or subscribe for the user's identity now.
func (h *HTTPHook) authorize(ctx context.Context, req hookRequest) (hookResult, error) {
	var write bool
	switch req.Action {
	case "publish":
		write = true
	case "subscribe":
	default:
		return hookDeny, nil
	}
	id, err := h.cfg.Lookup.LookupIdentity(ctx, req.Username)
	if err != nil {
		if !errors.Is(err, ErrNotAuthorized) {
			return hookResult{}, err
		}
		return hookDeny, nil
	}
	if id.Role == RoleDevice && req.ClientID != id.Device {
		return hookDeny, nil
	}
	if !h.cfg.Policy.Allow(id, req.Topic, write) {
		h.cfg.Logger.Debug("broker hook: acl denied", "user", req.Username, "topic", req.Topic, "action", req.Action)
		return hookDeny, nil
	}
	return hookResult{Result: "allow"}, nil
}

// mayTry reports whether user has failures left in its window.
func (h *HTTPHook) mayTry(user string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.fails[user]
	if !ok {
		return true
	}
	if h.cfg.Now().Sub(f.start) >= h.cfg.FailureWindow {
		delete(h.fails, user)
		return true
	}
	return f.n < h.cfg.MaxFailures
}

// failed counts a failed authentication of user.
func (h *HTTPHook) failed(user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.cfg.Now()
	if f, ok := h.fails[user]; ok && now.Sub(f.start) < h.cfg.FailureWindow {
		f.n++
		return
	}
	if len(h.fails) >= h.cfg.MaxTracked {
		// Full: drop the expired entries, at most once a window (a
		// full scan), else one arbitrary entry.
		if now.Sub(h.pruned) >= h.cfg.FailureWindow {
			h.pruned = now
			for u, f := range h.fails {
				if now.Sub(f.start) >= h.cfg.FailureWindow {
					delete(h.fails, u)
				}
			}
		}
		for u := range h.fails {
			if len(h.fails) < h.cfg.MaxTracked {
				break
			}
			delete(h.fails, u)
		}
	}
	h.fails[user] = &hookFailures{start: now, n: 1}
}

// succeeded forgets user's failures.
func (h *HTTPHook) succeeded(user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.fails, user)
}
