package publisher

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
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

// Removing a device ends its live sessions on the embedded brokers (the
// stack wires Config.OnDeviceRemoved to their Disconnect), and it cannot
// connect again; another device keeps its session.
func TestRemovedDeviceDisconnected(t *testing.T) {
	e := newEnv(t)
	var mq atomic.Pointer[broker.MQTTServer]
	var ns atomic.Pointer[broker.NATSServer]
	p, _ := e.start(func(c *Config) {
		c.OnDeviceRemoved = func(id string) {
			if s := mq.Load(); s != nil {
				s.Disconnect(id)
			}
			if s := ns.Load(); s != nil {
				s.Disconnect(id)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	auth := p.DeviceAuthenticator(nil)
	mq.Store(testutil.StartMochi(t, broker.MQTTServerConfig{Auth: auth}))
	ns.Store(testutil.StartNATS(t, broker.NATSServerConfig{Auth: auth}))
	secrets := map[string]string{}
	for _, id := range []string{"dev-gone", "dev-stays"} {
		_, s, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: id, Class: "c"})
		if err != nil {
			t.Fatal(err)
		}
		secrets[id] = s
	}
	// Each device holds one MQTT session and one NATS connection; closed
	// reports when either ends.
	type session struct{ mqtt, nats chan struct{} }
	open := func(id string) (session, error) {
		s := session{make(chan struct{}), make(chan struct{})}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(mq.Load().URL(), "mqtt://"))
		if err != nil {
			return s, err
		}
		var once atomic.Bool
		gone := func() {
			if once.CompareAndSwap(false, true) {
				close(s.mqtt)
			}
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnServerDisconnect: func(*paho.Disconnect) { gone() }, OnClientError: func(error) { gone() }})
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, UsernameFlag: true, PasswordFlag: true,
			Username: id, Password: []byte(secrets[id])})
		if err != nil || ca.ReasonCode != 0 {
			conn.Close()
			return s, errors.New("mqtt connect refused")
		}
		t.Cleanup(func() { conn.Close() })
		nc, err := nats.Connect(ns.Load().URL(), nats.UserInfo(id, secrets[id]), nats.NoReconnect(),
			nats.ClosedHandler(func(*nats.Conn) { close(s.nats) }))
		if err != nil {
			return s, err
		}
		t.Cleanup(nc.Close)
		return s, nil
	}
	gone, err := open("dev-gone")
	if err != nil {
		t.Fatal(err)
	}
	stays, err := open("dev-stays")
	if err != nil {
		t.Fatal(err)
	}
	f := &apiFixture{p: p}
	f.srv = newHTTPServer(t, p)
	if code, body := f.do(t, "DELETE", "/api/v1/devices/dev-gone", testAdminKey, ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	for name, ch := range map[string]chan struct{}{"mqtt": gone.mqtt, "nats": gone.nats} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Errorf("the removed device's %s session is still open", name)
		}
	}
	select {
	case <-stays.mqtt:
		t.Error("another device's MQTT session was closed")
	case <-stays.nats:
		t.Error("another device's NATS connection was closed")
	default:
	}
	if _, err := open("dev-gone"); err == nil {
		t.Error("the removed device connected again")
	}
}

func newHTTPServer(t *testing.T, p *Publisher) *httptest.Server {
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	return srv
}
