package testutil

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
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

// StartMosquittoWithPolicy starts a mosquitto process (StartMosquitto)
// enforcing the access policy for topics and accounts through the files
// broker.MosquittoConfig generates, exactly as `firmcast broker
// mosquitto-config` would write them. Accounts need clear secrets.
func StartMosquittoWithPolicy(t testing.TB, topics schemas.Topics, accounts []broker.Account) *Process {
	t.Helper()
	files, err := broker.MosquittoConfig(t.TempDir(), broker.MosquittoSpec{Topics: topics, Accounts: accounts})
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	conf, err := os.ReadFile(files.Conf)
	if err != nil {
		t.Fatalf("StartMosquittoWithPolicy: %v", err)
	}
	return StartMosquitto(t, string(conf))
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
