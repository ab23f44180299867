package bootctl

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sampleHeader() Header {
	h := Header{Version: 7, SecurityCounter: 3, Size: 4096, Campaign: "spring-rollout"}
	for i := range h.Digest {
		h.Digest[i] = byte(i)
	}
	return h
}

func TestHeaderRoundTrip(t *testing.T) {
	env := []byte("signed envelope bytes")
	h := sampleHeader()
	raw, err := marshalHeader(h, testKey, env)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != envelopeOffset+len(env) {
		t.Fatalf("length %d", len(raw))
	}
	got, err := parseHeader(raw)
	if err != nil {
		t.Fatal(err)
	}
	h.EnvelopeLen = uint32(len(env))
	if diff := cmp.Diff(got, h); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	if err := verifyTag(testKey, raw); err != nil {
		t.Fatal(err)
	}
}

func TestHeaderRefused(t *testing.T) {
	good, _ := marshalHeader(sampleHeader(), testKey, nil)
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for _, tc := range []struct {
		name  string
		raw   []byte
		parse error // from parseHeader
		tag   bool  // parses, but the tag fails
	}{
		{"erased", bytes.Repeat([]byte{0xFF}, envelopeOffset), ErrNoHeader, false},
		{"short", good[:100], ErrHeaderCorrupt, false},
		{"magic", mut(func(b []byte) { b[0] = 'X' }), ErrHeaderCorrupt, false},
		{"crc", mut(func(b []byte) { b[9] ^= 1 }), ErrHeaderCorrupt, false},
		{"crc field", mut(func(b []byte) { b[133] ^= 1 }), ErrHeaderCorrupt, false},
		{"tag", mut(func(b []byte) { b[140] ^= 1 }), nil, true},
	} {
		_, err := parseHeader(tc.raw)
		if !errors.Is(err, tc.parse) || (tc.parse != nil && !errors.Is(err, ErrInvalidImage)) {
			t.Errorf("%s: parse %v, want %v", tc.name, err, tc.parse)
			continue
		}
		if tc.tag {
			if err := verifyTag(testKey, tc.raw); !errors.Is(err, ErrTagMismatch) {
				t.Errorf("%s: tag %v", tc.name, err)
			}
		}
	}
	if err := verifyTag([]byte("another-device-key!"), good); !errors.Is(err, ErrTagMismatch) {
		t.Errorf("other key: %v", err)
	}
	if _, err := marshalHeader(Header{Campaign: string(make([]byte, 65))}, testKey, nil); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("long campaign: %v", err)
	}
}

// FuzzParseHeader feeds arbitrary header areas to the parser: it must
// never panic, and whatever it accepts must re-encode to the same fields.
func FuzzParseHeader(f *testing.F) {
	good, _ := marshalHeader(sampleHeader(), testKey, nil)
	withEnv, _ := marshalHeader(sampleHeader(), testKey, []byte("envelope"))
	f.Add(good)
	f.Add(withEnv)
	f.Add(bytes.Repeat([]byte{0xFF}, envelopeOffset))
	f.Add(good[:headerSize-1])
	if enc, err := marshalHeaderExt(sampleHeader(), make([]byte, encBlockSize), testKey, nil); err == nil {
		f.Add(enc)
	}
	f.Add([]byte(headerMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidImage) {
				t.Fatalf("error %v does not wrap ErrInvalidImage", err)
			}
			return
		}
		var ext []byte
		if h.Encrypted {
			ext = b[envelopeOffset : envelopeOffset+encBlockSize]
		}
		raw, err := marshalHeaderExt(h, ext, testKey, nil)
		if err != nil {
			t.Fatalf("accepted header does not re-encode: %v", err)
		}
		h2, err := parseHeader(raw)
		h2.EnvelopeLen = h.EnvelopeLen
		if err != nil || h2 != h {
			t.Fatalf("re-encoded header parses to %+v, %v; want %+v", h2, err, h)
		}
		if !bytes.Equal(raw[:128], b[:128]) {
			t.Fatalf("accepted header is not canonical")
		}
	})
}
