package suit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/firmcast/firmcast/schemas"
)

// signedManifest builds, signs and verifies a manifest with ncomp
// components ([0], [1]...), the given shared sequence and members (by
// manifest key; sequences are bstr-wrapped), and extra envelope entries.
func signedManifest(t testing.TB, seq uint64, ncomp int, shared Sequence, members map[int64]Sequence, extra map[any]any) *Manifest {
	t.Helper()
	comps := make([][][]byte, ncomp)
	for i := range comps {
		comps[i] = [][]byte{{byte(i)}}
	}
	common := map[int64]any{keyComponents: comps}
	if shared != nil {
		common[keySharedSequence] = shared.encode()
	}
	m := map[int64]any{keyManifestVersion: 1, keySequenceNumber: seq, keyCommon: marshal(common)}
	for k, s := range members {
		m[k] = s.encode()
	}
	s, pub := mustSigner(t, "ed25519", EdDSA)
	env, err := seal(context.Background(), marshal(marshal(m)), []Signer{s}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if extra != nil {
		_, body, _ := asTag(env)
		var em map[any]any
		if err := cbor.Unmarshal(body, &em); err != nil {
			t.Fatal(err)
		}
		for k, v := range extra {
			em[k] = v
		}
		env = marshal(cbor.Tag{Number: EnvelopeTag, Content: em})
	}
	man, err := Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	return man
}

func cmd(label int64) Command { return Command{Label: label, Policy: 15, Known: true} }
func override(p *Params) Command {
	return Command{Label: DirOverrideParams, Params: p, Known: true}
}
func setIndex(i ...uint64) Command {
	return Command{Label: DirSetComponentIdx, Index: &IndexArg{List: i}, Known: true}
}
func u64(v uint64) *uint64 { return &v }
func str(s string) *string { return &s }
func bptr(b bool) *bool    { return &b }

func createEnvelope(t testing.TB, img []byte, seq uint64, uris []string, ub time.Time) (*Manifest, any) {
	t.Helper()
	s, pub := mustSigner(t, "es256", ES256)
	env, err := Create(context.Background(), CreateOptions{
		Image: bytes.NewReader(img), VendorID: testVendor, ClassID: testClass,
		Seq: seq, URIs: uris, ChunkSize: 1024, UseBefore: ub,
	}, s)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	return m, pub
}

func TestProcessorCreatedManifest(t *testing.T) {
	img := testImage(5000)
	bad := bytes.Clone(img)
	bad[100] ^= 1
	deadline := time.Unix(2_000_000_000, 0)
	for _, tc := range []struct {
		name      string
		uris      []string
		useBefore time.Time
		now       time.Time
		installed uint64
		setup     func(f *fakeTarget)
		want      error
		calls     []string
		failed    []string // names of commands recorded as failed
	}{{
		name:  "one uri",
		uris:  []string{"u1"},
		calls: []string{"identity", "identity", "fetch 0 u1", "write 0", "commit 0 (5000 bytes)", "open 0"},
	}, {
		name:  "default source",
		calls: []string{"identity", "identity", "fetch 0 ", "write 0", "commit 0 (5000 bytes)", "open 0"},
	}, {
		name:   "first uri unreachable",
		uris:   []string{"u1", "u2"},
		setup:  func(f *fakeTarget) { f.failFetch = map[string]error{"u1": errors.New("refused")} },
		calls:  []string{"identity", "identity", "fetch 0 u1", "fetch 0 u2", "write 0", "commit 0 (5000 bytes)", "open 0", "open 0"},
		failed: []string{"directive-fetch"},
	}, {
		name:  "first uri serves a corrupt image",
		uris:  []string{"u1", "u2"},
		setup: func(f *fakeTarget) { f.sources["u1"] = bad },
		calls: []string{"identity", "identity", "fetch 0 u1", "write 0", "commit 0 (5000 bytes)", "open 0",
			"fetch 0 u2", "write 0", "commit 0 (5000 bytes)", "open 0", "open 0"},
		failed: []string{"condition-image-match"},
	}, {
		name:   "every uri bad",
		uris:   []string{"u1", "u2"},
		setup:  func(f *fakeTarget) { f.sources["u1"], f.sources["u2"] = bad, bad },
		want:   ErrConditionFailed,
		failed: []string{"condition-image-match", "condition-image-match"},
	}, {
		name:   "payload longer than image-size",
		uris:   []string{"u1"},
		setup:  func(f *fakeTarget) { f.sources["u1"] = append(bytes.Clone(img), 0) },
		want:   ErrTooLarge,
		calls:  []string{"identity", "identity", "fetch 0 u1", "write 0", "abort 0"},
		failed: []string{"directive-fetch"},
	}, {
		name:   "wrong vendor",
		uris:   []string{"u1"},
		setup:  func(f *fakeTarget) { f.id.VendorID = testClass },
		want:   ErrConditionFailed,
		calls:  []string{"identity"},
		failed: []string{"condition-vendor-identifier"},
	}, {
		name:  "second class matches",
		uris:  []string{"u1"},
		setup: func(f *fakeTarget) { f.id.ClassIDs = [][]byte{testVendor, testClass} },
		calls: []string{"identity", "identity", "fetch 0 u1", "write 0", "commit 0 (5000 bytes)", "open 0"},
	}, {
		name:      "rollback",
		uris:      []string{"u1"},
		installed: 8,
		want:      ErrRollback,
	}, {
		name:      "same sequence number again",
		uris:      []string{"u1"},
		installed: 7,
		calls:     []string{"identity", "identity", "fetch 0 u1", "write 0", "commit 0 (5000 bytes)", "open 0"},
	}, {
		name:      "before use-before",
		uris:      []string{"u1"},
		useBefore: deadline,
		now:       deadline,
		calls:     []string{"identity", "identity", "fetch 0 u1", "write 0", "commit 0 (5000 bytes)", "open 0"},
	}, {
		name:      "expired",
		uris:      []string{"u1"},
		useBefore: deadline,
		now:       deadline.Add(time.Second),
		want:      ErrExpired,
		calls:     []string{"identity", "identity"},
		failed:    []string{"condition-use-before"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := createEnvelope(t, img, 7, tc.uris, tc.useBefore)
			f := newFake()
			for _, u := range []string{"", "u1", "u2"} {
				f.sources[u] = img
			}
			if tc.setup != nil {
				tc.setup(f)
			}
			p := Processor{Target: f, InstalledSeq: tc.installed}
			if !tc.now.IsZero() {
				p.Now = func() time.Time { return tc.now }
			}
			rep, err := p.Update(context.Background(), m)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Update: %v, want %v", err, tc.want)
			}
			if tc.calls != nil {
				if diff := cmp.Diff(f.calls, tc.calls); diff != "" {
					t.Errorf("calls (-got +want):\n%s", diff)
				}
			}
			var failed []string
			for _, r := range rep.Records {
				if !r.OK {
					failed = append(failed, r.Name)
				}
			}
			if diff := cmp.Diff(failed, tc.failed); diff != "" {
				t.Errorf("failed records (-got +want):\n%s", diff)
			}
			if err != nil {
				return
			}
			if !bytes.Equal(f.comps[0], img) {
				t.Fatal("installed image differs")
			}
			// Validate and boot still work after the deadline.
			p.Now = func() time.Time { return deadline.Add(time.Hour) }
			if _, err := p.Boot(context.Background(), m); err != nil {
				t.Fatalf("Boot: %v", err)
			}
			f.comps[0][0] ^= 1
			if _, err := p.Boot(context.Background(), m); !errors.Is(err, ErrConditionFailed) {
				t.Fatalf("Boot of a corrupted image: %v", err)
			}
		})
	}
}

// TestProcessorCommands covers the general command set on hand-built
// manifests.
func TestProcessorCommands(t *testing.T) {
	content := []byte("hello, component")
	sum := sha256.Sum256(content)
	digest := &Digest{Alg: AlgSHA256, Bytes: sum[:]}
	unknown := Command{Label: 99, Raw: []byte{0x0f}}
	for _, tc := range []struct {
		name    string
		ncomp   int
		shared  Sequence
		install Sequence
		load    Sequence
		extra   map[any]any
		ext     bool
		want    error
		calls   []string
	}{{
		name:    "write then check-content and image-match",
		ncomp:   1,
		install: Sequence{override(&Params{Content: content, ImageDigest: digest}), cmd(DirWrite), cmd(CondCheckContent), cmd(CondImageMatch)},
		calls:   []string{"write 0", "commit 0 (16 bytes)", "open 0", "open 0"},
	}, {
		name:    "set-component-index true applies to all",
		ncomp:   3,
		install: Sequence{{Label: DirSetComponentIdx, Index: &IndexArg{All: true}, Known: true}, override(&Params{Content: content}), cmd(DirWrite)},
		calls:   []string{"write 0", "commit 0 (16 bytes)", "write 1", "commit 1 (16 bytes)", "write 2", "commit 2 (16 bytes)"},
	}, {
		name:    "index list and copy",
		ncomp:   3,
		install: Sequence{setIndex(2), override(&Params{Content: content}), cmd(DirWrite), setIndex(0, 1), override(&Params{SourceComponent: u64(2)}), cmd(DirCopy)},
		calls:   []string{"write 2", "commit 2 (16 bytes)", "open 2", "write 0", "commit 0 (16 bytes)", "open 2", "write 1", "commit 1 (16 bytes)"},
	}, {
		name:    "index out of range",
		ncomp:   1,
		install: Sequence{setIndex(1)},
		want:    ErrParameter,
	}, {
		name:    "unknown command in a running sequence",
		ncomp:   1,
		install: Sequence{override(&Params{Content: content}), cmd(DirWrite), unknown},
		want:    ErrUnknownCommand,
		calls:   []string{"write 0", "commit 0 (16 bytes)"},
	}, {
		name:    "unknown command in a sequence that does not run",
		ncomp:   1,
		install: Sequence{override(&Params{Content: content}), cmd(DirWrite)},
		load:    Sequence{unknown},
		calls:   []string{"write 0", "commit 0 (16 bytes)"},
	}, {
		name:    "unknown standard parameter",
		ncomp:   1,
		install: Sequence{override(&Params{Other: map[int64][]byte{ParamWaitInfo: {0x40}}})},
		want:    ErrUnsupported,
	}, {
		name:    "custom command handled by the target",
		ncomp:   1,
		install: Sequence{{Label: -1, Raw: []byte{0xf6}}},
		ext:     true,
		calls:   []string{"ext 0 custom-command -1"},
	}, {
		name:    "custom command declined",
		ncomp:   1,
		install: Sequence{{Label: -2, Raw: []byte{0xf6}}},
		ext:     true,
		want:    ErrUnknownCommand,
		calls:   []string{"ext 0 custom-command -2"},
	}, {
		name:    "known command without target support",
		ncomp:   1,
		install: Sequence{cmd(DirSwap)},
		want:    ErrUnsupported,
	}, {
		name:    "component slot",
		ncomp:   1,
		install: Sequence{override(&Params{ComponentSlot: u64(0)}), cmd(CondComponentSlot), override(&Params{ComponentSlot: u64(1)}), cmd(CondComponentSlot)},
		ext:     true,
		want:    ErrConditionFailed,
		calls:   []string{"slot 0", "slot 0"},
	}, {
		name:    "abort",
		ncomp:   1,
		install: Sequence{cmd(CondAbort), cmd(DirInvoke)},
		want:    ErrAborted,
	}, {
		name:  "try-each falls through to nil",
		ncomp: 1,
		install: Sequence{{Label: DirTryEach, Known: true, TryEmpty: true, Try: []Sequence{
			{override(&Params{ComponentSlot: u64(3)}), cmd(CondComponentSlot)},
		}}, cmd(DirInvoke)},
		ext:   true,
		calls: []string{"slot 0", "invoke 0"},
	}, {
		name:  "try-each restores parameters of a failed branch",
		ncomp: 1,
		install: Sequence{{Label: DirTryEach, Known: true, Try: []Sequence{
			{override(&Params{Content: []byte("first")}), override(&Params{ComponentSlot: u64(3)}), cmd(CondComponentSlot)},
			{override(&Params{ComponentSlot: u64(0)}), cmd(CondComponentSlot)},
		}}, override(&Params{ImageSize: u64(5)}), cmd(DirWrite)},
		ext:   true,
		want:  ErrParameter, // content of the failed branch is gone
		calls: []string{"slot 0", "slot 0"},
	}, {
		name:  "run-sequence with soft-failure",
		ncomp: 1,
		install: Sequence{override(&Params{SoftFailure: bptr(true), ComponentSlot: u64(9)}),
			{Label: DirRunSequence, Known: true, Run: Sequence{cmd(CondComponentSlot), cmd(DirInvoke)}}, cmd(DirInvoke)},
		ext:   true,
		calls: []string{"slot 0", "invoke 0"},
	}, {
		name:  "run-sequence without soft-failure",
		ncomp: 1,
		install: Sequence{override(&Params{ComponentSlot: u64(9)}),
			{Label: DirRunSequence, Known: true, Run: Sequence{cmd(CondComponentSlot), cmd(DirInvoke)}}, cmd(DirInvoke)},
		ext:   true,
		want:  ErrConditionFailed,
		calls: []string{"slot 0"},
	}, {
		name:    "integrated payload",
		ncomp:   1,
		install: Sequence{override(&Params{URI: str("#fw"), ImageDigest: digest, ImageSize: u64(16)}), cmd(DirFetch), cmd(CondImageMatch)},
		extra:   map[any]any{"fw": content},
		calls:   []string{"write 0", "commit 0 (16 bytes)", "open 0"},
	}, {
		name:    "device identifier",
		ncomp:   1,
		install: Sequence{override(&Params{DeviceID: testClass}), cmd(CondDeviceID)},
		want:    ErrConditionFailed,
		calls:   []string{"identity"},
	}, {
		name:    "missing parameter",
		ncomp:   1,
		install: Sequence{cmd(CondImageMatch)},
		want:    ErrParameter,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			members := map[int64]Sequence{keyInstall: tc.install}
			if tc.load != nil {
				members[keyLoad] = tc.load
			}
			m := signedManifest(t, 1, tc.ncomp, tc.shared, members, tc.extra)
			f := newFake()
			var tgt Target = f
			if tc.ext {
				tgt = &extTarget{fakeTarget: f}
			}
			_, err := Processor{Target: tgt}.Update(context.Background(), m)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Update: %v, want %v", err, tc.want)
			}
			if diff := cmp.Diff(f.calls, tc.calls); diff != "" {
				t.Errorf("calls (-got +want):\n%s", diff)
			}
		})
	}
}

func TestProcessorRefusesUnverified(t *testing.T) {
	m, err := Decode(readVector(t, "suit_manifest_exp0.suit"))
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	if _, err := (Processor{Target: f}).Boot(context.Background(), m); !errors.Is(err, ErrNotVerified) {
		t.Fatalf("got %v, want ErrNotVerified", err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("target called: %v", f.calls)
	}
}

func TestProcessorReportPolicy(t *testing.T) {
	content := []byte("x")
	install := Sequence{
		override(&Params{Content: content}),
		{Label: DirWrite, Policy: RecordSuccess, Known: true},
		{Label: CondCheckContent, Policy: 0, Known: true},
		{Label: DirWrite, Policy: SysinfoSuccess, Known: true},
		{Label: CondAbort, Policy: RecordSuccess, Known: true}, // fails: not recorded
		{Label: DirInvoke, Policy: RecordFailure, Known: true}, // never runs
	}
	m := signedManifest(t, 1, 1, nil, map[int64]Sequence{keyInstall: install}, nil)
	rep, err := Processor{Target: newFake()}.Update(context.Background(), m)
	if !errors.Is(err, ErrAborted) {
		t.Fatal(err)
	}
	got := ""
	for _, r := range rep.Records {
		got += fmt.Sprintf("%s:%s:%v:%v;", r.Sequence, r.Name, r.OK, r.Params != nil)
	}
	want := "install:directive-write:true:false;install:directive-write:true:true;"
	if got != want {
		t.Fatalf("records %s, want %s", got, want)
	}
}

func TestCode(t *testing.T) {
	img := testImage(500)
	run := func(setup func(f *fakeTarget), p Processor) error {
		m, _ := createEnvelope(t, img, 4, []string{"u"}, time.Unix(2e9, 0))
		f := newFake()
		f.sources["u"] = img
		if setup != nil {
			setup(f)
		}
		p.Target = f
		_, err := p.Update(context.Background(), m)
		return err
	}
	_, otherKey := mustSigner(t, "es256", ES256)
	_, untrusted := Verify(readVector(t, "suit_manifest_exp0.suit"), TrustAnchors{otherKey})
	_, truncated := Verify(readVector(t, "suit_manifest_exp0.suit")[:40], nil)
	for _, tc := range []struct {
		err  error
		want schemas.ErrCode
	}{
		{nil, schemas.CodeNone},
		{untrusted, schemas.CodeUntrustedKey},
		{truncated, schemas.CodeMalformed},
		{run(func(f *fakeTarget) { f.id.VendorID = testClass }, Processor{}), schemas.CodeVendorMismatch},
		{run(func(f *fakeTarget) { f.id.ClassIDs = nil }, Processor{}), schemas.CodeClassMismatch},
		{run(func(f *fakeTarget) { f.sources["u"] = testImage(499) }, Processor{}), schemas.CodeDigest},
		{run(nil, Processor{InstalledSeq: 5}), schemas.CodeRollback},
		{run(nil, Processor{Now: func() time.Time { return time.Unix(3e9, 0) }}), schemas.CodeExpired},
		{run(func(f *fakeTarget) { f.sources["u"] = testImage(501) }, Processor{}), schemas.CodeSize},
		{errors.New("other"), schemas.CodeInternal},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
