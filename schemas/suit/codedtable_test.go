package suit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"
)

// A manifest for an image served with coded repair signs two chunk-table
// digests: ParamFirmcast names the plain table (what agents of delivery
// protocol 1 take, unchanged), ParamFirmcastCodedTable the coded one.
// Without the option the parameter is absent; a malformed one is refused.
func TestCodedTableDigest(t *testing.T) {
	s, _ := mustSigner(t, "ed25519", EdDSA)
	plain, coded := sha256.Sum256([]byte("plain table")), sha256.Sum256([]byte("coded table"))
	create := func(codedDigest []byte) ([]byte, error) {
		return Create(context.Background(), CreateOptions{ImageDigest: bytes.Repeat([]byte{1}, 32), ImageSize: 3000,
			VendorID: testVendor, ClassID: testClass, Seq: 1, ChunkSize: 1024, ChunkTableDigest: plain[:], CodedTableDigest: codedDigest}, s)
	}
	for _, tc := range []struct {
		name  string
		coded []byte
	}{{"plain only", nil}, {"plain and coded", coded[:]}} {
		env, err := create(tc.coded)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		m, err := Decode(env)
		if err != nil {
			t.Fatal(err)
		}
		ci, ok := m.ChunkInfo()
		if !ok || !bytes.Equal(ci.TableDigest.Bytes, plain[:]) {
			t.Errorf("%s: chunk info %+v, want the plain table's digest", tc.name, ci)
		}
		d, set, err := m.CodedTableDigest()
		if err != nil || set != (tc.coded != nil) || !bytes.Equal(d.Bytes, tc.coded) || (set && d.Alg != AlgSHA256) {
			t.Errorf("%s: coded table digest %+v set %v, %v", tc.name, d, set, err)
		}
	}
	if _, err := create([]byte{1, 2, 3}); !errors.Is(err, ErrParameter) {
		t.Errorf("a short coded table digest: %v, want ErrParameter", err)
	}
	m := &Manifest{Shared: Sequence{{Label: DirOverrideParams, Known: true, Params: &Params{Other: map[int64][]byte{ParamFirmcastCodedTable: marshal("digest")}}}}}
	if _, _, err := m.CodedTableDigest(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a text coded table digest: %v, want ErrMalformed", err)
	}
}
