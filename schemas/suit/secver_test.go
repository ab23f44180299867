package suit

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// The security version is an explicit small integer inside the signed
// manifest: set by CreateOptions.SecurityVersion, absent when zero,
// bounded by MaxSecurityVersion, and a malformed one is refused.
func TestSecurityVersion(t *testing.T) {
	s, _ := mustSigner(t, "ed25519", EdDSA)
	create := func(sv uint64) ([]byte, error) {
		return Create(context.Background(), CreateOptions{Image: bytes.NewReader(testImage(3000)), VendorID: testVendor, ClassID: testClass,
			Seq: 1_700_000_000_000, ChunkSize: 1024, SecurityVersion: sv}, s)
	}
	for _, tc := range []struct {
		sv  uint64
		set bool
	}{{0, false}, {1, true}, {7, true}, {MaxSecurityVersion, true}} {
		env, err := create(tc.sv)
		if err != nil {
			t.Fatalf("security version %d: %v", tc.sv, err)
		}
		m, err := Decode(env)
		if err != nil {
			t.Fatal(err)
		}
		got, set, err := m.SecurityVersion()
		if err != nil || set != tc.set || got != tc.sv {
			t.Errorf("security version %d: got %d, set %v, %v", tc.sv, got, set, err)
		}
		if m.Seq != 1_700_000_000_000 {
			t.Errorf("sequence %d: the security version is not the sequence number", m.Seq)
		}
	}
	if _, err := create(MaxSecurityVersion + 1); !errors.Is(err, ErrParameter) {
		t.Errorf("over the maximum: %v, want ErrParameter", err)
	}
	m := &Manifest{Shared: Sequence{{Label: DirOverrideParams, Known: true, Params: &Params{Other: map[int64][]byte{ParamSecurityVersion: marshal("three")}}}}}
	if _, _, err := m.SecurityVersion(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a text security version: %v, want ErrMalformed", err)
	}
}
