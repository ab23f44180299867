package suit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
)

// encFuzzSeeds returns the encoded encryption infos of the decoder table,
// the shared examples and the hostile table.
func encFuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, tc := range encInfoDecodeCases {
		b, err := parseEDN(tc.edn)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	for _, v := range encVectors(f) {
		m, err := Verify(readVector(f, "encryption/"+v.name+".suit"), v.anchors)
		if err != nil {
			f.Fatal(err)
		}
		install, _ := m.Sequence(SeqInstall)
		for _, c := range install {
			if c.Params != nil && c.Params.EncryptionInfo != nil {
				seeds = append(seeds, c.Params.EncryptionInfo.Encode())
			}
		}
	}
	return seeds
}

// FuzzDecodeEncryptionInfo: decoding never panics; what decodes encodes
// to the same bytes, its recipients decode alone, and trying to decrypt
// with it never panics.
func FuzzDecodeEncryptionInfo(f *testing.F) {
	for _, s := range encFuzzSeeds(f) {
		f.Add(s)
	}
	keys := Keyring{vecKEK, vecDeviceKey(f)}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := DecodeEncryptionInfo(b)
		if err != nil {
			return
		}
		if !bytes.Equal(info.Encode(), b) {
			t.Fatal("decoded info does not encode to its bytes")
		}
		for i := range info.Recipients {
			r := &info.Recipients[i]
			if _, err := DecodeRecipient(r.Encode()); err != nil {
				t.Fatalf("recipient %d: %v", i, err)
			}
			if n := contentKeySize(info.Alg); n > 0 {
				if cek, err := keys.UnwrapKey(context.Background(), r, n); err == nil {
					if c, err := info.Cipher(cek); err == nil {
						_, _ = c.Open(b)
					}
				}
			}
		}
	})
}

// FuzzDecodeRecipient: a recipient alone (as a per-device notice would
// carry it) decodes without panic, re-encodes to its bytes, and unwraps
// without panic.
func FuzzDecodeRecipient(f *testing.F) {
	for _, s := range encFuzzSeeds(f) {
		if info, err := DecodeEncryptionInfo(s); err == nil {
			for _, r := range info.Recipients {
				f.Add(r.Encode())
			}
		}
	}
	devA := newEncDevice(f, "dev-a")
	c, _ := NewContentCipher(A128CTR, newDetRand("seed"))
	for _, r := range wrapFor(f, c, devA.kek, devA.ecPub) {
		f.Add(r.Encode())
	}
	keys := Keyring{vecKEK, vecDeviceKey(f), devA.kek, devA.ec}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecipient(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Encode(), b) {
			t.Fatal("decoded recipient does not encode to its bytes")
		}
		_, _ = keys.UnwrapKey(context.Background(), r, 16)
		_, _ = keys.UnwrapKey(context.Background(), r, 32)
	})
}

// FuzzEncryptedPayload runs a device (dev-a's keys) through each flow
// with a fuzzed encryption info and ciphertext, seeded from the install
// and hostile tables: never a panic, and whatever it commits to component
// 0 is the payload the manifest vouches for (its signed digest, or for a
// GCM write the tag under a key only the sender could wrap for dev-a).
func FuzzEncryptedPayload(f *testing.F) {
	devA, devB := newEncDevice(f, "dev-a"), newEncDevice(f, "dev-b")
	flows := []string{"write", "fetch", "fetch-copy"}
	for i, flow := range flows {
		s := newEncScenario(f, flow, devA, devB)
		f.Add(uint8(i), s.info.Encode(), s.ct)
	}
	for _, tc := range encHostileCases {
		s := newEncScenario(f, tc.flow, devA, devB)
		tc.setup(f, s, devA, devB)
		if s.served != nil {
			s.ct = s.served
		}
		for i, flow := range flows {
			if flow == tc.flow {
				f.Add(uint8(i), s.info.Encode(), s.ct)
			}
		}
	}
	base := newEncScenario(f, "fetch", devA, devB)
	f.Fuzz(func(t *testing.T, flow uint8, infoB, ct []byte) {
		info, err := DecodeEncryptionInfo(infoB)
		if err != nil {
			return
		}
		pt := base.pt
		sum := sha256.Sum256(pt)
		s := &encScenario{pt: pt, ct: ct, info: info, keys: devA.keys(), digest: sum[:]}
		name := flows[int(flow)%len(flows)]
		install, ncomp := s.install(t, name)
		comps := make([]ComponentID, ncomp)
		for i := range comps {
			comps[i] = ComponentID{{byte(i)}}
		}
		m := &Manifest{Version: 1, Seq: 1, Components: comps, Install: NewSeverable(install, false), verified: true}
		ft, _, err := s.run(t, m)
		if err == nil && !bytes.Equal(ft.comps[0], pt) {
			t.Fatalf("%s committed content that is not the signed payload", name)
		}
	})
}
