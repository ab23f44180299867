package schemas

import (
	"bytes"
	"errors"
	"testing"
)

// A notice's wrapped content key (key 11) is optional, bounded, never
// empty when present, only in a per-device notice, and covered by the
// notice's signature (SignedBytes).
func TestNoticeKey(t *testing.T) {
	base := func() UpdateNotice {
		return UpdateNotice{V: Version, Campaign: "c-1", Target: "dev-1", Envelope: []byte{1},
			Image: bytes.Repeat([]byte{7}, DigestSize), ChunkSize: 1024, Auth: []byte{1}}
	}
	for _, c := range []struct {
		name  string
		key   []byte
		class bool
		ok    bool
	}{
		{"none", nil, false, true},
		{"one byte", []byte{0x83}, false, true},
		{"at the cap", make([]byte, MaxNoticeKeySize), false, true},
		{"over the cap", make([]byte, MaxNoticeKeySize+1), false, false},
		{"empty", []byte{}, false, false},
		{"in a class announcement", []byte{0x83}, true, false},
		{"class announcement without", nil, true, true},
	} {
		n := base()
		n.Key, n.ClassTarget = c.key, c.class
		err := n.Validate()
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge)) {
			t.Errorf("%s: Validate = %v, want ok=%v", c.name, err, c.ok)
		}
		if !c.ok {
			continue
		}
		b, err := Encode(&n)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got UpdateNotice
		if err := Decode(b, &got); err != nil || !bytes.Equal(got.Key, c.key) {
			t.Errorf("%s: round trip: key %x, %v", c.name, got.Key, err)
		}
	}
	a, b := base(), base()
	b.Key = []byte{0x83}
	sa, _ := a.SignedBytes()
	sb, _ := b.SignedBytes()
	if bytes.Equal(sa, sb) {
		t.Error("the wrapped key is not covered by the notice's signed bytes")
	}
}
