package broker_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// revocable is a credential store whose dev1 is removed by revoke, as a
// stack does once the registry removed the device.
type revocable struct {
	*broker.CredentialStore
	revoked atomic.Bool
}

func (r *revocable) revoke(t *testing.T) {
	r.revoked.Store(true)
	if !r.Remove("dev1") || r.Remove("dev1") {
		t.Error("Remove: dev1 was not there exactly once")
	}
}

func (r *revocable) Authenticate(ctx context.Context, user, secret string) (broker.Identity, error) {
	id, err := r.CredentialStore.Authenticate(ctx, user, secret)
	if err == nil && r.revoked.Load() && user == "dev1" {
		return broker.Identity{}, fmt.Errorf("test: %s authenticated after its removal", user)
	}
	return id, err
}

// A device removed from the registry loses its live sessions on the
// embedded brokers at once: Disconnect closes them (and only them), and
// the device cannot come back.
func TestDisconnectRemovedDevice(t *testing.T) {
	newAuth := func() *revocable {
		s := broker.NewCredentialStore()
		for _, id := range []string{"dev1", "dev2"} {
			if err := s.Add(broker.Identity{Username: id, Role: broker.RoleDevice, Device: id}, id+"-secret-0123456789abcdef"); err != nil {
				t.Fatal(err)
			}
		}
		return &revocable{CredentialStore: s}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("mochi", func(t *testing.T) {
		auth := newAuth()
		srv := testutil.StartMochi(t, broker.MQTTServerConfig{Auth: auth})
		host := strings.TrimPrefix(srv.URL(), "mqtt://")
		dial := func(id string) (*paho.Client, chan struct{}, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
			if err != nil {
				return nil, nil, err
			}
			gone := make(chan struct{})
			var once atomic.Bool
			done := func() {
				if once.CompareAndSwap(false, true) {
					close(gone)
				}
			}
			c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn),
				OnServerDisconnect: func(*paho.Disconnect) { done() },
				OnClientError:      func(error) { done() }})
			ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, UsernameFlag: true, PasswordFlag: true,
				Username: id, Password: []byte(id + "-secret-0123456789abcdef")})
			if err != nil {
				conn.Close()
				return nil, nil, err
			}
			if ca.ReasonCode != 0 {
				conn.Close()
				return nil, nil, fmt.Errorf("connect refused: reason %d", ca.ReasonCode)
			}
			t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}); conn.Close() })
			return c, gone, nil
		}
		_, gone1, err := dial("dev1")
		if err != nil {
			t.Fatal(err)
		}
		_, gone2, err := dial("dev2")
		if err != nil {
			t.Fatal(err)
		}
		auth.revoke(t)
		if n := srv.Disconnect("dev1"); n != 1 {
			t.Errorf("Disconnect closed %d sessions, want 1", n)
		}
		select {
		case <-gone1:
		case <-ctx.Done():
			t.Fatal("the removed device's session is still open")
		}
		select {
		case <-gone2:
			t.Error("another device's session was closed")
		default:
		}
		if _, _, err := dial("dev1"); err == nil {
			t.Error("the removed device connected again")
		}
		if n := srv.Disconnect("nobody"); n != 0 {
			t.Errorf("Disconnect of an unknown user closed %d", n)
		}
	})

	t.Run("nats", func(t *testing.T) {
		auth := newAuth()
		srv := testutil.StartNATS(t, broker.NATSServerConfig{Auth: auth})
		dial := func(id string) (*nats.Conn, chan struct{}, error) {
			gone := make(chan struct{})
			nc, err := nats.Connect(srv.URL(), nats.UserInfo(id, id+"-secret-0123456789abcdef"), nats.NoReconnect(),
				nats.ClosedHandler(func(*nats.Conn) { close(gone) }))
			if err != nil {
				return nil, nil, err
			}
			t.Cleanup(nc.Close)
			return nc, gone, nil
		}
		_, gone1, err := dial("dev1")
		if err != nil {
			t.Fatal(err)
		}
		_, gone2, err := dial("dev2")
		if err != nil {
			t.Fatal(err)
		}
		auth.revoke(t)
		if n := srv.Disconnect("dev1"); n != 1 {
			t.Errorf("Disconnect closed %d connections, want 1", n)
		}
		select {
		case <-gone1:
		case <-ctx.Done():
			t.Fatal("the removed device's connection is still open")
		}
		select {
		case <-gone2:
			t.Error("another device's connection was closed")
		default:
		}
		if _, _, err := dial("dev1"); err == nil {
			t.Error("the removed device connected again")
		}
	})
}
