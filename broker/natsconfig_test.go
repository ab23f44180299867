package broker_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/schemas"
)

// TestNATSConfig: the file `firmcast broker nats-config` writes holds
// every account once, with a bcrypt hash of its secret and exactly the
// permissions the embedded server gives its role, and nats-server 2.9.10
// accepts it. (The access matrix in internal/hostile checks what a
// nats-server started with it lets each role do.)
func TestNATSConfig(t *testing.T) {
	topics := schemas.MustTopics("acme/fc")
	accounts := append(aclAccounts(), broker.Account{Identity: broker.Identity{Username: "svc", Role: broker.RoleService}, Secret: "svc-secret-0123456789"})
	files, err := broker.NATSConfig(t.TempDir(), broker.NATSSpec{Topics: topics, Accounts: accounts})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(files.Conf)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(files.Conf); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	_, js, ok := strings.Cut(string(b), "accounts: ")
	if !ok {
		t.Fatalf("no accounts block:\n%s", b)
	}
	var conf map[string]struct {
		JetStream string `json:"jetstream"`
		Users     []struct {
			User        string              `json:"user"`
			Password    string              `json:"password"`
			Permissions *server.Permissions `json:"permissions"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(js), &conf); err != nil {
		t.Fatalf("accounts block: %v", err)
	}
	acc, ok := conf[broker.DefaultNATSAccount]
	if !ok || len(conf) != 1 || acc.JetStream != "enabled" {
		t.Fatalf("accounts %v, want one %s account with JetStream", conf, broker.DefaultNATSAccount)
	}
	if len(acc.Users) != len(accounts) {
		t.Fatalf("%d users, want %d", len(acc.Users), len(accounts))
	}
	for i, u := range acc.Users {
		a := accounts[i]
		if u.User != a.Username {
			t.Errorf("user %d is %q, want %q", i, u.User, a.Username)
		}
		if strings.Contains(string(b), a.Secret) || bcrypt.CompareHashAndPassword([]byte(u.Password), []byte(a.Secret)) != nil {
			t.Errorf("%s: the password is not a bcrypt hash of its secret", a.Username)
		}
		if want := broker.NATSPermissions(broker.Policy{Topics: topics}, a.Identity); !reflect.DeepEqual(u.Permissions, want) {
			t.Errorf("%s: permissions %+v, want the embedded server's %+v", a.Username, u.Permissions, want)
		}
	}
	if bin, err := brokerproc.LookBinary("nats-server"); err == nil {
		if out, err := exec.Command(bin, "-c", files.Conf, "-t").CombinedOutput(); err != nil {
			t.Errorf("nats-server -t refuses the file: %v\n%s", err, out)
		}
	}

	backend := accounts[0]
	svc := accounts[len(accounts)-1]
	for name, bad := range map[string][]broker.Account{
		"no backend":        {svc},
		"hash only":         {backend, {Identity: svc.Identity, SecretHash: broker.HashSecret("x")}},
		"twice":             {backend, svc, svc},
		"secret too long":   {backend, {Identity: svc.Identity, Secret: strings.Repeat("s", 73)}},
		"quote in a name":   {backend, {Identity: broker.Identity{Username: `s"vc`, Role: broker.RoleService}, Secret: "x"}},
		"device without id": {backend, {Identity: broker.Identity{Username: "d/1", Role: broker.RoleDevice}, Secret: "x"}},
	} {
		if _, err := broker.NATSConfig(t.TempDir(), broker.NATSSpec{Topics: topics, Accounts: bad}); !errors.Is(err, broker.ErrBadCredentials) {
			t.Errorf("%s: %v, want ErrBadCredentials", name, err)
		}
	}
}
