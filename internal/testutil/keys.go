package testutil

import (
	"crypto"
	"testing"

	"github.com/firmcast/firmcast/schemas/suit"
)

// SigningKey returns a new private key of alg ("es256" or "ed25519", as
// suit.GenerateKey takes it) and fails the test when there is none.
func SigningKey(t testing.TB, alg string) crypto.Signer {
	t.Helper()
	key, err := suit.GenerateKey(alg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return key
}
