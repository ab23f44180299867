package broker

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/firmcast/firmcast/schemas"
)

// Role is what an authenticated identity may do on the broker.
type Role uint8

// Roles.
const (
	// RoleDevice: one device. It reads its own notices, its own chunk
	// replies, its class's announcements and image chunk broadcasts; it
	// writes its own reports and chunk requests. Nothing else.
	RoleDevice Role = iota + 1
	// RoleBackend: the publisher itself, each instance with an account of
	// its own. It may publish and subscribe to anything under the topic
	// root and, on NATS, owns the JetStream state (the JetStream, KV and
	// object-store APIs): campaigns, the registry, API keys, the audit
	// log. Give it to nothing but a publisher.
	RoleBackend
	// RoleService: a program that calls the campaign API over NATS
	// request/reply (schemas.Topics.API("campaign.<op>")). It may publish
	// campaign API requests and read the replies on its own inbox
	// (root.v1.api.inbox.<user>.>, so it dials with its user name as
	// client id), nothing else: no JetStream, no device topics, no other
	// inbox, and nothing at all on MQTT. What a request may do is decided
	// by the API key it carries, exactly as over HTTP.
	RoleService
)

func (r Role) String() string {
	switch r {
	case RoleDevice:
		return "device"
	case RoleBackend:
		return "backend"
	case RoleService:
		return "service"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// ParseRole parses "device", "backend" or "service".
func ParseRole(s string) (Role, error) {
	switch s {
	case "device":
		return RoleDevice, nil
	case "backend":
		return RoleBackend, nil
	case "service":
		return RoleService, nil
	}
	return 0, fmt.Errorf("%w: role %q (want device, backend or service)", ErrBadCredentials, s)
}

// Identity is who a broker client is, once authenticated.
type Identity struct {
	// Username is the broker user name: the device id for devices.
	Username string
	Role     Role
	// Device is the device id (RoleDevice only; equal to Username).
	Device string
	// Class is the device class whose announcements the device may read;
	// empty means none.
	Class string
}

// Authenticator looks up the identity of a broker client from the user
// name and secret it presented. It is the one thing the embedded brokers
// ask of a credential store; the backend's device registry implements it
// too. Authenticate returns ErrNotAuthorized (wrapped) for an unknown user
// or a wrong secret, and must compare secrets in constant time. It must be
// safe for concurrent use and should not block for long (it runs on the
// broker's connection path).
type Authenticator interface {
	Authenticate(ctx context.Context, username, secret string) (Identity, error)
}

// Credential is one entry of a CredentialStore.
type Credential struct {
	Identity
	// SecretHash is "sha256:" plus the lowercase hex SHA-256 of the secret.
	SecretHash string
}

// HashSecret returns the stored form of a secret: "sha256:<hex>". Device
// secrets are machine-generated random strings of at least 128 bits, so a
// fast hash is enough (it is not a password hash).
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CredentialStore is an in-memory Authenticator holding hashed secrets.
// It is safe for concurrent use. The zero value is an empty store.
type CredentialStore struct {
	mu    sync.RWMutex
	creds map[string]Credential
}

// NewCredentialStore returns an empty store.
func NewCredentialStore() *CredentialStore { return &CredentialStore{} }

// Add stores (or replaces) the credential of id with secret, hashed.
// Identifiers must be valid topic segments; a device's Device must equal
// its Username (it is set when empty). Bad input returns
// ErrBadCredentials.
func (s *CredentialStore) Add(id Identity, secret string) error {
	if secret == "" {
		return fmt.Errorf("%w: user %q has an empty secret", ErrBadCredentials, id.Username)
	}
	return s.AddHashed(Credential{Identity: id, SecretHash: HashSecret(secret)})
}

// AddHashed stores a credential whose secret is already hashed.
func (s *CredentialStore) AddHashed(c Credential) error {
	if err := schemas.CheckID("user name", c.Username); err != nil {
		return fmt.Errorf("%w: %v", ErrBadCredentials, err)
	}
	switch c.Role {
	case RoleDevice:
		if c.Device == "" {
			c.Device = c.Username
		}
		if c.Device != c.Username {
			return fmt.Errorf("%w: device %q must use its device id as user name, not %q", ErrBadCredentials, c.Device, c.Username)
		}
		if c.Class != "" {
			if err := schemas.CheckID("class id", c.Class); err != nil {
				return fmt.Errorf("%w: %v", ErrBadCredentials, err)
			}
		}
	case RoleBackend, RoleService:
		c.Device, c.Class = "", ""
	default:
		return fmt.Errorf("%w: user %q has no role", ErrBadCredentials, c.Username)
	}
	if !strings.HasPrefix(c.SecretHash, "sha256:") || len(c.SecretHash) != len("sha256:")+64 {
		return fmt.Errorf("%w: user %q: secret hash is not sha256:<64 hex digits>", ErrBadCredentials, c.Username)
	}
	if _, err := hex.DecodeString(c.SecretHash[len("sha256:"):]); err != nil {
		return fmt.Errorf("%w: user %q: secret hash is not hex", ErrBadCredentials, c.Username)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.creds == nil {
		s.creds = map[string]Credential{}
	}
	s.creds[c.Username] = c
	return nil
}

// Remove deletes the credential of username and reports whether there
// was one. Live sessions are not affected: the embedded servers'
// Disconnect ends them.
func (s *CredentialStore) Remove(username string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.creds[username]
	delete(s.creds, username)
	return ok
}

// Authenticate implements Authenticator.
func (s *CredentialStore) Authenticate(_ context.Context, username, secret string) (Identity, error) {
	s.mu.RLock()
	c, ok := s.creds[username]
	s.mu.RUnlock()
	want := c.SecretHash
	if !ok {
		want = HashSecret("\x00no such user") // keep the timing of a miss like a hit
	}
	got := HashSecret(secret)
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 || !ok {
		return Identity{}, fmt.Errorf("%w: bad user name or secret for %q", ErrNotAuthorized, username)
	}
	return c.Identity, nil
}

// LookupIdentity implements IdentityLookup: the identity of username,
// or ErrNotAuthorized (wrapped) when there is none.
func (s *CredentialStore) LookupIdentity(_ context.Context, username string) (Identity, error) {
	s.mu.RLock()
	c, ok := s.creds[username]
	s.mu.RUnlock()
	if !ok {
		return Identity{}, fmt.Errorf("%w: unknown user %q", ErrNotAuthorized, username)
	}
	return c.Identity, nil
}

// Credentials returns every credential, sorted by user name.
func (s *CredentialStore) Credentials() []Credential {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Credential, 0, len(s.creds))
	for _, c := range s.creds {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Username < out[j].Username })
	return out
}

// Account is one credentials-file entry: an identity with its secret in
// clear (needed to derive a mosquitto hash) or already hashed.
type Account struct {
	Identity
	// Secret is the clear secret; empty when only SecretHash is known.
	Secret string
	// SecretHash is the stored form ("sha256:<hex>", see HashSecret).
	SecretHash string
}

// ReadAccounts parses a credentials file. One entry per line, fields
// separated by whitespace, "#" starts a comment:
//
//	backend <user> <secret>
//	service <user> <secret>
//	device  <device-id> <secret> [<class>]
//
// (roles: RoleBackend, RoleService, RoleDevice). A secret written as "sha256:<hex>" is taken as already hashed (such an
// entry can serve the embedded brokers but not the mosquitto export, which
// needs the clear secret to derive its own hash). Errors wrap
// ErrBadCredentials and name the line.
func ReadAccounts(r io.Reader) ([]Account, error) {
	var out []Account
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		role, err := ParseRole(f[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(f) < 3 || (role != RoleDevice && len(f) != 3) || len(f) > 4 {
			return nil, fmt.Errorf("%w: line %d: want \"backend USER SECRET\", \"service USER SECRET\" or \"device ID SECRET [CLASS]\"", ErrBadCredentials, n)
		}
		a := Account{Identity: Identity{Username: f[1], Role: role}}
		if role == RoleDevice {
			a.Device = f[1]
		}
		if len(f) == 4 {
			a.Class = f[3]
		}
		if strings.HasPrefix(f[2], "sha256:") {
			a.SecretHash = f[2]
		} else {
			a.Secret, a.SecretHash = f[2], HashSecret(f[2])
		}
		if err := (&CredentialStore{}).AddHashed(Credential{Identity: a.Identity, SecretHash: a.SecretHash}); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if prev, dup := seen[a.Username]; dup {
			return nil, fmt.Errorf("%w: line %d: user %q already defined on line %d", ErrBadCredentials, n, a.Username, prev)
		}
		seen[a.Username] = n
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: reading credentials: %v", ErrBadCredentials, err)
	}
	return out, nil
}

// NewCredentialStoreFrom builds a store from accounts.
func NewCredentialStoreFrom(accounts []Account) (*CredentialStore, error) {
	s := NewCredentialStore()
	for _, a := range accounts {
		h := a.SecretHash
		if h == "" {
			if a.Secret == "" {
				return nil, fmt.Errorf("%w: user %q has no secret", ErrBadCredentials, a.Username)
			}
			h = HashSecret(a.Secret)
		}
		if err := s.AddHashed(Credential{Identity: a.Identity, SecretHash: h}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// LoadCredentials reads a credentials file (see ReadAccounts) into a
// store.
func LoadCredentials(r io.Reader) (*CredentialStore, error) {
	as, err := ReadAccounts(r)
	if err != nil {
		return nil, err
	}
	return NewCredentialStoreFrom(as)
}

// LoadCredentialsFile is LoadCredentials on a file.
func LoadCredentialsFile(path string) (*CredentialStore, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCredentials, err)
	}
	defer f.Close()
	s, err := LoadCredentials(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
