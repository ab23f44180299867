package deviceagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestActiveDigestPrivacy: reports name the running image by its digest,
// except one installed from a manifest whose payload is encrypted (the
// header holds its plaintext digest, which the encryption keeps secret).
func TestActiveDigestPrivacy(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(2, 9000)
	plain := w.envelope(v2, 2, nil, nil)
	m, err := suit.Decode(plain)
	if err != nil {
		t.Fatal(err)
	}
	m.Shared = append(suit.Sequence{{Label: suit.DirOverrideParams, Known: true, Params: &suit.Params{
		EncryptionInfo: &suit.EncryptionInfo{Alg: suit.A128GCM, IV: bytes.Repeat([]byte{1}, 12),
			Recipients: []suit.Recipient{{Alg: suit.A128KW, KeyID: []byte("kek"), WrappedKey: bytes.Repeat([]byte{2}, 24)}}}}}}, m.Shared...)
	encrypted, err := suit.Seal(context.Background(), m, w.signer)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		env    []byte
		public bool
	}{
		{"factory image, no envelope", nil, true},
		{"plain manifest", plain, true},
		{"encrypted payload", encrypted, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := w.newDevice("dev-p", nil)
			bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey})
			if err != nil {
				t.Fatal(err)
			}
			if tc.env != nil {
				ctx := context.Background()
				if err := bd.Stage(ctx, 1, v2, bootctl.CandidateInfo{Version: 2, SecurityCounter: 1, Digest: sha256.Sum256(v2), Envelope: tc.env}); err != nil {
					t.Fatal(err)
				}
				if dec, err := bd.Boot(ctx); err != nil || dec.Version != 2 {
					t.Fatalf("boot: %+v %v", dec, err)
				}
			}
			a, err := New(Config{DeviceID: "dev-p", Transport: w.pub, Topics: w.topics, Boot: bd, StateDir: d.dir, Trust: w.trust, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if got := a.activeDigestPublic(); got != tc.public {
				t.Fatalf("activeDigestPublic = %v, want %v", got, tc.public)
			}
		})
	}
}
