package suit

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The vectors in testdata/ are the draft's examples as shipped by libcsuit
// (BSD-2-Clause, testdata/LICENSE), signed by trust_anchor_secp256r1_pub.pem.

func vectorAnchors(t testing.TB) TrustAnchors {
	t.Helper()
	b, err := os.ReadFile("testdata/trust_anchor_secp256r1_pub.pem")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return TrustAnchors{pub}
}

func vectorFiles(t testing.TB) []string {
	t.Helper()
	fs, err := filepath.Glob("testdata/suit_manifest_*.suit")
	if err != nil || len(fs) < 5 {
		t.Fatalf("vectors: %v %v", fs, err)
	}
	return fs
}

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVectorsVerifyAndMatchDiag(t *testing.T) {
	anchors := vectorAnchors(t)
	for _, f := range vectorFiles(t) {
		name := strings.TrimSuffix(filepath.Base(f), ".suit")
		t.Run(name, func(t *testing.T) {
			env := readVector(t, name+".suit")
			m, err := Verify(env, anchors)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(m.Signatures) != 1 || !m.Signatures[0].Verified || m.Signatures[0].Alg != ESP256 {
				t.Fatalf("signatures %+v", m.Signatures)
			}
			// Every element the .diag file shows is byte-identical to the
			// envelope's (the auth wrapper is omitted by some files).
			diag, err := parseEDN(string(readVector(t, name+".diag")))
			if err != nil {
				t.Fatalf("%s.diag: %v", name, err)
			}
			checkSameEntries(t, diag, env)
			if m.Seq != diagSeq(t, diag) {
				t.Errorf("sequence number %d, diag %d", m.Seq, diagSeq(t, diag))
			}
			// Decode (unauthenticated) agrees with Verify.
			d, err := Decode(env)
			if err != nil || d.Verified() || !bytes.Equal(d.Raw(), m.Raw()) {
				t.Fatalf("Decode: %v verified=%v", err, d.Verified())
			}
			// Re-encoding every decoded sequence yields the signed bytes.
			for _, sn := range []string{SeqShared, SeqValidate, SeqLoad, SeqInvoke, SeqPayloadFetch, SeqInstall} {
				s, err := m.Sequence(sn)
				if err != nil || s == nil {
					continue
				}
				if !bytes.Contains(env, s.encode()) {
					t.Errorf("%s: re-encoded sequence not found in the envelope", sn)
				}
			}
		})
	}
}

func TestVectorSeveredMembers(t *testing.T) {
	anchors := vectorAnchors(t)
	a, err := Verify(readVector(t, "suit_manifest_exp2A.suit"), anchors)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Install.Present() || a.Install.Body != nil || a.Text.Body != nil {
		t.Fatalf("2A: install severed and absent expected: %+v", a.Install)
	}
	if _, err := a.Sequence(SeqInstall); !errors.Is(err, ErrSeveredMissing) {
		t.Fatalf("2A install: %v, want ErrSeveredMissing", err)
	}
	b, err := Verify(readVector(t, "suit_manifest_exp2B.suit"), anchors)
	if err != nil {
		t.Fatal(err)
	}
	if b.Install.Body == nil || b.Text.Body == nil {
		t.Fatal("2B: severed install and text expected")
	}
	// Same manifest, same signature: severing does not touch the signed part.
	if !bytes.Equal(a.Raw(), b.Raw()) {
		t.Fatal("2A and 2B manifests differ")
	}
	// Alter one byte of the severed install body (the URI): the manifest
	// still verifies but the member does not.
	env := readVector(t, "suit_manifest_exp2B.suit")
	i := bytes.Index(env, []byte("very/long"))
	env[i] ^= 0x20
	if _, err := Verify(env, anchors); !errors.Is(err, ErrSeveredDigest) {
		t.Fatalf("altered severed install: %v, want ErrSeveredDigest", err)
	}
}

// TestVectorsProcess runs each example's procedures against a fake target
// and compares the target calls with what the example's text describes.
func TestVectorsProcess(t *testing.T) {
	img := testImage(34768)
	for _, tc := range []struct {
		name   string
		update []string // calls during payload-fetch + install
		upErr  error
		boot   []string // calls during validate, load, invoke
	}{{
		// B.1 Secure Boot: check vendor and class, check the image digest
		// (validate), then invoke component 0.
		name:   "suit_manifest_exp0",
		update: nil,
		boot:   []string{"identity", "identity", "match 0 00112233 34768", "identity", "identity", "invoke 0"},
	}, {
		// B.2 Simultaneous download and installation: install fetches
		// http://example.com/file.bin into component 0 and checks it;
		// validate checks it again. No invoke.
		name: "suit_manifest_exp1",
		update: []string{"identity", "identity", "fetch 0 http://example.com/file.bin", "write 0",
			"commit 0 (34768 bytes)", "match 0 00112233 34768"},
		boot: []string{"identity", "identity", "match 0 00112233 34768"},
	}, {
		// B.3 with the install member severed and absent: the update
		// cannot run, secure boot still can.
		name:  "suit_manifest_exp2A",
		upErr: ErrSeveredMissing,
		boot:  []string{"identity", "identity", "match 0 00112233 34768", "identity", "identity", "invoke 0"},
	}, {
		// B.3 with severed install present: download from the long URI,
		// check; then secure boot.
		name: "suit_manifest_exp2B",
		update: []string{"identity", "identity", "fetch 0 http://example.com/very/long/path/to/file/file.bin",
			"write 0", "commit 0 (34768 bytes)", "match 0 00112233 34768"},
		boot: []string{"identity", "identity", "match 0 00112233 34768", "identity", "identity", "invoke 0"},
	}, {
		// B.5 Load from external storage: payload-fetch downloads into
		// component 1 (external storage) and checks it; install copies it
		// into component 0 and checks; validate checks component 0; load
		// copies component 0 into component 2 (RAM) and checks its own
		// digest; invoke runs component 2.
		name: "suit_manifest_exp4",
		update: []string{
			"identity", "identity", "fetch 1 http://example.com/file.bin", "write 1", "commit 1 (34768 bytes)", "match 1 00112233 -",
			"identity", "identity", "open 1", "write 0", "commit 0 (34768 bytes)", "match 0 00112233 34768",
		},
		boot: []string{
			"identity", "identity", "match 0 00112233 34768",
			"identity", "identity", "open 0", "write 2", "commit 2 (34768 bytes)", "match 2 01234567 76834",
			"identity", "identity", "invoke 2",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Verify(readVector(t, tc.name+".suit"), vectorAnchors(t))
			if err != nil {
				t.Fatal(err)
			}
			f := newFake()
			f.id = Identity{
				VendorID: mustHex("fa6b4a53d5ad5fdfbe9de663e4d41ffe"),
				ClassIDs: [][]byte{mustHex("1492af1425695e48bf429b2d51f2ab45")},
			}
			f.sources["http://example.com/file.bin"] = img
			f.sources["http://example.com/very/long/path/to/file/file.bin"] = img
			tgt := &matcherTarget{fakeTarget: f}
			p := Processor{Target: tgt, InstalledSeq: m.Seq}
			rep, err := p.Update(context.Background(), m)
			if tc.upErr != nil {
				if !errors.Is(err, tc.upErr) {
					t.Fatalf("Update: %v, want %v", err, tc.upErr)
				}
			} else if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if diff := cmp.Diff(f.calls, tc.update); diff != "" {
				t.Errorf("update calls (-got +want):\n%s", diff)
			}
			for _, r := range rep.Records {
				if !r.OK || r.Params == nil {
					t.Errorf("update record %+v: want OK with sysinfo (policy 15)", r)
				}
			}
			f.calls = nil
			if _, err := p.Boot(context.Background(), m); err != nil {
				t.Fatalf("Boot: %v", err)
			}
			if diff := cmp.Diff(f.calls, tc.boot); diff != "" {
				t.Errorf("boot calls (-got +want):\n%s", diff)
			}
		})
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// checkSameEntries compares each entry of the diag envelope with the
// envelope's entry of the same key, byte for byte.
func checkSameEntries(t *testing.T, diag, env []byte) {
	t.Helper()
	_, dbody, ok := asTag(diag)
	_, ebody, ok2 := asTag(env)
	if !ok || !ok2 {
		t.Fatal("untagged envelope")
	}
	de, err := entries(dbody, "diag")
	if err != nil {
		t.Fatal(err)
	}
	ee, err := entries(ebody, "envelope")
	if err != nil {
		t.Fatal(err)
	}
	hasManifest := false
	for _, d := range de {
		hasManifest = hasManifest || bytes.Equal(d.k, []byte{keyManifest})
	}
	if !hasManifest {
		t.Fatal("the .diag shows no manifest")
	}
	for _, d := range de {
		found := false
		for _, e := range ee {
			if bytes.Equal(d.k, e.k) {
				found = true
				if !bytes.Equal(d.v, e.v) {
					t.Errorf("element %s differs from the .diag", keyString(d.k))
				}
			}
		}
		if !found {
			t.Errorf("element %s of the .diag is not in the envelope", keyString(d.k))
		}
	}
	if len(ee)-len(de) > 1 { // only the authentication wrapper may be omitted
		t.Errorf("envelope has %d elements, .diag %d", len(ee), len(de))
	}
}

func diagSeq(t *testing.T, diag []byte) uint64 {
	_, body, _ := asTag(diag)
	de, _ := entries(body, "diag")
	for _, d := range de {
		if k, _ := asInt(d.k); k == keyManifest {
			c, _ := asBytes(d.v)
			ms, err := entries(c, "diag manifest")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ms {
				if k, _ := asInt(e.k); k == keySequenceNumber {
					u, _ := asUint(e.v)
					return u
				}
			}
		}
	}
	t.Fatal("diag: no sequence number")
	return 0
}
