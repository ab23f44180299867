package stack_test

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestStackAuthenticates starts the embedded stack with a credentials
// account and checks, on both embedded brokers, that a device registered
// with the publisher connects with its secret and not with another, that
// the file's account connects, and that strangers are refused.
func TestStackAuthenticates(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	st := stacktest.Start(t, stack.Config{Topics: topics, Accounts: []broker.Account{
		{Identity: broker.Identity{Username: "gw-1", Role: broker.RoleDevice, Device: "gw-1", Class: "gw"}, Secret: "gateway-secret-0123456789"},
		{Identity: broker.Identity{Username: "ci-bot", Role: broker.RoleService}, Secret: "service-secret-0123456789"},
	}})
	if !st.EmbeddedMQTT || !st.EmbeddedNATS || st.Pub == nil {
		t.Fatalf("embedded %v/%v, publisher %v", st.EmbeddedMQTT, st.EmbeddedNATS, st.Pub)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.RegisterDevice(ctx, "dev-1", "sensor", "device-secret-0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{st.MQTTURL, st.NATSURL} {
		for _, c := range []struct {
			user, secret string
			ok           bool
		}{
			{"dev-1", "device-secret-0123456789abcdef", true},
			{"dev-1", "wrong-secret-0123456789abcdef", false},
			{"gw-1", "gateway-secret-0123456789", true},
			{"stranger", "whatever-0123456789", false},
		} {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			tr, err := broker.Dial(cctx, broker.Config{URL: url, Topics: topics, ClientID: c.user, Username: c.user, Password: c.secret})
			ccancel()
			if err == nil {
				tr.Close(ctx)
			}
			if (err == nil) != c.ok {
				t.Errorf("%s as %s/%s: err %v, want ok=%v", url, c.user, c.secret, err, c.ok)
			}
		}
	}
	// A service account connects to NATS only (it calls the campaign API
	// there); the MQTT broker refuses it.
	for url, ok := range map[string]bool{st.NATSURL: true, st.MQTTURL: false} {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		tr, err := broker.Dial(cctx, broker.Config{URL: url, Topics: topics, ClientID: "ci-bot", Username: "ci-bot", Password: "service-secret-0123456789"})
		ccancel()
		if err == nil {
			tr.Close(ctx)
		}
		if (err == nil) != ok {
			t.Errorf("%s as the service: err %v, want ok=%v", url, err, ok)
		}
	}
}

// TestStartRejectsBadConfig: errors name what is wrong, and nothing is
// left running.
func TestStartRejectsBadConfig(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	for _, c := range []struct {
		name string
		cfg  stack.Config
	}{
		{"no topic root", stack.Config{DataDir: t.TempDir()}},
		{"no data dir", stack.Config{Topics: topics}},
		{"namespace off root", stack.Config{Topics: topics, DataDir: t.TempDir(), Namespace: "other"}},
		{"nothing to run", stack.Config{Topics: topics, NoMQTT: true, NoNATS: true}},
		{"bad listen", stack.Config{Topics: topics, DataDir: t.TempDir(), MQTTListen: "nonsense"}},
		{"no such backend account", stack.Config{Topics: topics, DataDir: t.TempDir(), Backend: broker.Account{Identity: broker.Identity{Username: "pub-2"}},
			Accounts: []broker.Account{{Identity: broker.Identity{Username: "pub-1", Role: broker.RoleBackend}, Secret: "backend-secret-0123456789"}}}},
	} {
		if _, err := stack.Start(context.Background(), c.cfg); err == nil {
			t.Errorf("%s: started", c.name)
		}
	}
}
