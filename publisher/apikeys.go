package publisher

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Scope is a permission carried by an API key.
type Scope string

// Scopes. admin implies campaign, which implies read.
const (
	// ScopeRead: list and show images, devices, campaigns.
	ScopeRead Scope = "read"
	// ScopeCampaign: upload images, create and drive campaigns.
	ScopeCampaign Scope = "campaign"
	// ScopeAdmin: devices, groups, API keys, audit log.
	ScopeAdmin Scope = "admin"
)

func (s Scope) rank() int {
	switch s {
	case ScopeRead:
		return 1
	case ScopeCampaign:
		return 2
	case ScopeAdmin:
		return 3
	}
	return 0
}

// ParseScope returns the scope named s, or ErrInvalid.
func ParseScope(s string) (Scope, error) {
	sc := Scope(s)
	if sc.rank() == 0 {
		return "", fmt.Errorf("%w: unknown scope %q (want read, campaign or admin)", ErrInvalid, s)
	}
	return sc, nil
}

// Principal is an authenticated caller.
type Principal struct {
	KeyID  string
	Name   string
	Scopes []Scope
}

// Can reports whether the principal holds scope s (or a wider one).
func (p Principal) Can(s Scope) bool {
	for _, have := range p.Scopes {
		if have.rank() >= s.rank() {
			return true
		}
	}
	return false
}

// System is the principal of the publisher's own actions in the audit log.
var System = Principal{KeyID: "system", Name: "system", Scopes: []Scope{ScopeAdmin}}

// APIKey is an API key as the APIs show it: never the token, nor its
// hash (apiKeyRecord).
type APIKey struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Scopes    []Scope    `json:"scopes"`
	Created   time.Time  `json:"created"`
	CreatedBy string     `json:"created_by,omitempty"`
	Revoked   *time.Time `json:"revoked,omitempty"`
}

// apiKeyRecord is an API key as stored: the token itself never is, only
// its salted hash (hashToken), which never leaves the publisher.
type apiKeyRecord struct {
	APIKey
	Hash string `json:"hash"`
}

const tokenPrefix = "fck"

// bootstrapKeyID is the id of the key registered from Config.BootstrapKey
// when that is not a token of the fck_<id>_<secret> form.
const bootstrapKeyID = "bootstrap"

// hashToken returns the stored form of a token: "hmac-sha256$<salt>$<mac>",
// an HMAC-SHA256 of the token keyed with a 16-byte random salt (both
// standard base64). Tokens hold at least 128 random bits (generated keys
// 256, the bootstrap key is checked), so one keyed hash is enough: the
// salt keeps equal tokens from having equal hashes and precomputed
// tables from applying.
func hashToken(tok string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	return "hmac-sha256$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(tokenMAC(salt, tok))
}

func tokenMAC(salt []byte, tok string) []byte {
	m := hmac.New(sha256.New, salt)
	m.Write([]byte(tok))
	return m.Sum(nil)
}

// verifyToken reports, in constant time, whether tok matches stored: a
// hashToken form, or the unsalted hex SHA-256 keys were stored as before
// (still read, never written).
func verifyToken(stored, tok string) bool {
	if rest, ok := strings.CutPrefix(stored, "hmac-sha256$"); ok {
		saltB64, macB64, ok := strings.Cut(rest, "$")
		salt, err1 := base64.StdEncoding.DecodeString(saltB64)
		want, err2 := base64.StdEncoding.DecodeString(macB64)
		if !ok || err1 != nil || err2 != nil || len(salt) == 0 {
			return false
		}
		return hmac.Equal(tokenMAC(salt, tok), want)
	}
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare([]byte(stored), []byte(hex.EncodeToString(sum[:]))) == 1
}

// tokenID returns the key id a token names.
func tokenID(tok string) string {
	parts := strings.SplitN(tok, "_", 3)
	if len(parts) == 3 && parts[0] == tokenPrefix && kvSafe(parts[1]) {
		return parts[1]
	}
	return bootstrapKeyID
}

// API keys change only through the methods below (CreateAPIKey,
// ensureBootstrapKey, RevokeAPIKey), each of which appends an audit entry:
// a key is never created before its entry is in the audit log (if the
// entry cannot be appended, the key is not created), and a revocation,
// which must never wait, is audited right after it takes effect (a
// failure to audit it is returned). On the broker, only the publisher's
// own (backend) identity may write the key bucket or the audit stream
// (broker.NATSPermissions).

// CreateAPIKey makes a new key with the given scopes and returns its token,
// which is shown only now. The audit entry is appended first; without it
// no key is created (the audit log's error is returned). Errors:
// ErrInvalid.
func (p *Publisher) CreateAPIKey(ctx context.Context, who Principal, name string, scopes []Scope) (string, APIKey, error) {
	if name == "" || len(name) > 128 {
		return "", APIKey{}, fmt.Errorf("%w: key name must be 1..128 bytes", ErrInvalid)
	}
	if len(scopes) == 0 {
		return "", APIKey{}, fmt.Errorf("%w: a key needs at least one scope", ErrInvalid)
	}
	for _, s := range scopes {
		if s.rank() == 0 {
			return "", APIKey{}, fmt.Errorf("%w: unknown scope %q", ErrInvalid, s)
		}
	}
	var id [6]byte
	var secret [32]byte
	rand.Read(id[:])
	rand.Read(secret[:])
	k := APIKey{
		ID: hex.EncodeToString(id[:]), Name: name, Scopes: slices.Clone(scopes),
		Created: p.cfg.Clock.Now().UTC(), CreatedBy: who.Name,
	}
	tok := tokenPrefix + "_" + k.ID + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	if err := p.appendAudit(ctx, who, "apikey.create", k.ID, fmt.Sprintf("name=%s scopes=%v", name, scopes)); err != nil {
		return "", APIKey{}, fmt.Errorf("publisher: API key not created: %w", err)
	}
	if _, err := createJSON(ctx, p.st.keys, "api key", k.ID, apiKeyRecord{APIKey: k, Hash: hashToken(tok)}); err != nil {
		p.audit(ctx, who, "apikey.create-failed", k.ID, err.Error())
		return "", APIKey{}, err
	}
	return tok, k, nil
}

// CheckBootstrapKey refuses a bootstrap key that cannot hold 128 random
// bits (the rule of CheckSecretStrength). Errors wrap ErrInvalid.
func CheckBootstrapKey(tok string) error {
	return checkStrength("bootstrap API key", tok, "for example `openssl rand -hex 32`")
}

// ensureBootstrapKey registers tok (Config.BootstrapKey) as an admin key
// when no key with its id exists: the id named by a fck_<id>_<secret>
// token, or "bootstrap" for any other token. A key with that id that
// exists already is left as it is, revoked or not, so a revoked bootstrap
// key stays revoked across restarts; when its hash is not tok's, the
// configured key is not the one registered and a warning says so. Like
// CreateAPIKey, it appends the audit entry (apikey.bootstrap) before the
// key exists, and registers nothing when it cannot. tok must pass
// CheckBootstrapKey (ErrInvalid).
func (p *Publisher) ensureBootstrapKey(ctx context.Context, tok string) error {
	if err := CheckBootstrapKey(tok); err != nil {
		return err
	}
	k := apiKeyRecord{
		APIKey: APIKey{ID: tokenID(tok), Name: "bootstrap", Scopes: []Scope{ScopeAdmin}, Created: p.cfg.Clock.Now().UTC(), CreatedBy: "config"},
		Hash:   hashToken(tok),
	}
	var cur apiKeyRecord
	_, err := getJSON(ctx, p.st.keys, "api key", k.ID, &cur)
	if err == nil {
		if !verifyToken(cur.Hash, tok) {
			p.log.Warn("the configured bootstrap API key is not the one registered under its id; it was not registered", "key_id", k.ID)
		}
		return nil
	}
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	if err := p.appendAudit(ctx, System, "apikey.bootstrap", k.ID, "registering the configured bootstrap key"); err != nil {
		return fmt.Errorf("publisher: bootstrap key not registered: %w", err)
	}
	_, err = createJSON(ctx, p.st.keys, "api key", k.ID, k)
	if errors.Is(err, ErrExists) {
		return nil // another instance registered it, with its own entry
	}
	if err != nil {
		p.audit(ctx, System, "apikey.bootstrap-failed", k.ID, err.Error())
	}
	return err
}

// Authenticate returns the principal of token. Errors: ErrUnauthorized for
// an empty, unknown or revoked token.
func (p *Publisher) Authenticate(ctx context.Context, tok string) (Principal, error) {
	if tok == "" {
		return Principal{}, fmt.Errorf("%w: no API key given", ErrUnauthorized)
	}
	var k apiKeyRecord
	if _, err := getJSON(ctx, p.st.keys, "api key", tokenID(tok), &k); err != nil {
		if errors.Is(err, ErrNotFound) {
			return Principal{}, fmt.Errorf("%w: unknown API key", ErrUnauthorized)
		}
		return Principal{}, err
	}
	if !verifyToken(k.Hash, tok) {
		return Principal{}, fmt.Errorf("%w: unknown API key", ErrUnauthorized)
	}
	if k.Revoked != nil {
		return Principal{}, fmt.Errorf("%w: API key %s was revoked", ErrUnauthorized, k.ID)
	}
	return Principal{KeyID: k.ID, Name: k.Name, Scopes: k.Scopes}, nil
}

// APIKeys lists the keys (neither tokens nor their hashes), oldest first.
func (p *Publisher) APIKeys(ctx context.Context) ([]APIKey, error) {
	ids, err := listKeys(ctx, p.st.keys)
	if err != nil {
		return nil, err
	}
	out := make([]APIKey, 0, len(ids))
	for _, id := range ids {
		var k apiKeyRecord
		if _, err := getJSON(ctx, p.st.keys, "api key", id, &k); err == nil {
			out = append(out, k.APIKey)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// RevokeAPIKey revokes key id; it is kept, marked revoked, for the audit
// trail. The revocation takes effect first and is then audited; when the
// audit entry cannot be appended the key stays revoked and the audit
// log's error is returned. Errors: ErrNotFound, ErrState when already
// revoked.
func (p *Publisher) RevokeAPIKey(ctx context.Context, who Principal, id string) error {
	if !kvSafe(id) {
		return fmt.Errorf("%w: key id %q", ErrInvalid, id)
	}
	now := p.cfg.Clock.Now().UTC()
	_, _, err := mutateJSON(ctx, p.st.keys, "api key", id, func(k *apiKeyRecord) error {
		if k.Revoked != nil {
			return fmt.Errorf("%w: API key %s already revoked", ErrState, id)
		}
		k.Revoked = &now
		return nil
	})
	if err != nil {
		return err
	}
	if err := p.appendAudit(ctx, who, "apikey.revoke", id, ""); err != nil {
		return fmt.Errorf("publisher: API key %s revoked, but not audited: %w", id, err)
	}
	return nil
}
