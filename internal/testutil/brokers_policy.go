package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// Dial connects to a broker with cfg (broker.Dial) and closes the
// transport at cleanup. It fails the test when the connection is not up
// within 10 seconds.
func Dial(t testing.TB, cfg broker.Config) broker.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("testutil.Dial %s: %v", cfg.URL, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Close(ctx)
	})
	return tr
}

// StartMosquittoWithPolicy starts a mosquitto process (StartMosquitto)
// enforcing the access policy for topics and accounts through the files
// broker.MosquittoConfig generates, exactly as `firmcast broker
// mosquitto-config` would write them. Accounts need clear secrets.
func StartMosquittoWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	files, err := broker.MosquittoConfig(t.TempDir(), broker.MosquittoSpec{Topics: topics, Accounts: accounts})
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	conf, err := os.ReadFile(files.Conf)
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	return StartMosquitto(t, string(conf))
}

// CredentialStore builds a broker.CredentialStore from accounts, failing
// the test on bad input. Pass it as Auth to StartMochi / StartNATS.
func CredentialStore(t testing.TB, accounts []broker.Account) *broker.CredentialStore {
	t.Helper()
	s, err := broker.NewCredentialStoreFrom(accounts)
	if err != nil {
		t.Fatalf("CredentialStore: %v", err)
	}
	return s
}

// StartNATSProcessWithPolicy starts a nats-server process
// (StartNATSProcess: Debian's 2.9.10 on this machine) whose users are
// accounts, each with the permissions broker.NATSPermissions gives its
// identity, written to a configuration file. Accounts need clear secrets.
// (Until `firmcast broker nats-config` exists, this is the external
// server's configuration the tests check.)
func StartNATSProcessWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	type user struct {
		User        string              `json:"user"`
		Password    string              `json:"password"`
		Permissions *server.Permissions `json:"permissions"`
	}
	var users []user
	for _, a := range accounts {
		if a.Secret == "" {
			t.Fatalf("StartNATSProcessWithPolicy: account %s has no clear secret", a.Username)
		}
		users = append(users, user{a.Username, a.Secret, broker.NATSPermissions(broker.Policy{Topics: topics}, a.Identity)})
	}
	// The configuration format takes JSON values, but none of its \u
	// escapes: keep ">" as it is.
	var b bytes.Buffer
	b.WriteString("authorization: ")
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"users": users}); err != nil {
		t.Fatalf("StartNATSProcessWithPolicy: %v", err)
	}
	conf := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(conf, b.Bytes(), 0o600); err != nil {
		t.Fatalf("StartNATSProcessWithPolicy: %v", err)
	}
	return StartNATSProcess(t, "-c", conf)
}
