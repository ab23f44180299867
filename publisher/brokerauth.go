package publisher

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/firmcast/firmcast/broker"
)

// DeviceAuthenticator returns a broker.Authenticator backed by the device
// registry: a registered device authenticates with its id as user name and
// its secret, and gets the device role with its class. Any other user name
// is passed to next (typically the backend accounts); with next nil it is
// refused. A reserved name (CheckDeviceID: the built-in backend names and
// Config.ReservedNames) always goes to next, so that no device record,
// not even one registered before the names were reserved, can stand in
// for a backend identity or lock it out. Errors wrap broker.ErrNotAuthorized. Safe for concurrent use;
// each call reads the registry (one KV get, one PBKDF2).
func (p *Publisher) DeviceAuthenticator(next broker.Authenticator) broker.Authenticator {
	return &deviceAuth{p: p, next: next}
}

type deviceAuth struct {
	p    *Publisher
	next broker.Authenticator
}

func (a *deviceAuth) Authenticate(ctx context.Context, username, secret string) (broker.Identity, error) {
	if CheckDeviceID(username, a.p.cfg.ReservedNames) != nil && checkName("device id", username) == nil {
		return a.backend(ctx, username, secret)
	}
	d, ok, err := a.p.CheckDeviceSecret(ctx, username, secret)
	if err != nil {
		return broker.Identity{}, fmt.Errorf("%w: registry: %v", broker.ErrNotAuthorized, err)
	}
	if d.ID != "" {
		if !ok {
			return broker.Identity{}, fmt.Errorf("%w: bad secret for device %q", broker.ErrNotAuthorized, username)
		}
		return broker.Identity{Username: d.ID, Role: broker.RoleDevice, Device: d.ID, Class: d.Class}, nil
	}
	return a.backend(ctx, username, secret)
}

// backend passes a user the registry does not hold to next.
func (a *deviceAuth) backend(ctx context.Context, username, secret string) (broker.Identity, error) {
	if a.next != nil {
		return a.next.Authenticate(ctx, username, secret)
	}
	return broker.Identity{}, fmt.Errorf("%w: unknown user %q", broker.ErrNotAuthorized, username)
}

// MosquittoPasswordLines returns one "device-id:$7$..." line per
// registered device, for a mosquitto password_file: the registry already
// stores secrets in mosquitto's PBKDF2-SHA512 format, so no clear secret
// is needed. Backend accounts are added by the caller.
func (p *Publisher) MosquittoPasswordLines(ctx context.Context) ([]string, error) {
	devs, err := p.deviceRecords(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(devs))
	for _, d := range devs {
		if !strings.HasPrefix(d.SecretHash, "$7$") {
			return nil, fmt.Errorf("publisher: device %s has a secret hash mosquitto cannot read", d.ID)
		}
		out = append(out, d.ID+":"+d.SecretHash)
	}
	return out, nil
}

// LookupIdentity implements broker.IdentityLookup in the order of
// Authenticate: a registered device (not under a reserved name) is the
// device role with its class as registered now; any other user name is
// looked up in next, when it implements broker.IdentityLookup. Unknown
// users get broker.ErrNotAuthorized (wrapped).
func (a *deviceAuth) LookupIdentity(ctx context.Context, username string) (broker.Identity, error) {
	if CheckDeviceID(username, a.p.cfg.ReservedNames) == nil && kvSafe(username) {
		d, err := a.p.deviceRecord(ctx, username)
		switch {
		case err == nil:
			return broker.Identity{Username: d.ID, Role: broker.RoleDevice, Device: d.ID, Class: d.Class}, nil
		case !errors.Is(err, ErrNotFound):
			return broker.Identity{}, fmt.Errorf("publisher: registry: %w", err)
		}
	}
	if l, ok := a.next.(broker.IdentityLookup); ok {
		return l.LookupIdentity(ctx, username)
	}
	return broker.Identity{}, fmt.Errorf("%w: unknown user %q", broker.ErrNotAuthorized, username)
}
