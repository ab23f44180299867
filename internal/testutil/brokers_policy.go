package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
)

// Dial connects to a broker with cfg (broker.Dial) and closes the
// transport at cleanup. It fails the test when the connection is not up
// within 10 seconds.
func Dial(t testing.TB, cfg broker.Config) broker.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("testutil.Dial %s: %v", cfg.URL, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Close(ctx)
	})
	return tr
}

// CredentialStore builds a broker.CredentialStore from accounts, failing
// the test on bad input. Pass it as Auth to StartMochi / StartNATS.
func CredentialStore(t testing.TB, accounts []broker.Account) *broker.CredentialStore {
	t.Helper()
	s, err := broker.NewCredentialStoreFrom(accounts)
	if err != nil {
		t.Fatalf("CredentialStore: %v", err)
	}
	return s
}
