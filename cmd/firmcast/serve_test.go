package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

func TestServeStartsAuthenticatedBrokers(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte("backend backend bsecret\ndevice dev1 s1 sensor\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := testutil.UniqueRoot(t)
	type urls struct{ mqtt, nats string }
	ready := make(chan urls, 1)
	o := &serveOptions{
		mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		dataDir: filepath.Join(dir, "data"), root: root, credentials: creds,
		onReady: func(m, n, _ string) { ready <- urls{m, n} },
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, o) }()
	var u urls
	select {
	case u = <-ready:
	case err := <-done:
		t.Fatalf("serve exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve not ready in 30s")
	}
	topics := schemas.MustTopics(root)
	for _, url := range []string{u.mqtt, u.nats} {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		tr, err := broker.Dial(dctx, broker.Config{URL: url, Topics: topics, ClientID: "dev1", Username: "dev1", Password: "s1"})
		if err != nil {
			dcancel()
			t.Fatalf("device dial %s: %v", url, err)
		}
		// The device can read its (retained) notice at once: serve made the
		// notice stream on NATS.
		notice, _ := topics.Notice("dev1")
		sub, err := tr.Subscribe(dctx, notice, func(context.Context, broker.Message) {}, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true})
		if err != nil {
			dcancel()
			t.Fatalf("device retained subscribe on %s: %v", url, err)
		}
		_ = sub.Unsubscribe(dctx)
		_ = tr.Close(dctx)
		_, err = broker.Dial(dctx, broker.Config{URL: url, Topics: topics, ClientID: "dev1", Username: "dev1", Password: "wrong"})
		dcancel()
		if !errors.Is(err, broker.ErrNotAuthorized) {
			t.Fatalf("wrong secret on %s: %v, want ErrNotAuthorized", url, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "nats")); err != nil {
		t.Errorf("JetStream data dir: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after cancel, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s of cancel")
	}
}

func TestServeRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("device dev/1 s1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("backend pub-1 pub-1-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		o    serveOptions
	}{
		{"nothing to serve", serveOptions{dataDir: dir, root: "x"}},
		{"bad root", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "a.b"}},
		{"missing credentials", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "x", credentials: filepath.Join(dir, "none")}},
		{"bad credentials", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "x", credentials: bad}},
		{"bad listen address", serveOptions{mqttListen: "nonsense", dataDir: dir, root: "x"}},
		{"backend user without credentials", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "x", backendUser: "pub-1"}},
		{"tls key without cert", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "x", tlsKey: bad}},
		{"tls files unreadable", serveOptions{mqttListen: "127.0.0.1:0", dataDir: dir, root: "x", tlsKey: bad, tlsCert: bad}},
		{"broker hook secret without the hook", serveOptions{mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: dir, root: "x", hookSecret: "0123456789abcdef0123", pub: publisherOptions{httpListen: "127.0.0.1:0"}}},
		{"broker hook without credentials", serveOptions{mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: dir, root: "x", hookListen: "127.0.0.1:0", hookSecret: "0123456789abcdef0123", pub: publisherOptions{httpListen: "127.0.0.1:0"}}},
		{"broker hook with a short secret", serveOptions{mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: dir, root: "x", credentials: good, hookSecret: "short", hookListen: "127.0.0.1:0", pub: publisherOptions{httpListen: "127.0.0.1:0"}}},
		{"bad image access", serveOptions{mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: dir, root: "x", pub: publisherOptions{httpListen: "127.0.0.1:0", imageAccess: "everyone"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := runServe(context.Background(), &c.o); err == nil {
				t.Fatal("runServe succeeded, want an error")
			}
		})
	}
}
