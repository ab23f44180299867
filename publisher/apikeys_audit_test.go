package publisher

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// auditBreaker is a JetStream whose publishes to the audit stream fail
// while broken is set (a fault injected between the publisher and the
// audit stream; everything else is the real JetStream).
type auditBreaker struct {
	jetstream.JetStream
	broken atomic.Bool
}

var errAuditDown = errors.New("injected: audit stream unavailable")

func (b *auditBreaker) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if b.broken.Load() && strings.Contains(subj, ".audit.") {
		return nil, errAuditDown
	}
	return b.JetStream.Publish(ctx, subj, data, opts...)
}

// auditActions returns "action target" of every audit entry.
func auditActions(t *testing.T, p *Publisher) []string {
	t.Helper()
	entries, err := p.Audit(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Action+" "+e.Target)
	}
	return out
}

func hasAction(list []string, want string) bool {
	for _, a := range list {
		if a == want {
			return true
		}
	}
	return false
}

// TestKeyChangesAudited: every API key change leaves an audit entry (the
// bootstrap key's registration included), and a key is never created
// without one: with the audit stream failing, creating a key or
// registering the bootstrap key fails and leaves no key, and a
// revocation still takes effect but reports the missing entry.
func TestKeyChangesAudited(t *testing.T) {
	e := newEnv(t)
	br := &auditBreaker{JetStream: e.js}
	p, _ := e.start(func(c *Config) { c.JetStream = br })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	who := e.who(p)

	if got := auditActions(t, p); !hasAction(got, "apikey.bootstrap "+bootstrapKeyID) {
		t.Errorf("no audit entry for the bootstrap key's registration: %v", got)
	}
	_, k, err := p.CreateAPIKey(ctx, who, "ci", []Scope{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RevokeAPIKey(ctx, who, k.ID); err != nil {
		t.Fatal(err)
	}
	got := auditActions(t, p)
	for _, want := range []string{"apikey.create " + k.ID, "apikey.revoke " + k.ID} {
		if !hasAction(got, want) {
			t.Errorf("no audit entry %q: %v", want, got)
		}
	}

	// The audit stream fails: no key may come into being unaudited.
	_, k2, err := p.CreateAPIKey(ctx, who, "victim", []Scope{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	before, err := p.APIKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	br.broken.Store(true)
	tok, _, err := p.CreateAPIKey(ctx, who, "unaudited", []Scope{ScopeAdmin})
	if !errors.Is(err, errAuditDown) || tok != "" {
		t.Errorf("CreateAPIKey with the audit log down: token %q, err %v; want errAuditDown and no token", tok, err)
	}
	after, err := p.APIKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("%d keys after a refused creation, want %d", len(after), len(before))
	}
	if err := p.RevokeAPIKey(ctx, who, k2.ID); !errors.Is(err, errAuditDown) {
		t.Errorf("RevokeAPIKey with the audit log down: %v, want errAuditDown reported", err)
	}
	if after, err = p.APIKeys(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range after {
		if k.ID == k2.ID && k.Revoked == nil {
			t.Error("the revocation did not take effect while the audit log was down")
		}
	}

	// A new bootstrap key is not registered without its entry.
	const boot = "fck_bootstrap2_abcdefghijklmnopqrstuvwxyz0123456789"
	cfg := e.cfg
	cfg.JetStream, cfg.BootstrapKey, cfg.Transport = br, boot, e.hub.Conn()
	if _, err := New(ctx, cfg); !errors.Is(err, errAuditDown) {
		t.Errorf("New with a new bootstrap key and the audit log down: %v, want errAuditDown", err)
	}
	br.broken.Store(false)
	if _, err := p.Authenticate(ctx, boot); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("bootstrap key registered without an audit entry: %v", err)
	}
}
