package suit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
)

// deltaTarget is a fake device that implements the precursor condition:
// it runs image active (settled unless trial), and "applies" a delta by
// returning the image the test says the delta makes.
type deltaTarget struct {
	*fakeTarget
	active   []byte
	trial    bool
	makes    []byte // what applying any delta yields
	failWith error  // a delta that fails to apply
}

func (d *deltaTarget) Command(_ context.Context, idx int, c Command, p *Params) error {
	if c.Label != CondPrecursor {
		return fmt.Errorf("%w: %s", ErrUnknownCommand, c.Name())
	}
	info, ok, err := DeltaOf(p)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: no delta parameter", ErrParameter)
	}
	sum := sha256.Sum256(d.active)
	if d.trial || !bytes.Equal(info.SourceDigest, sum[:]) || info.SourceSize != uint64(len(d.active)) {
		d.log("precursor %d no", idx)
		return ErrConditionFailed
	}
	d.log("precursor %d yes", idx)
	return nil
}

func (d *deltaTarget) Fetch(ctx context.Context, idx int, p *Params) (io.ReadCloser, error) {
	info, ok, err := DeltaOf(p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return d.fakeTarget.Fetch(ctx, idx, p)
	}
	d.log("fetch-delta %d %x", idx, info.Digest[:2])
	if d.failWith != nil {
		return nil, d.failWith
	}
	return io.NopCloser(bytes.NewReader(d.makes)), nil
}

func deltaOffer(src []byte, delta byte) DeltaInfo {
	s := sha256.Sum256(src)
	return DeltaInfo{SourceDigest: s[:], SourceSize: uint64(len(src)),
		Digest: bytes.Repeat([]byte{delta}, 32), Size: 1000, ChunkTableDigest: bytes.Repeat([]byte{delta + 1}, 32),
		URIs: []string{fmt.Sprintf("https://example.com/d/%x", delta)}}
}

// TestDeltaTryEach: a manifest offering two deltas and the full image
// round-trips its offers, and a device takes the delta from the image it
// runs, or the full image when it runs another one, runs a trial image,
// or the delta fails.
func TestDeltaTryEach(t *testing.T) {
	ctx := context.Background()
	v1, v2, v3 := testImage(3000), testImage(4000), testImage(5000)
	v3[0] ^= 1
	other := testImage(2000)
	signer, pub := mustSigner(t, "ed25519", EdDSA)
	offers := []DeltaInfo{deltaOffer(v1, 0xd1), deltaOffer(v2, 0xd2)}
	env, err := Create(ctx, CreateOptions{Image: bytes.NewReader(v3), VendorID: testVendor, ClassID: testClass, Seq: 3,
		URIs: []string{"https://example.com/full"}, Deltas: offers}, signer)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Verify(env, TrustAnchors{pub})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Deltas()
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(offers)
	for i := range want {
		want[i].ChunkSize = DefaultChunkSize
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Deltas() = %+v\nwant %+v", got, want)
	}
	if d, _ := m.ImageDigest(); !bytes.Equal(d.Bytes, sha(v3)) {
		t.Fatalf("image digest %x", d.Bytes)
	}
	if u := m.URIs(); !slices.Equal(u, []string{"https://example.com/full"}) {
		t.Fatalf("URIs() = %q: a delta's URIs are not the image's", u)
	}
	for _, tc := range []struct {
		name     string
		active   []byte
		trial    bool
		failWith error
		want     string // the fetch that made the image
	}{
		{name: "on v1", active: v1, want: "fetch-delta 0 d1d1"},
		{name: "on v2", active: v2, want: "fetch-delta 0 d2d2"},
		{name: "on another image", active: other, want: "fetch 0 https://example.com/full"},
		{name: "on v1 in trial", active: v1, trial: true, want: "fetch 0 https://example.com/full"},
		{name: "delta fails", active: v1, failWith: errors.New("corrupt"), want: "fetch 0 https://example.com/full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.sources["https://example.com/full"] = v3
			dt := &deltaTarget{fakeTarget: f, active: tc.active, trial: tc.trial, makes: v3, failWith: tc.failWith}
			if _, err := (Processor{Target: dt}).Update(ctx, m); err != nil {
				t.Fatalf("update: %v\ncalls: %q", err, f.calls)
			}
			var fetches []string
			for _, c := range f.calls {
				if bytes.HasPrefix([]byte(c), []byte("fetch")) {
					fetches = append(fetches, c)
				}
			}
			if len(fetches) == 0 || fetches[len(fetches)-1] != tc.want {
				t.Fatalf("fetches %q, want the last to be %q", fetches, tc.want)
			}
			if !bytes.Equal(f.comps[0], v3) {
				t.Fatal("component 0 is not the image")
			}
		})
	}
	// A delta that makes other bytes than the signed image never passes
	// image-match: the full image is taken.
	f := newFake()
	f.sources["https://example.com/full"] = v3
	dt := &deltaTarget{fakeTarget: f, active: v1, makes: v2}
	if _, err := (Processor{Target: dt}).Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.comps[0], v3) {
		t.Fatal("a wrong delta result was kept")
	}
	// A target without the extension refuses the manifest outright.
	if _, err := (Processor{Target: newFake()}).Update(ctx, m); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("plain target: %v, want ErrUnsupported", err)
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// TestDeltaInfoDecode: malformed delta parameters are refused, naming
// what is wrong.
func TestDeltaInfoDecode(t *testing.T) {
	good := deltaOffer([]byte("src"), 1)
	good.ChunkSize = 1024
	if _, err := decodeDeltaInfo(good.encode()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"not a bstr", marshal(1), ErrMalformed},
		{"missing keys", marshal(marshal(map[int64]any{2: 5})), ErrMalformed},
		{"unknown key", marshal(marshal(map[int64]any{99: 5})), ErrUnsupported},
		{"zero size", marshal(marshal(map[int64]any{2: 0})), ErrMalformed},
		{"sha-512 digest", marshal(marshal(map[int64]any{1: []any{AlgSHA512, bytes.Repeat([]byte{1}, 64)}})), ErrUnsupported},
		{"empty uri", marshal(marshal(map[int64]any{7: []string{""}})), ErrMalformed},
	} {
		if _, err := decodeDeltaInfo(tc.raw); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := Create(context.Background(), CreateOptions{Image: bytes.NewReader([]byte("img")), VendorID: testVendor, ClassID: testClass,
		Deltas: []DeltaInfo{{SourceDigest: []byte{1}}}}, mustSignerOnly(t)); !errors.Is(err, ErrParameter) {
		t.Fatalf("Create with a bad delta: %v", err)
	}
}

func mustSignerOnly(t *testing.T) Signer {
	s, _ := mustSigner(t, "ed25519", EdDSA)
	return s
}
