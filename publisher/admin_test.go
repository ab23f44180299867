package publisher

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/broker"
)

// A device may not be registered under a backend identity's name (built
// in, or a deployment's backend user), nor under the prefix of the client
// ids the backend generates; and a device record with such a name (one
// written before the rule) can neither stand in for the backend nor lock
// it out of the embedded brokers' authenticator.
func TestDeviceCannotTakeBackendName(t *testing.T) {
	const backendUser, backendSecret = "hostile-backend", "backend-secret-0123456789abcdef"
	e := newEnv(t)
	p, _ := e.start(func(c *Config) { c.ReservedNames = []string{backendUser} })
	ctx := context.Background()
	who := e.who(p)
	for _, id := range []string{"publisher", "Publisher", "backend", "firmcast", "fc-0123456789ab", "FC-x", "firmcast-backend", backendUser, "Hostile-Backend"} {
		_, _, err := p.AddDevice(ctx, who, NewDevice{ID: id, Class: "c"})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("AddDevice(%q): %v, want ErrInvalid saying it is reserved", id, err)
		}
	}
	if _, _, err := p.AddDevice(ctx, who, NewDevice{ID: "dev-fc-1", Class: "c"}); err != nil {
		t.Errorf("an ordinary id: %v", err)
	}
	// A record registered under the backend's name before the rule: the
	// backend still authenticates with its own secret, and the record's
	// secret does not make its holder a device named like the backend.
	devSecret := "device-secret-0123456789abcdef0"
	h, err := HashSecret(devSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := createJSON(ctx, p.st.devices, "device", backendUser, deviceRecord{Device: Device{ID: backendUser, Class: "c"}, SecretHash: h}); err != nil {
		t.Fatal(err)
	}
	backends := broker.NewCredentialStore()
	if err := backends.Add(broker.Identity{Username: backendUser, Role: broker.RoleBackend}, backendSecret); err != nil {
		t.Fatal(err)
	}
	auth := p.DeviceAuthenticator(backends)
	if id, err := auth.Authenticate(ctx, backendUser, backendSecret); err != nil || id.Role != broker.RoleBackend {
		t.Errorf("the backend is locked out by a device record of its name: %+v, %v", id, err)
	}
	if id, err := auth.Authenticate(ctx, backendUser, devSecret); err == nil {
		t.Errorf("a device record named like the backend authenticated: %+v", id)
	}
}

func newHTTPServer(t *testing.T, p *Publisher) *httptest.Server {
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	return srv
}
