package suit

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/schemas"
)

// encDevice is one device's decryption keys (its root of trust) and what
// the backend holds of them.
type encDevice struct {
	kek   KEK
	ec    ECDHKey
	ecPub ECDHPublicKey
}

func newEncDevice(t testing.TB, name string) encDevice {
	t.Helper()
	key := make([]byte, 16)
	newDetRand(name + " kek").Read(key)
	priv, err := ephemeralKey(ecdh.P256(), newDetRand(name+" ec"))
	if err != nil {
		t.Fatal(err)
	}
	id := []byte(name + "-ec")
	return encDevice{
		kek:   KEK{KeyID: []byte(name + "-kek"), Key: key},
		ec:    ECDHKey{KeyID: id, Key: priv},
		ecPub: ECDHPublicKey{KeyID: id, Key: priv.PublicKey()},
	}
}

func (d encDevice) keys() Keyring { return Keyring{d.kek, d.ec} }

// spyKeys counts the unwraps a Processor asks of the device's keys.
type spyKeys struct {
	k     KeyUnwrapper
	calls atomic.Int32
}

func (s *spyKeys) UnwrapKey(ctx context.Context, r *Recipient, n int) ([]byte, error) {
	s.calls.Add(1)
	return s.k.UnwrapKey(ctx, r, n)
}

// encScenario is one encrypted payload, the manifest that installs it
// and the device that runs it; a hostile case changes one thing.
type encScenario struct {
	pt, ct []byte
	c      *ContentCipher
	info   *EncryptionInfo // what the signed manifest holds
	keys   KeyUnwrapper    // the device's
	extra  []Recipient     // delivered apart from the manifest
	served []byte          // what the fetch source serves (default ct)
	digest []byte          // the signed plaintext digest (default SHA-256 of pt)
}

func wrapFor(t testing.TB, c *ContentCipher, ws ...KeyWrapper) []Recipient {
	t.Helper()
	var rs []Recipient
	for i, w := range ws {
		r, err := c.WrapFor(w, newDetRand(string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, *r)
	}
	return rs
}

// Flows: "write" decrypts parameter-content (A128GCM, as the draft's
// examples); "fetch" decrypts an A128CTR payload while fetching it;
// "fetch-copy" is the draft's flash flow: fetch the ciphertext into
// component 1, check it against its signed digest, then decrypt with a
// copy into component 0. Component 0 is the active image.
func newEncScenario(t testing.TB, flow string, devA, devB encDevice) *encScenario {
	t.Helper()
	alg := A128CTR
	if flow == "write" {
		alg = A128GCM
	}
	c, err := NewContentCipher(alg, newDetRand(flow))
	if err != nil {
		t.Fatal(err)
	}
	pt := testImage(3000)
	ct, err := c.Seal(pt)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pt)
	return &encScenario{
		pt: pt, ct: ct, c: c,
		info:   c.Info(wrapFor(t, c, devB.kek, devA.kek)...),
		keys:   devA.keys(),
		digest: sum[:],
	}
}

func (s *encScenario) manifest(t testing.TB, flow string) *Manifest {
	t.Helper()
	install, ncomp := s.install(t, flow)
	return signedManifest(t, 1, ncomp, nil, map[int64]Sequence{keyInstall: install}, nil)
}

// install returns the flow's install sequence and component count.
func (s *encScenario) install(t testing.TB, flow string) (Sequence, int) {
	ptDigest := &Digest{Alg: AlgSHA256, Bytes: s.digest}
	size := u64(uint64(len(s.pt)))
	switch flow {
	case "write":
		return Sequence{override(&Params{Content: s.ct, EncryptionInfo: s.info}), cmd(DirWrite)}, 1
	case "fetch":
		return Sequence{
			override(&Params{URI: str("ct"), ImageDigest: ptDigest, ImageSize: size, EncryptionInfo: s.info}),
			cmd(DirFetch), cmd(CondImageMatch),
		}, 1
	case "fetch-copy":
		ctSum := sha256.Sum256(s.ct)
		return Sequence{
			setIndex(1),
			override(&Params{URI: str("ct"), ImageDigest: &Digest{Alg: AlgSHA256, Bytes: ctSum[:]}, ImageSize: u64(uint64(len(s.ct)))}),
			cmd(DirFetch), cmd(CondImageMatch),
			setIndex(0),
			override(&Params{SourceComponent: u64(1), ImageDigest: ptDigest, ImageSize: size, EncryptionInfo: s.info}),
			cmd(DirCopy), cmd(CondImageMatch),
		}, 2
	}
	t.Fatalf("flow %q", flow)
	return nil, 0
}

var activeImage = []byte("the active image")

func (s *encScenario) run(t testing.TB, m *Manifest) (*fakeTarget, *spyKeys, error) {
	t.Helper()
	f := newFake()
	f.comps[0] = bytes.Clone(activeImage)
	f.sources["ct"] = s.ct
	if s.served != nil {
		f.sources["ct"] = s.served
	}
	var keys KeyUnwrapper
	spy := &spyKeys{k: s.keys}
	if s.keys != nil {
		keys = spy
	}
	_, err := Processor{Target: f, Keys: keys, Recipients: s.extra}.Update(context.Background(), m)
	return f, spy, err
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	if i < 0 {
		i += len(b)
	}
	b[i] ^= 1
	return b
}

// TestEncryptedInstall: an encrypted payload reaches the component, by
// each flow and each way of delivering the key.
func TestEncryptedInstall(t *testing.T) {
	devA, devB := newEncDevice(t, "dev-a"), newEncDevice(t, "dev-b")
	for _, tc := range []struct {
		name  string
		flow  string
		setup func(s *encScenario)
		calls []string
	}{
		{name: "write A128GCM, A128KW", flow: "write",
			calls: []string{"write 0", "commit 0 (3000 bytes)"}},
		{name: "fetch A128CTR, A128KW", flow: "fetch",
			calls: []string{"fetch 0 ct", "write 0", "commit 0 (3000 bytes)", "open 0"}},
		{name: "fetch-copy A128CTR, A128KW", flow: "fetch-copy",
			calls: []string{"fetch 1 ct", "write 1", "commit 1 (3000 bytes)", "open 1", "open 1", "write 0", "commit 0 (3000 bytes)", "open 0"}},
		{name: "write A128GCM, ECDH-ES+A128KW", flow: "write", setup: func(s *encScenario) {
			s.info = s.c.Info(wrapFor(t, s.c, devB.ecPub, devA.ecPub)...)
		}},
		{name: "fetch-copy A256CTR, ECDH-ES+A256KW", flow: "fetch-copy", setup: func(s *encScenario) {
			c, _ := NewContentCipher(A256CTR, newDetRand("256"))
			s.c, s.ct = c, must(c.Seal(s.pt))
			s.info = c.Info(wrapFor(t, c, ECDHPublicKey{KeyID: devA.ecPub.KeyID, Key: devA.ecPub.Key, Alg: ECDHESA256KW})...)
		}},
		{name: "per-device recipient apart from the manifest", flow: "fetch-copy", setup: func(s *encScenario) {
			s.info = s.c.Info(wrapFor(t, s.c, devB.kek)...)
			s.extra = wrapFor(t, s.c, devA.ecPub)
		}},
		{name: "fetch A128GCM (a small payload) with its signed digest", flow: "fetch", setup: func(s *encScenario) {
			c, _ := NewContentCipher(A128GCM, newDetRand("gcm"))
			s.c, s.ct = c, must(c.Seal(s.pt))
			s.info = c.Info(wrapFor(t, c, devA.kek)...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newEncScenario(t, tc.flow, devA, devB)
			if tc.setup != nil {
				tc.setup(s)
			}
			m := s.manifest(t, tc.flow)
			f, spy, err := s.run(t, m)
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if !bytes.Equal(f.comps[0], s.pt) {
				t.Fatal("component 0 is not the plaintext")
			}
			if spy.calls.Load() == 0 {
				t.Fatal("no key was unwrapped")
			}
			if tc.calls != nil && !slices.Equal(f.calls, tc.calls) {
				t.Errorf("calls %q, want %q", f.calls, tc.calls)
			}
		})
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// encHostileCases: each attack on an encrypted payload is refused at its
// stage with its sentinel, and the active image stays byte-identical.
// Where the attack would change the signed manifest, the case signs the
// changed manifest with the trusted key (as if the signer had been fed
// the tampered value), so that the decryption layer itself is what
// refuses; TestEncryptionInfoOutsideSignedManifest covers an attacker
// without the signing key.
var encHostileCases = []struct {
	name  string
	flow  string
	setup func(t testing.TB, s *encScenario, devA, devB encDevice)
	want  error
	// unwraps: whether the device's keys may be asked at all.
	unwraps bool
	// written: whether the Target may be asked to write component 0 (to
	// be aborted): not when the key does not unwrap.
	written bool
}{
	{name: "wrong KEK", flow: "write", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			s.keys = KEK{KeyID: devA.kek.KeyID, Key: bytes.Repeat([]byte{0x61}, 16)}
		}},
	{name: "wrong device key", flow: "fetch-copy", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			s.info = s.c.Info(wrapFor(t, s.c, devA.ecPub)...)
			s.keys = ECDHKey{KeyID: devA.ec.KeyID, Key: devB.ec.Key}
		}},
	{name: "tampered ciphertext (GCM, in the manifest)", flow: "write", want: ErrDecrypt, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.ct = flip(s.ct, 100) }},
	{name: "tampered ciphertext (CTR, decrypted while fetched)", flow: "fetch", want: ErrPlaintextDigest, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.served = flip(s.ct, 100) }},
	{name: "tampered ciphertext (CTR, checked before decryption)", flow: "fetch-copy", want: ErrConditionFailed,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.served = flip(s.ct, 100) }},
	{name: "tampered tag", flow: "write", want: ErrDecrypt, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.ct = flip(s.ct, -1) }},
	{name: "tampered IV (GCM)", flow: "write", want: ErrDecrypt, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.info.IV = flip(s.info.IV, 0) }},
	{name: "tampered IV (CTR)", flow: "fetch-copy", want: ErrPlaintextDigest, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.info.IV = flip(s.info.IV, 15) }},
	{name: "swapped recipients", flow: "write", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) {
			rs := s.info.Recipients // [dev-b, dev-a]
			rs[0].WrappedKey, rs[1].WrappedKey = rs[1].WrappedKey, rs[0].WrappedKey
		}},
	{name: "swapped ECDH-ES recipients", flow: "fetch", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			rs := wrapFor(t, s.c, devB.ecPub, devA.ecPub)
			rs[0].Ephemeral, rs[1].Ephemeral = rs[1].Ephemeral, rs[0].Ephemeral
			rs[0].WrappedKey, rs[1].WrappedKey = rs[1].WrappedKey, rs[0].WrappedKey
			s.info = s.c.Info(rs...)
		}},
	{name: "a wrapped key for another recipient", flow: "write", want: ErrNoRecipient, unwraps: true,
		setup: func(t testing.TB, s *encScenario, _, devB encDevice) {
			s.info = s.c.Info(wrapFor(t, s.c, devB.kek, devB.ecPub)...)
		}},
	{name: "another device's wrapped key under this device's key id", flow: "fetch-copy", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			rs := wrapFor(t, s.c, devB.kek)
			rs[0].KeyID = devA.kek.KeyID
			s.info = s.c.Info(rs...)
		}},
	{name: "encryption info outside the signed manifest: an attacker's recipient (GCM)", flow: "write", want: ErrDecrypt, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			// The device's ECDH key is public: anyone can wrap a key of
			// their own for it, and deliver it apart from the manifest.
			evil, _ := NewContentCipher(A128GCM, newDetRand("evil"))
			s.info = s.c.Info(wrapFor(t, s.c, devB.kek)...)
			s.extra = wrapFor(t, evil, devA.ecPub)
		}},
	{name: "encryption info outside the signed manifest: an attacker's recipient (CTR)", flow: "fetch", want: ErrPlaintextDigest, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			evil, _ := NewContentCipher(A128CTR, newDetRand("evil"))
			s.info = s.c.Info(wrapFor(t, s.c, devB.kek)...)
			s.extra = wrapFor(t, evil, devA.ecPub)
		}},
	{name: "unknown content algorithm", flow: "write", want: ErrUnknownAlgorithm,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { // ChaCha20/Poly1305
			s.info.Alg, s.info.Protected = 24, protectedAlg(24)
		}},
	{name: "unknown key-distribution algorithm", flow: "fetch", want: ErrUnknownAlgorithm,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			s.info = s.c.Info(Recipient{Alg: -6, KeyID: devA.kek.KeyID, WrappedKey: make([]byte, 24)}) // direct
		}},
	{name: "ephemeral key on an unknown curve", flow: "write", want: ErrUnknownAlgorithm,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			s.info.Recipients = nil
			s.info.raw = mustEDN(t, encInfoWith("<<{1: 1}>>", "{5: h'"+hexOf(s.info.IV)+"'}", "null",
				recipientWith("<<{1: -29}>>", "{-1: {1: 1, -1: 5, -2: h'00'}, 4: '"+string(devA.ec.KeyID)+"'}", ednWK24)))
		}},

	{name: "no decryption keys", flow: "write", want: ErrNoRecipient,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.keys = nil }},
	{name: "CTR without a signed plaintext digest", flow: "fetch", want: ErrParameter,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.digest = nil }},
	{name: "tampered wrapped key", flow: "write", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) {
			s.info.Recipients[1].WrappedKey = flip(s.info.Recipients[1].WrappedKey, 3)
		}},
	{name: "tampered ephemeral key", flow: "write", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, devB encDevice) {
			rs := wrapFor(t, s.c, devA.ecPub)
			rs[0].Ephemeral = devB.ecPub.Key
			s.info = s.c.Info(rs...)
		}},
	{name: "content key of the wrong size", flow: "write", want: ErrKeyUnwrap, unwraps: true,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			r, _ := devA.kek.WrapKey(make([]byte, 32), nil)
			s.info.Recipients = []Recipient{*r}
		}},
	{name: "GCM plaintext against another signed digest", flow: "fetch", want: ErrPlaintextDigest, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			c, _ := NewContentCipher(A128GCM, newDetRand("g"))
			s.c, s.ct = c, must(c.Seal(s.pt))
			s.info = c.Info(wrapFor(t, c, devA.kek)...)
			s.digest = make([]byte, 32)
		}},
	{name: "GCM image over MaxAEADPayload", flow: "fetch", want: ErrTooLarge, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, devA, _ encDevice) {
			c, _ := NewContentCipher(A128GCM, newDetRand("big"))
			s.c, s.pt = c, make([]byte, MaxAEADPayload+1)
			s.ct = make([]byte, len(s.pt)+gcmTagSize)
			s.info = c.Info(wrapFor(t, c, devA.kek)...)
		}},
	{name: "oversize ciphertext", flow: "fetch", want: ErrTooLarge, unwraps: true, written: true,
		setup: func(t testing.TB, s *encScenario, _, _ encDevice) { s.served = append(bytes.Clone(s.ct), 0) }},
}

func TestEncryptionHostile(t *testing.T) {
	devA, devB := newEncDevice(t, "dev-a"), newEncDevice(t, "dev-b")
	for _, tc := range encHostileCases {
		t.Run(tc.name, func(t *testing.T) {
			s := newEncScenario(t, tc.flow, devA, devB)
			tc.setup(t, s, devA, devB)
			if s.digest == nil { // "no digest": drop it from the manifest
				s.digest = []byte{}
			}
			m := s.manifestFor(t, tc.flow)
			f, spy, err := s.run(t, m)
			t.Logf("refused: %v", err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if !bytes.Equal(f.comps[0], activeImage) {
				t.Fatal("the active image changed")
			}
			for _, c := range f.calls {
				if strings.HasPrefix(c, "commit 0") {
					t.Fatalf("component 0 committed: %q", f.calls)
				}
				if c == "write 0" && !tc.written {
					t.Fatalf("component 0 written although no key unwrapped: %q", f.calls)
				}
			}
			if n := spy.calls.Load(); n > 0 && !tc.unwraps {
				t.Fatalf("%d unwrap(s) for a payload refused before decryption", n)
			}
			if c := Code(err); c == schemas.CodeNone || c == schemas.CodeInternal {
				t.Fatalf("Code(%v) = %v", err, Code(err))
			}
		})
	}
}

// manifestFor is manifest with the hostile cases' "no digest" encoding.
func (s *encScenario) manifestFor(t testing.TB, flow string) *Manifest {
	if len(s.digest) == 0 {
		// fetch without image-digest: the flow's install, minus the digest
		// and the image-match that would need it.
		install := Sequence{override(&Params{URI: str("ct"), EncryptionInfo: s.info}), cmd(DirFetch)}
		return signedManifest(t, 1, 1, nil, map[int64]Sequence{keyInstall: install}, nil)
	}
	return s.manifest(t, flow)
}

func mustEDN(t testing.TB, s string) []byte {
	t.Helper()
	b, err := parseEDN(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexOf(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

// TestEncryptionInfoOutsideSignedManifest: an attacker without the
// signing key cannot make a device decrypt with encryption info of their
// own, however they deliver it: in an envelope they signed, in an
// unauthenticated (decoded) manifest, edited into a signed one, or as a
// recipient apart from the manifest (TestEncryptionHostile: the key
// decrypts nothing the manifest accepts). The device's keys are never
// asked for anything the trusted signer did not sign.
func TestEncryptionInfoOutsideSignedManifest(t *testing.T) {
	devA, devB := newEncDevice(t, "dev-a"), newEncDevice(t, "dev-b")
	trusted, trustedPub := mustSigner(t, "ed25519", EdDSA)
	attacker, _ := mustSigner(t, "ed25519", EdDSA)
	anchors := TrustAnchors{trustedPub}

	// The attacker's payload: their own plaintext and content key, wrapped
	// for the device's public ECDH key.
	s := newEncScenario(t, "write", devA, devB)
	evil, _ := NewContentCipher(A128GCM, newDetRand("evil"))
	evilPT := []byte("the attacker's firmware")
	evilInfo := evil.Info(wrapFor(t, evil, devA.ecPub)...)
	manifest := func(info *EncryptionInfo, ct []byte) *Manifest {
		return &Manifest{Seq: 1, Components: []ComponentID{{{0}}},
			Install: NewSeverable(Sequence{override(&Params{Content: ct, EncryptionInfo: info}), cmd(DirWrite)}, false)}
	}
	run := func(t *testing.T, m *Manifest) (*fakeTarget, *spyKeys, error) {
		f := newFake()
		f.comps[0] = bytes.Clone(activeImage)
		spy := &spyKeys{k: devA.keys()}
		_, err := Processor{Target: f, Keys: spy}.Update(context.Background(), m)
		return f, spy, err
	}

	t.Run("signed by an untrusted key", func(t *testing.T) {
		env, err := Seal(context.Background(), manifest(evilInfo, must(evil.Seal(evilPT))), attacker)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(env, anchors); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Verify: %v, want ErrUntrusted", err)
		}
		// Acting on it unauthenticated (Decode) is refused before any
		// unwrap.
		d, err := Decode(env)
		if err != nil {
			t.Fatal(err)
		}
		f, spy, err := run(t, d)
		if !errors.Is(err, ErrNotVerified) || spy.calls.Load() != 0 || !bytes.Equal(f.comps[0], activeImage) {
			t.Fatalf("Update(decoded): %v, %d unwraps", err, spy.calls.Load())
		}
	})
	t.Run("edited into a signed envelope", func(t *testing.T) {
		env, err := Seal(context.Background(), manifest(s.info, s.ct), trusted)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(env, anchors); err != nil {
			t.Fatal(err)
		}
		// Swap the signed recipient for the attacker's (same length, so
		// the envelope still parses).
		i := bytes.Index(env, s.info.Recipients[1].WrappedKey)
		evilEnv := bytes.Clone(env)
		copy(evilEnv[i:], evilInfo.Recipients[0].WrappedKey[:24])
		if _, err := Verify(evilEnv, anchors); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Verify: %v, want ErrDigestMismatch", err)
		}
		// And the IV.
		evilEnv = bytes.Clone(env)
		i = bytes.Index(env, s.info.IV)
		evilEnv[i] ^= 1
		if _, err := Verify(evilEnv, anchors); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Verify: %v, want ErrDigestMismatch", err)
		}
	})
	t.Run("as an unauthenticated envelope element", func(t *testing.T) {
		env, err := Seal(context.Background(), manifest(s.info, s.ct), trusted)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Verify(env, anchors)
		if err != nil {
			t.Fatal(err)
		}
		// An envelope element 19 (parameter-encryption-info's label) is
		// not a SUIT envelope element: refused.
		_, body, _ := asTag(env)
		evilEnv := marshal(cbor.Tag{Number: EnvelopeTag, Content: cbor.RawMessage(addEntry(t, body, marshal(uint64(19)), marshal(evilInfo.Encode())))})
		if _, err := Verify(evilEnv, anchors); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("Verify: %v, want ErrUnsupported", err)
		}
		// As an integrated payload it is only bytes: nothing reads
		// encryption info from there, and the signed payload installs.
		evilEnv = marshal(cbor.Tag{Number: EnvelopeTag, Content: cbor.RawMessage(addEntry(t, body, marshal("encryption-info"), marshal(evilInfo.Encode())))})
		m, err = Verify(evilEnv, anchors)
		if err != nil {
			t.Fatal(err)
		}
		f, _, err := run(t, m)
		if err != nil || !bytes.Equal(f.comps[0], s.pt) {
			t.Fatalf("Update: %v", err)
		}
	})
}

// addEntry returns the map at body with one more entry.
func addEntry(t testing.TB, body, k, v []byte) []byte {
	t.Helper()
	es, err := entries(body, "map")
	if err != nil {
		t.Fatal(err)
	}
	out := appendHead(nil, majMap, uint64(len(es)+1))
	for _, e := range es {
		out = append(append(out, e.k...), e.v...)
	}
	return append(append(out, k...), v...)
}
