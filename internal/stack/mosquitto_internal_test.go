package stack

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
)

// TestMosquittoSyncLines: the password file holds the backend accounts,
// then the registry's devices (a record named like a backend account is
// left out), then the credentials' device accounts the registry does not
// hold; services never.
func TestMosquittoSyncLines(t *testing.T) {
	acct := func(user string, role broker.Role, secret string) broker.Account {
		return broker.Account{Identity: broker.Identity{Username: user, Role: role, Device: map[bool]string{true: user}[role == broker.RoleDevice]}, Secret: secret}
	}
	path := filepath.Join(t.TempDir(), "passwd")
	m, err := newMosquittoSync(path, 0, "", 0, []broker.Account{
		acct("be-1", broker.RoleBackend, "backend-secret-0123456789abcdef"),
		acct("svc", broker.RoleService, "service-secret-0123456789abcdef"),
		acct("gw-1", broker.RoleDevice, "gateway-secret-0123456789abcdef"),
		acct("gw-2", broker.RoleDevice, "gateway-secret-0123456789abcdef"),
	}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	m.devices = func(context.Context) ([]string, error) {
		return []string{"be-1:$7$101$AAAA$BBBB", "dev-1:$7$101$CCCC$DDDD", "gw-2:$7$101$EEEE$FFFF"}, nil
	}
	if err := m.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		u, hash, _ := strings.Cut(l, ":")
		users = append(users, u)
		if u == "be-1" && hash == "$7$101$AAAA$BBBB" {
			t.Error("a device record replaced the backend account's line")
		}
		if u == "gw-2" && hash != "$7$101$EEEE$FFFF" {
			t.Error("the registry's gw-2 did not replace the credentials' device account")
		}
	}
	if want := []string{"be-1", "dev-1", "gw-2", "gw-1"}; !slices.Equal(users, want) {
		t.Errorf("users %v, want %v", users, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("password file mode %v, %v; want 0600", fi.Mode(), err)
	}
}

func TestMosquittoSyncConfigRefused(t *testing.T) {
	be := broker.Account{Identity: broker.Identity{Username: "be-1", Role: broker.RoleBackend}, Secret: "backend-secret-0123456789abcdef"}
	hashed := broker.Account{Identity: broker.Identity{Username: "dev-h", Role: broker.RoleDevice, Device: "dev-h"}, SecretHash: "sha256:00"}
	for _, c := range []struct {
		name    string
		pid     int
		pidFile string
		gap     int
		accts   []broker.Account
	}{
		{"pid and pid file", 12, "/run/mosquitto.pid", 0, []broker.Account{be}},
		{"negative pid", -1, "", 0, []broker.Account{be}},
		{"negative gap", 0, "", -1, []broker.Account{be}},
		{"account without clear secret", 0, "", 0, []broker.Account{be, hashed}},
	} {
		if _, err := newMosquittoSync("p", c.pid, c.pidFile, time.Duration(c.gap), c.accts, slog.Default()); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}
