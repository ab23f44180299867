package publisher

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Console sessions (the operator console, package console).
//
// A browser signs in once with an API key (POST /api/v1/session); the
// server answers with a session: a random 256-bit id in a cookie that is
// HttpOnly and SameSite=Strict, and under TLS Secure with the __Host-
// prefix. The API key itself goes no further than that one request: it is
// in no cookie and in no browser storage. The session record lives in the
// JetStream bucket <ns>_sessions, under the SHA-256 of its id (a reader
// of the bucket cannot take a session over), so every replica knows it;
// the bucket's TTL ends it after SessionLifetime. A session acts as its
// key: every request checks the key again, so revoking the key ends its
// sessions at once, and its open event streams (revocations).
//
// CSRF: every cookie-authenticated request that changes anything (any
// method but GET and HEAD) must carry the session's CSRF token in the
// X-CSRF-Token header, and must not come from another site (Origin, and
// Sec-Fetch-Site where the browser sends it). The sign-in itself is
// protected the same way by a pre-session token: the console page sets it
// in an HttpOnly cookie and writes it into the page, and the sign-in must
// send it back in X-CSRF-Token (double submit).

// SessionLifetime is how long a console session lasts.
const SessionLifetime = 12 * time.Hour

// Cookie names, without the __Host- prefix they take under TLS.
const (
	SessionCookie = "firmcast_session"
	LoginCookie   = "firmcast_login"
)

// CSRFHeader carries the CSRF token of cookie-authenticated requests.
const CSRFHeader = "X-CSRF-Token"

// CookieName is the name of cookie base on request r: with the __Host-
// prefix under TLS.
func CookieName(base string, r *http.Request) string {
	if r.TLS != nil {
		return "__Host-" + base
	}
	return base
}

// NewCookie returns cookie base with value v for r's connection: path /,
// HttpOnly, SameSite=Strict, and Secure with the __Host- prefix under TLS.
// maxAge < 0 deletes it.
func NewCookie(base, v string, r *http.Request, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{
		Name: CookieName(base, r), Value: v, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int(maxAge / time.Second),
	}
	if maxAge < 0 {
		c.MaxAge = -1
	}
	return c
}

// Session is a signed-in console session, as GET /api/v1/session shows
// it to its own browser.
type Session struct {
	KeyID   string    `json:"key_id"`
	Name    string    `json:"name"`
	Scopes  []Scope   `json:"scopes"`
	CSRF    string    `json:"csrf"`
	Expires time.Time `json:"expires"`
	// Can tells the console which actions to offer (the server checks
	// each anyway): "campaign" (create, start, pause, resume, abort,
	// upload, delete images) and "admin".
	Can map[string]bool `json:"can"`
}

// sessionRecord is a session as stored, under sessionKey(id).
type sessionRecord struct {
	KeyID   string    `json:"key_id"`
	CSRF    string    `json:"csrf"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

func sessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// NewLoginToken returns a fresh pre-session CSRF token (see the package's
// session notes).
func NewLoginToken() string { return randomToken() }

// Login signs in with API key tok and returns the new session's id (the
// cookie value) and what the browser may know of it. Errors:
// ErrUnauthorized.
func (p *Publisher) Login(ctx context.Context, tok string) (string, Session, error) {
	who, err := p.Authenticate(ctx, tok)
	if err != nil {
		return "", Session{}, err
	}
	id := randomToken()
	now := p.cfg.Clock.Now().UTC()
	rec := sessionRecord{KeyID: who.KeyID, CSRF: randomToken(), Created: now, Expires: now.Add(SessionLifetime)}
	if _, err := createJSON(ctx, p.live.sessions, "session", sessionKey(id), rec); err != nil {
		return "", Session{}, err
	}
	p.audit(ctx, who, "session.login", who.KeyID, "")
	return id, sessionView(who, rec), nil
}

func sessionView(who Principal, rec sessionRecord) Session {
	return Session{
		KeyID: who.KeyID, Name: who.Name, Scopes: who.Scopes, CSRF: rec.CSRF, Expires: rec.Expires,
		Can: map[string]bool{string(ScopeCampaign): who.Can(ScopeCampaign), string(ScopeAdmin): who.Can(ScopeAdmin)},
	}
}

// SessionOf returns the principal and session of session id: its key,
// checked again now (a revoked key ends its sessions). Errors:
// ErrUnauthorized.
func (p *Publisher) SessionOf(ctx context.Context, id string) (Principal, Session, error) {
	var rec sessionRecord
	if id == "" || len(id) > 128 {
		return Principal{}, Session{}, fmt.Errorf("%w: no session", ErrUnauthorized)
	}
	if _, err := getJSON(ctx, p.live.sessions, "session", sessionKey(id), &rec); err != nil {
		if errors.Is(err, ErrNotFound) {
			return Principal{}, Session{}, fmt.Errorf("%w: session ended; sign in again", ErrUnauthorized)
		}
		return Principal{}, Session{}, err
	}
	if !p.cfg.Clock.Now().Before(rec.Expires) {
		return Principal{}, Session{}, fmt.Errorf("%w: session expired; sign in again", ErrUnauthorized)
	}
	var k apiKeyRecord
	if _, err := getJSON(ctx, p.st.keys, "api key", rec.KeyID, &k); err != nil {
		if errors.Is(err, ErrNotFound) {
			return Principal{}, Session{}, fmt.Errorf("%w: the session's API key is gone", ErrUnauthorized)
		}
		return Principal{}, Session{}, err
	}
	if k.Revoked != nil {
		return Principal{}, Session{}, fmt.Errorf("%w: API key %s was revoked; its sessions ended", ErrUnauthorized, k.ID)
	}
	who := Principal{KeyID: k.ID, Name: k.Name, Scopes: k.Scopes}
	return who, sessionView(who, rec), nil
}

// Logout ends session id (nothing when it is already gone).
func (p *Publisher) Logout(ctx context.Context, id string) error {
	err := withRetry(ctx, func(ctx context.Context, _ bool) error { return p.live.sessions.Delete(ctx, sessionKey(id)) })
	if err != nil {
		return fmt.Errorf("publisher: end session: %w", err)
	}
	return nil
}

// safeMethod reports whether m changes nothing (no CSRF check needed).
func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// sameSite checks that a request did not come from another site: its
// Sec-Fetch-Site, when sent, is same-origin (or none: typed by the user),
// and its Origin, when sent, names the request's own host. Errors:
// ErrForbidden.
func sameSite(r *http.Request) error {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return fmt.Errorf("%w: cross-site request refused (Sec-Fetch-Site %q)", ErrForbidden, r.Header.Get("Sec-Fetch-Site"))
	}
	if o := r.Header.Get("Origin"); o != "" {
		host, ok := strings.CutPrefix(o, "http://")
		if !ok {
			host, ok = strings.CutPrefix(o, "https://")
		}
		if !ok || host != r.Host {
			return fmt.Errorf("%w: cross-origin request refused (Origin %q)", ErrForbidden, o)
		}
	}
	return nil
}

// checkToken compares a submitted CSRF token with the expected one in
// constant time. Errors: ErrForbidden.
func checkToken(got, want string) error {
	if want == "" || got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return fmt.Errorf("%w: missing or wrong CSRF token (%s header)", ErrForbidden, CSRFHeader)
	}
	return nil
}

// cookieAuth authenticates r by its session cookie; for a method that
// changes anything it checks the CSRF token and the request's site too.
// ok is false when r carries no session cookie. Errors: ErrUnauthorized,
// ErrForbidden.
func (p *Publisher) cookieAuth(r *http.Request) (who Principal, sess Session, ok bool, err error) {
	c, cerr := r.Cookie(CookieName(SessionCookie, r))
	if cerr != nil {
		return Principal{}, Session{}, false, nil
	}
	who, sess, err = p.SessionOf(r.Context(), c.Value)
	if err != nil {
		return Principal{}, Session{}, true, err
	}
	if !safeMethod(r.Method) {
		if err := sameSite(r); err != nil {
			return Principal{}, Session{}, true, err
		}
		if err := checkToken(r.Header.Get(CSRFHeader), sess.CSRF); err != nil {
			return Principal{}, Session{}, true, err
		}
	}
	return who, sess, true, nil
}

// LoginRequest is the body of POST /api/v1/session.
type LoginRequest struct {
	Key string `json:"key"`
}

// serveLogin is POST /api/v1/session: the pre-session CSRF token (cookie
// and header) and the site are checked, then the key; on success the
// session cookie is set and the pre-session cookie cleared.
func (p *Publisher) serveLogin(w http.ResponseWriter, r *http.Request) (int, any, error) {
	if err := sameSite(r); err != nil {
		return 0, nil, err
	}
	c, err := r.Cookie(CookieName(LoginCookie, r))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: no sign-in token cookie; reload the console page", ErrForbidden)
	}
	if err := checkToken(r.Header.Get(CSRFHeader), c.Value); err != nil {
		return 0, nil, err
	}
	var lr LoginRequest
	if err := decodeJSON(r, &lr); err != nil {
		return 0, nil, err
	}
	id, sess, err := p.Login(r.Context(), strings.TrimSpace(lr.Key))
	if err != nil {
		return 0, nil, err
	}
	http.SetCookie(w, NewCookie(SessionCookie, id, r, SessionLifetime))
	http.SetCookie(w, NewCookie(LoginCookie, "", r, -1))
	return http.StatusCreated, sess, nil
}

// serveSession is GET /api/v1/session: the caller's own session.
func (p *Publisher) serveSession(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	_, sess, ok, err := p.cookieAuth(r)
	if !ok {
		return 0, nil, fmt.Errorf("%w: not signed in", ErrUnauthorized)
	}
	return http.StatusOK, sess, err
}

// serveLogout is DELETE /api/v1/session (CSRF-checked like every
// cookie-authenticated change).
func (p *Publisher) serveLogout(w http.ResponseWriter, r *http.Request) (int, any, error) {
	c, cerr := r.Cookie(CookieName(SessionCookie, r))
	if cerr != nil {
		return 0, nil, fmt.Errorf("%w: not signed in", ErrUnauthorized)
	}
	if _, _, _, err := p.cookieAuth(r); err != nil && !errors.Is(err, ErrUnauthorized) {
		return 0, nil, err
	}
	http.SetCookie(w, NewCookie(SessionCookie, "", r, -1))
	return http.StatusNoContent, nil, p.Logout(r.Context(), c.Value)
}
