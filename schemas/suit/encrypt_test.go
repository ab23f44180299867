package suit

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Decoder cases for SUIT_Encryption_Info, in diagnostic notation. They
// also seed FuzzDecodeEncryptionInfo.
const (
	ednIV12   = "h'F14AAB9D81D51F7AD943FE87'"
	ednWK24   = "h'75603FFC9518D794713C8CA8A115A7FB32565A6D59534D62'"
	ednKW     = "[h'', {1: -3, 4: 'kid-1'}, " + ednWK24 + "]"
	ednEphP   = "{1: 2, -1: 1, -2: h'73024F415AA51529A66CCEFD88F3F62A734492FF45F6AD37FD2888E73EAF19DA', -3: h'4005B48A6FD091AA6ABFE3CFBEEDE88B347E521D43405FDBD7D2CFF0EBC21B26'}"
	ednECDH   = "[<<{1: -29}>>, {-1: " + ednEphP + ", 4: 'kid-2'}, " + ednWK24 + "]"
	ednGood   = "96([<<{1: 1}>>, {5: " + ednIV12 + "}, null, [" + ednKW + "]])"
	ednGoodEC = "96([<<{1: 1}>>, {5: " + ednIV12 + "}, null, [" + ednECDH + ", " + ednKW + "]])"
)

func encInfoWith(prot, unprot, ct, recipients string) string {
	return fmt.Sprintf("96([%s, %s, %s, [%s]])", prot, unprot, ct, recipients)
}

func recipientWith(prot, unprot, ct string) string {
	return fmt.Sprintf("[%s, %s, %s]", prot, unprot, ct)
}

var encInfoDecodeCases = []struct {
	name string
	edn  string
	want error // nil: decodes
}{
	{"A128KW recipient (expAW)", ednGood, nil},
	{"ECDH-ES and A128KW recipients", ednGoodEC, nil},
	{"CTR, alg unprotected", encInfoWith("h''", "{1: -65534, 5: h'000102030405060708090A0B0C0D0E0F'}", "null", ednKW), nil},
	{"empty-map protected headers", encInfoWith("<<{}>>", "{1: 1, 5: "+ednIV12+"}", "null", recipientWith("<<{}>>", "{1: -3}", ednWK24)), nil},
	{"unknown algorithms decode (refused when used)", encInfoWith("<<{1: 24}>>", "{5: "+ednIV12+"}", "null", recipientWith("h''", "{1: -6}", ednWK24)), nil},
	{"text header labels ignored", encInfoWith("<<{1: 1}>>", `{5: `+ednIV12+`, "x": 1}`, "null", ednKW), nil},
	{"X25519 ephemeral key", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 1, -1: 4, -2: h'8520F0098930A754748B7DDCB43EF75A0DBF3A0D26381AF4EBA4A98EAA9B4E6A'}}", ednWK24)), nil},
	{"ephemeral key on an unknown curve (another device's)", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 1, -1: 5, -2: h'00'}}", ednWK24)), nil},

	{"not tagged", strings.TrimSuffix(strings.TrimPrefix(ednGood, "96("), ")"), ErrMalformed},
	{"wrong tag", "97(" + strings.TrimPrefix(ednGood, "96("), ErrMalformed},
	{"COSE_Encrypt0", "16([<<{1: 1}>>, {5: " + ednIV12 + "}, null])", ErrUnsupported},
	{"three elements", "96([<<{1: 1}>>, {5: " + ednIV12 + "}, null])", ErrMalformed},
	{"attached ciphertext", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "h'00'", ednKW), ErrMalformed},
	{"no alg", encInfoWith("h''", "{5: "+ednIV12+"}", "null", ednKW), ErrMalformed},
	{"text alg", encInfoWith(`<<{1: "A128GCM"}>>`, "{5: "+ednIV12+"}", "null", ednKW), ErrUnsupported},
	{"no IV", encInfoWith("<<{1: 1}>>", "{}", "null", ednKW), ErrMalformed},
	{"IV not a bstr", encInfoWith("<<{1: 1}>>", "{5: 7}", "null", ednKW), ErrMalformed},
	{"alg in both buckets", encInfoWith("<<{1: 1}>>", "{1: 1, 5: "+ednIV12+"}", "null", ednKW), ErrMalformed},
	{"crit", encInfoWith("<<{1: 1, 2: [5]}>>", "{5: "+ednIV12+"}", "null", ednKW), ErrUnsupported},
	{"partial IV", encInfoWith("<<{1: 1}>>", "{6: h'01'}", "null", ednKW), ErrUnsupported},
	{"kid in the content layer", encInfoWith("<<{1: 1}>>", "{4: 'k', 5: "+ednIV12+"}", "null", ednKW), ErrMalformed},
	{"protected not a map", encInfoWith("<<[1]>>", "{5: "+ednIV12+"}", "null", ednKW), ErrMalformed},
	{"protected not CBOR", encInfoWith("h'FF'", "{5: "+ednIV12+"}", "null", ednKW), ErrMalformed},
	{"duplicate header", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+", 5: "+ednIV12+"}", "null", ednKW), ErrDuplicateKey},
	{"no recipients", "96([<<{1: 1}>>, {5: " + ednIV12 + "}, null, []])", ErrMalformed},
	{"too many recipients", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", strings.Repeat(ednKW+", ", MaxRecipients)+ednKW), ErrMalformed},
	{"recipient: nested recipients", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", "[h'', {1: -3}, "+ednWK24+", []]"), ErrUnsupported},
	{"recipient: two elements", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", "[h'', {1: -3}]"), ErrMalformed},
	{"recipient: no alg", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("h''", "{4: 'k'}", ednWK24)), ErrMalformed},
	{"recipient: empty wrapped key", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("h''", "{1: -3}", "h''")), ErrMalformed},
	{"recipient: null wrapped key", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("h''", "{1: -3}", "null")), ErrMalformed},
	{"recipient: IV", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("h''", "{1: -3, 5: h'00'}", ednWK24)), ErrMalformed},
	{"recipient: ECDH-ES without ephemeral key", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("<<{1: -29}>>", "{}", ednWK24)), ErrMalformed},
	{"ephemeral key with d", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 2, -1: 1, -4: h'01'}}", ednWK24)), ErrMalformed},
	{"ephemeral key compressed", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 2, -1: 1, -2: h'73024F415AA51529A66CCEFD88F3F62A734492FF45F6AD37FD2888E73EAF19DA', -3: true}}", ednWK24)), ErrUnsupported},
	{"ephemeral key: short coordinate", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 2, -1: 1, -2: h'01', -3: h'02'}}", ednWK24)), ErrMalformed},
	{"ephemeral key: not on the curve", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null",
		recipientWith("<<{1: -29}>>", "{-1: {1: 2, -1: 1, -2: h'"+strings.Repeat("01", 32)+"', -3: h'"+strings.Repeat("02", 32)+"'}}", ednWK24)), ErrMalformed},
	{"ephemeral key not a map", encInfoWith("<<{1: 1}>>", "{5: "+ednIV12+"}", "null", recipientWith("<<{1: -29}>>", "{-1: 1}", ednWK24)), ErrMalformed},
}

func TestDecodeEncryptionInfo(t *testing.T) {
	for _, tc := range encInfoDecodeCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseEDN(tc.edn)
			if err != nil {
				t.Fatalf("edn: %v", err)
			}
			info, err := DecodeEncryptionInfo(b)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Encode(); string(got) != string(b) {
				t.Fatal("a decoded info does not encode to its bytes")
			}
			for i := range info.Recipients {
				r, err := DecodeRecipient(info.Recipients[i].Encode())
				if err != nil {
					t.Fatalf("recipient %d: %v", i, err)
				}
				if r.Alg != info.Recipients[i].Alg || string(r.WrappedKey) != string(info.Recipients[i].WrappedKey) {
					t.Fatalf("recipient %d differs", i)
				}
			}
		})
	}
	// Trailing bytes and truncation.
	good, _ := parseEDN(ednGood)
	if _, err := DecodeEncryptionInfo(append(good, 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("trailing byte: %v", err)
	}
	if _, err := DecodeEncryptionInfo(good[:len(good)-1]); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated: %v", err)
	}
	if _, err := DecodeEncryptionInfo(make([]byte, MaxEnvelopeSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize: %v", err)
	}
}

// TestManifestEncryptionInfoParam: parameter-encryption-info is a bstr
// wrapping the COSE_Encrypt; anything else fails the manifest's decoding.
func TestManifestEncryptionInfoParam(t *testing.T) {
	good, _ := parseEDN(ednGood)
	for _, tc := range []struct {
		name string
		v    []byte
		want error
	}{
		{"bstr-wrapped", marshal(good), nil},
		{"not wrapped", good, ErrMalformed},
		{"empty bstr", marshal([]byte{}), ErrTruncated},
		{"bad info", marshal(append([]byte{0xd8, 0x61}, good[2:]...)), ErrMalformed},
	} {
		p, err := decodeParams(encodeIntMap(map[int64][]byte{ParamEncryptionInfo: tc.v}), "params")
		if !errors.Is(err, tc.want) || (err == nil && p.EncryptionInfo == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
