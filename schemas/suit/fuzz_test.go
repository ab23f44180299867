package suit

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"
)

func fuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, v := range []string{"exp0", "exp1", "exp2A", "exp2B", "exp4"} {
		b := readVector(f, "suit_manifest_"+v+".suit")
		seeds = append(seeds, b)
	}
	for _, v := range []string{"expAW", "expEW"} {
		seeds = append(seeds, readVector(f, "encryption/suit_manifest_"+v+".suit"))
	}
	k, _ := GenerateKey("es256", rand.Reader)
	s, _ := NewKeySigner(k, 0)
	env, err := Create(context.Background(), CreateOptions{
		Image: bytes.NewReader(testImage(3000)), VendorID: testVendor, ClassID: testClass,
		Seq: 3, URIs: []string{"a", "b"}, UseBefore: time.Unix(2e9, 0),
	}, s)
	if err != nil {
		f.Fatal(err)
	}
	return append(seeds, env)
}

// FuzzDecode: envelope decoding and verification never panic, and what
// verifies also decodes to the same manifest.
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	anchors := vectorAnchors(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, derr := Decode(b)
		m, verr := Verify(b, anchors)
		if verr == nil {
			if derr != nil || !bytes.Equal(d.Raw(), m.Raw()) {
				t.Fatalf("verified but Decode: %v", derr)
			}
		}
		if derr == nil {
			for _, name := range []string{SeqShared, SeqPayloadFetch, SeqInstall, SeqValidate, SeqLoad, SeqInvoke} {
				s, err := d.Sequence(name)
				if err == nil && s != nil {
					// Re-encoding a decoded sequence and decoding it again
					// gives the same sequence.
					again, err := decodeSequence(s.encode(), name, 0)
					if err != nil || !bytes.Equal(again.encode(), s.encode()) {
						t.Fatalf("%s: re-decode: %v", name, err)
					}
				}
			}
			_ = d.URIs()
			_ = d.ParamsFor(0)
		}
	})
}

// FuzzProcessor runs arbitrary command sequences (as install, with three
// components) against the fake target: no panic, bounded work.
func FuzzProcessor(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if m, err := Decode(s); err == nil {
			for _, name := range []string{SeqShared, SeqInstall, SeqPayloadFetch, SeqValidate, SeqLoad, SeqInvoke} {
				if seq, err := m.Sequence(name); err == nil && seq != nil {
					f.Add(seq.encode())
				}
			}
		}
	}
	f.Add(Sequence{cmd(DirSetComponentIdx), {Label: DirTryEach, Known: true, TryEmpty: true,
		Try: []Sequence{{override(&Params{Content: []byte("a"), SourceComponent: u64(1)}), cmd(DirWrite), cmd(DirCopy)}}}}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, err := decodeSequence(b, "fuzz", 0)
		if err != nil {
			return
		}
		m := &Manifest{
			Version:    1,
			Components: []ComponentID{{{0}}, {{1}}, {{2}}},
			Install:    Severable{Body: marshal(seq.encode())},
			Integrated: map[string][]byte{"p": []byte("payload")},
			verified:   true,
		}
		ft := newFake()
		ft.sources[""] = []byte("default")
		ft.sources["a"] = []byte("A")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p := Processor{Target: &extTarget{fakeTarget: ft}, MaxImageSize: 1 << 16,
			Now: func() time.Time { return time.Unix(1e9, 0) }}
		if _, err := p.Update(ctx, m); err != nil && ctx.Err() != nil {
			t.Fatalf("processor ran past its deadline: %v", err)
		}
	})
}
