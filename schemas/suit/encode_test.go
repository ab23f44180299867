package suit

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEncodeVectorsRoundTrip: every decoded vector manifest encodes back to
// the exact bytes that were signed.
func TestEncodeVectorsRoundTrip(t *testing.T) {
	anchors := vectorAnchors(t)
	for _, f := range vectorFiles(t) {
		env := readVector(t, f[len("testdata/"):])
		m, err := Verify(env, anchors)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := m.Encode()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !bytes.Equal(raw, m.Raw()) {
			t.Errorf("%s: re-encoded manifest differs\n got %x\nwant %x", f, raw, m.Raw())
		}
	}
	// Re-sealing example 2B with another key keeps every other envelope
	// element byte for byte (severed install and text included).
	orig := readVector(t, "suit_manifest_exp2B.suit")
	m, err := Verify(orig, anchors)
	if err != nil {
		t.Fatal(err)
	}
	s, pub := mustSigner(t, "es256", ESP256)
	env, err := Seal(context.Background(), m, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(env, TrustAnchors{pub}); err != nil {
		t.Fatal(err)
	}
	_, ob, _ := asTag(orig)
	_, nb, _ := asTag(env)
	oe, _ := entries(ob, "")
	ne, _ := entries(nb, "")
	if len(oe) != len(ne) {
		t.Fatalf("%d elements, want %d", len(ne), len(oe))
	}
	for i := range oe {
		if k, _ := asInt(oe[i].k); k != keyAuthentication && !bytes.Equal(oe[i].v, ne[i].v) {
			t.Errorf("element %d differs after re-sealing", k)
		}
	}
}

func TestSealSevered(t *testing.T) {
	install := Sequence{override(&Params{URI: str("https://x/fw")}), cmd(DirFetch), cmd(CondImageMatch)}
	m := &Manifest{
		Seq:        5,
		Components: []ComponentID{{[]byte("app")}},
		Shared:     Sequence{override(&Params{VendorID: testVendor, ClassID: testClass}), cmd(CondVendorID)},
		Install:    NewSeverable(install, true),
		Validate:   Sequence{cmd(CondImageMatch)},
		Integrated: map[string][]byte{"blob": []byte("payload")},
	}
	s, pub := mustSigner(t, "ed25519", Ed25519)
	env, err := Seal(context.Background(), m, s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	if got.Install.Digest == nil || got.Install.Body == nil || !bytes.Equal(got.Integrated["blob"], []byte("payload")) {
		t.Fatalf("severed install / integrated payload lost: %+v", got.Install)
	}
	seq, err := got.Sequence(SeqInstall)
	if err != nil || !bytes.Equal(seq.encode(), install.encode()) {
		t.Fatalf("install: %v", err)
	}
	if got.Signatures[0].Alg != Ed25519 {
		t.Fatalf("alg %v", got.Signatures[0].Alg)
	}
	// Drop the severed body: the manifest still verifies, install cannot run.
	m.Install.Body = nil
	env, err = Seal(context.Background(), m, s)
	if err != nil {
		t.Fatal(err)
	}
	got, err = Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Processor{Target: newFake()}).Update(context.Background(), got); !errors.Is(err, ErrSeveredMissing) {
		t.Fatalf("Update without the severed body: %v", err)
	}
}

// slotTarget reports a fixed slot for every component.
type slotTarget struct {
	*matcherTarget
	slot uint64
}

func (s *slotTarget) Slot(_ context.Context, idx int) (uint64, error) {
	s.log("slot %d", idx)
	return s.slot, nil
}

// TestDraftExamplesShapes runs manifests shaped like the draft's other
// examples (B.4 A/B images, B.6 two images) built with the encoder.
func TestDraftExamplesShapes(t *testing.T) {
	d1 := &Digest{Alg: AlgSHA256, Bytes: bytes.Repeat([]byte{0x11}, 32)}
	d2 := &Digest{Alg: AlgSHA256, Bytes: bytes.Repeat([]byte{0x22}, 32)}
	slotBranch := func(slot uint64, p *Params) Sequence {
		return Sequence{override(&Params{ComponentSlot: u64(slot)}), {Label: CondComponentSlot, Policy: 5, Known: true}, override(p)}
	}
	ab := &Manifest{
		Seq:        3,
		Components: []ComponentID{{{0}}},
		Shared: Sequence{
			override(&Params{VendorID: testVendor, ClassID: testClass}),
			{Label: DirTryEach, Known: true, Try: []Sequence{
				slotBranch(0, &Params{ImageDigest: d1, ImageSize: u64(100)}),
				slotBranch(1, &Params{ImageDigest: d2, ImageSize: u64(200)}),
			}},
			cmd(CondVendorID), cmd(CondClassID),
		},
		Validate: Sequence{cmd(CondImageMatch)},
		Install: NewSeverable(Sequence{
			{Label: DirTryEach, Known: true, Try: []Sequence{
				slotBranch(0, &Params{URI: str("http://example.com/file1.bin")}),
				slotBranch(1, &Params{URI: str("http://example.com/file2.bin")}),
			}},
			{Label: DirFetch, Policy: 2, Known: true}, cmd(CondImageMatch),
		}, false),
	}
	two := &Manifest{
		Seq:        5,
		Components: []ComponentID{{{0}}, {{1}}},
		Shared: Sequence{
			setIndex(0), override(&Params{ImageDigest: d1, ImageSize: u64(100)}),
			setIndex(1), override(&Params{ImageDigest: d2, ImageSize: u64(200)}),
			{Label: DirSetComponentIdx, Index: &IndexArg{All: true}, Known: true},
			override(&Params{VendorID: testVendor, ClassID: testClass}),
			cmd(CondVendorID), cmd(CondClassID),
		},
		Install: NewSeverable(Sequence{
			setIndex(0), override(&Params{URI: str("http://example.com/file1.bin")}), {Label: DirFetch, Policy: 2, Known: true}, cmd(CondImageMatch),
			setIndex(1), override(&Params{URI: str("http://example.com/file2.bin")}), {Label: DirFetch, Policy: 2, Known: true}, cmd(CondImageMatch),
		}, false),
		Validate: Sequence{setIndex(0), cmd(CondImageMatch), setIndex(1), cmd(CondImageMatch)},
		Invoke:   Sequence{setIndex(0), {Label: DirInvoke, Policy: 2, Known: true}},
	}
	for _, tc := range []struct {
		name   string
		m      *Manifest
		slot   uint64
		update []string
		boot   []string
	}{{
		name: "A/B images, device writes slot 1", m: ab, slot: 1,
		update: []string{"slot 0", "slot 0", "identity", "identity", "slot 0", "slot 0",
			"fetch 0 http://example.com/file2.bin", "write 0", "commit 0 (200 bytes)", "match 0 22222222 200"},
		boot: []string{"slot 0", "slot 0", "identity", "identity", "match 0 22222222 200"},
	}, {
		name: "A/B images, device writes slot 0", m: ab, slot: 0,
		update: []string{"slot 0", "identity", "identity", "slot 0",
			"fetch 0 http://example.com/file1.bin", "write 0", "commit 0 (100 bytes)", "match 0 11111111 100"},
		boot: []string{"slot 0", "identity", "identity", "match 0 11111111 100"},
	}, {
		name: "two images", m: two,
		update: []string{"identity", "identity", "identity", "identity",
			"fetch 0 http://example.com/file1.bin", "write 0", "commit 0 (100 bytes)", "match 0 11111111 100",
			"fetch 1 http://example.com/file2.bin", "write 1", "commit 1 (200 bytes)", "match 1 22222222 200"},
		boot: []string{"identity", "identity", "identity", "identity", "match 0 11111111 100", "match 1 22222222 200",
			"identity", "identity", "identity", "identity", "invoke 0"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s, pub := mustSigner(t, "es256", ESP256)
			env, err := Seal(context.Background(), tc.m, s)
			if err != nil {
				t.Fatal(err)
			}
			m, err := Verify(env, TrustAnchors{pub})
			if err != nil {
				t.Fatal(err)
			}
			f := newFake()
			f.sources["http://example.com/file1.bin"] = testImage(100)
			f.sources["http://example.com/file2.bin"] = testImage(200)
			tgt := &slotTarget{matcherTarget: &matcherTarget{fakeTarget: f}, slot: tc.slot}
			p := Processor{Target: tgt}
			if _, err := p.Update(context.Background(), m); err != nil {
				t.Fatalf("Update: %v", err)
			}
			if diff := cmp.Diff(f.calls, tc.update); diff != "" {
				t.Errorf("update calls (-got +want):\n%s", diff)
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

func TestTexts(t *testing.T) {
	m, err := Verify(readVector(t, "suit_manifest_exp2B.suit"), vectorAnchors(t))
	if err != nil {
		t.Fatal(err)
	}
	texts, err := m.Texts()
	if err != nil {
		t.Fatal(err)
	}
	en := texts["en-US"]
	if !bytes.HasPrefix([]byte(en.Fields[TextManifestDescription]), []byte("## Example 2: Simultaneous Download")) ||
		len(en.Components) != 1 || en.Components[0].Fields[TextVendorDomain] != "arm.com" ||
		en.Components[0].ID.String() != "[h'00']" {
		t.Fatalf("texts %+v", texts)
	}
	a, _ := Verify(readVector(t, "suit_manifest_exp2A.suit"), vectorAnchors(t))
	if tx, err := a.Texts(); tx != nil || err != nil {
		t.Fatalf("severed absent text: %v %v", tx, err)
	}
}
