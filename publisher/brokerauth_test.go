package publisher

import (
	"context"
	"errors"
	"testing"

	"github.com/firmcast/firmcast/broker"
)

func TestDeviceAuthenticator(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-1", Class: "sensor", Secret: "s3cret-s3cret-0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	backends := broker.NewCredentialStore()
	if err := backends.Add(broker.Identity{Username: "backend", Role: broker.RoleBackend}, "backend-secret"); err != nil {
		t.Fatal(err)
	}
	auth := p.DeviceAuthenticator(backends)
	id, err := auth.Authenticate(ctx, "dev-1", "s3cret-s3cret-0123456789abcdef")
	if err != nil || id.Role != broker.RoleDevice || id.Device != "dev-1" || id.Class != "sensor" {
		t.Errorf("device: %+v, %v", id, err)
	}
	if _, err := auth.Authenticate(ctx, "dev-1", "wrong"); !errors.Is(err, broker.ErrNotAuthorized) {
		t.Errorf("wrong secret: %v", err)
	}
	if id, err := auth.Authenticate(ctx, "backend", "backend-secret"); err != nil || id.Role != broker.RoleBackend {
		t.Errorf("backend via next: %+v, %v", id, err)
	}
	for _, u := range []string{"nobody", "a.b", ""} {
		if _, err := p.DeviceAuthenticator(nil).Authenticate(ctx, u, "x"); !errors.Is(err, broker.ErrNotAuthorized) {
			t.Errorf("user %q without next: %v", u, err)
		}
	}
}

// TestDeviceAuthenticatorLookup: the identity an authorization check is
// made for (broker.IdentityLookup, the EMQX hook's authz) follows the
// order of Authenticate: a registered device with its class as
// registered now, other names from next, unknown and removed users
// refused.
func TestDeviceAuthenticatorLookup(t *testing.T) {
	e := newEnv(t)
	p, _ := e.start(nil)
	ctx := context.Background()
	if _, _, err := p.AddDevice(ctx, e.who(p), NewDevice{ID: "dev-1", Class: "sensor", Secret: "s3cret-s3cret-0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	backends := broker.NewCredentialStore()
	if err := backends.Add(broker.Identity{Username: "backend", Role: broker.RoleBackend}, "backend-secret"); err != nil {
		t.Fatal(err)
	}
	l, ok := p.DeviceAuthenticator(backends).(broker.IdentityLookup)
	if !ok {
		t.Fatal("DeviceAuthenticator is no broker.IdentityLookup")
	}
	if id, err := l.LookupIdentity(ctx, "dev-1"); err != nil || id != (broker.Identity{Username: "dev-1", Role: broker.RoleDevice, Device: "dev-1", Class: "sensor"}) {
		t.Errorf("device: %+v, %v", id, err)
	}
	if id, err := l.LookupIdentity(ctx, "backend"); err != nil || id.Role != broker.RoleBackend {
		t.Errorf("backend via next: %+v, %v", id, err)
	}
	for _, u := range []string{"nobody", "a.b", "", "publisher"} {
		if _, err := l.LookupIdentity(ctx, u); !errors.Is(err, broker.ErrNotAuthorized) {
			t.Errorf("user %q: %v", u, err)
		}
	}
	if err := p.RemoveDevice(ctx, e.who(p), "dev-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.LookupIdentity(ctx, "dev-1"); !errors.Is(err, broker.ErrNotAuthorized) {
		t.Errorf("removed device: %v", err)
	}
	if _, err := p.DeviceAuthenticator(nil).(broker.IdentityLookup).LookupIdentity(ctx, "backend"); !errors.Is(err, broker.ErrNotAuthorized) {
		t.Errorf("backend without next: %v", err)
	}
}
