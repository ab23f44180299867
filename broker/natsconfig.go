package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
)

// DefaultNATSAccount is the NATS account NATSConfig puts every firmcast
// user in.
const DefaultNATSAccount = "FIRMCAST"

// NATSBcryptCost is the bcrypt cost of the password hashes NATSConfig
// writes: bcrypt's minimum. nats-server checks the hash on every CONNECT,
// and device secrets are at least 128 random bits, which no work factor
// makes harder to guess; the hash only keeps the file from giving the
// secrets away.
const NATSBcryptCost = bcrypt.MinCost

// NATSSpec is what NATSConfig exports. It is taken by value.
type NATSSpec struct {
	// Topics is the root the policy protects. Default root "firmcast".
	Topics schemas.Topics
	// Accounts are the backend, service and device identities, each with
	// its clear Secret (the file holds a bcrypt hash of it). At least one
	// backend account is required.
	Accounts []Account
	// Account names the NATS account the users share (its JetStream holds
	// the publisher's state and the retained notices). Default
	// DefaultNATSAccount.
	Account string
	// Cost is the bcrypt cost. Default NATSBcryptCost.
	Cost int
}

// NATSFiles names the files NATSConfig wrote.
type NATSFiles struct {
	// Conf is the nats-server configuration fragment: pass it with -c (and
	// the listen, JetStream and cluster settings as flags) or include it
	// from nats-server.conf.
	Conf string
}

// NATSConfig writes, into dir (created if needed), firmcast's access
// policy for an external nats-server (2.9.10 and later), the same one the
// embedded server enforces (NATSPermissions):
//
//   - firmcast.conf: one NATS account (spec.Account, JetStream enabled)
//     whose users are the accounts, each with a bcrypt password hash and
//     the permissions of its role: a backend (the publisher) everything
//     under the topic root and the JetStream, KV and object-store APIs; a
//     service only campaign API requests and its own inbox; a device only
//     its own topics and the direct get of its own notice. Users not in
//     the file cannot connect (no anonymous access). Mode 0600.
//
// All roles share one account, so that devices can read their retained
// notices from the backend's JetStream; what confines a service or a
// device is its permissions, which grant it no JetStream API at all (but
// a device's own direct get). Device permissions name each device, so the
// file grows with the fleet: devices registered later through the API
// are not in it. The file is written atomically (write, fsync, rename).
// Bad input returns ErrBadCredentials.
func NATSConfig(dir string, spec NATSSpec) (NATSFiles, error) {
	if spec.Topics.Root() == "" {
		spec.Topics = schemas.MustTopics("")
	}
	if spec.Account == "" {
		spec.Account = DefaultNATSAccount
	}
	if err := schemas.CheckID("nats account", spec.Account); err != nil || strings.ContainsAny(spec.Account, `"\`) {
		return NATSFiles{}, fmt.Errorf("%w: nats account name %q", ErrBadCredentials, spec.Account)
	}
	if spec.Cost <= 0 {
		spec.Cost = NATSBcryptCost
	}
	conf, err := natsAccountsConf(spec)
	if err != nil {
		return NATSFiles{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return NATSFiles{}, fmt.Errorf("broker: nats config dir: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return NATSFiles{}, fmt.Errorf("broker: nats config dir: %w", err)
	}
	files := NATSFiles{Conf: filepath.Join(abs, "firmcast.conf")}
	if err := atomicfile.WriteFile(files.Conf, conf, 0o600); err != nil {
		return NATSFiles{}, fmt.Errorf("broker: %w", err)
	}
	return files, nil
}

// natsUser is one entry of an account's users list.
type natsUser struct {
	User        string              `json:"user"`
	Password    string              `json:"password"`
	Permissions *server.Permissions `json:"permissions"`
}

// natsAccountsConf returns the configuration text of spec.
func natsAccountsConf(spec NATSSpec) ([]byte, error) {
	policy := Policy{Topics: spec.Topics}
	var users []natsUser
	seen := map[string]bool{}
	backends := 0
	for _, a := range spec.Accounts {
		if a.Secret == "" {
			return nil, fmt.Errorf("%w: user %q: the nats export needs the clear secret, not only its hash", ErrBadCredentials, a.Username)
		}
		if err := (&CredentialStore{}).Add(a.Identity, a.Secret); err != nil {
			return nil, err
		}
		if strings.ContainsAny(a.Username, `"\`) {
			return nil, fmt.Errorf("%w: user %q: a quote or backslash in a nats user name", ErrBadCredentials, a.Username)
		}
		if seen[a.Username] {
			return nil, fmt.Errorf("%w: user %q listed twice", ErrBadCredentials, a.Username)
		}
		seen[a.Username] = true
		if len(a.Secret) > 72 {
			// bcrypt reads 72 bytes at most: a longer secret would be
			// checked on its prefix only.
			return nil, fmt.Errorf("%w: user %q: secret longer than 72 bytes (bcrypt's limit)", ErrBadCredentials, a.Username)
		}
		h, err := bcrypt.GenerateFromPassword([]byte(a.Secret), spec.Cost)
		if err != nil {
			return nil, fmt.Errorf("broker: bcrypt for %q: %w", a.Username, err)
		}
		if a.Role == RoleBackend {
			backends++
		}
		users = append(users, natsUser{User: a.Username, Password: string(h), Permissions: NATSPermissions(policy, a.Identity)})
	}
	if backends == 0 {
		return nil, fmt.Errorf("%w: no backend account (the publisher owns the JetStream state)", ErrBadCredentials)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `# firmcast broker access policy (generated by firmcast broker nats-config)
# for nats-server 2.9.10 and later, topic root %q.
# Roles: backend (the publisher: everything under the root, JetStream),
# service (campaign API requests and its own inbox), device (its own
# topics and the direct get of its own notice). No anonymous access.
# Pass this file with -c (listen, JetStream and cluster settings as flags)
# or include it from nats-server.conf.
accounts: `, spec.Topics.Root())
	// The configuration format takes JSON values, but none of JSON's \u
	// escapes: keep ">" and "<" as they are. User names are topic
	// segments and hashes are [./$0-9A-Za-z], so nothing else needs one.
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]any{spec.Account: map[string]any{"jetstream": "enabled", "users": users}}); err != nil {
		return nil, fmt.Errorf("broker: nats config: %w", err)
	}
	return b.Bytes(), nil
}
