package hostile

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// seedCases adds the corpus files of the given targets as fuzz seeds.
func seedCases(f *testing.F, targets ...string) {
	var cs []Case
	b, err := os.ReadFile("testdata/cases.json")
	if err != nil {
		f.Fatal(err)
	}
	if err := json.Unmarshal(b, &cs); err != nil {
		f.Fatal(err)
	}
	for _, c := range cs {
		for _, t := range targets {
			if c.Target == t {
				f.Add(readFile(f, c.File))
			}
		}
	}
}

// FuzzNoticePipeline runs what an agent does with a notice before it
// touches a slot (decode the notice, verify its signature and its
// envelope's against the corpus's trusted key, check the notice against
// the manifest), seeded with the corpus's notice cases. It must never
// panic, and nothing but a notice and an envelope signed by the trusted
// key may verify.
func FuzzNoticePipeline(f *testing.F) {
	seedCases(f, "notice", "announce")
	trust, err := suit.ParseTrustPEM(readFile(f, "keys/trusted.pub.pem"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var n schemas.UpdateNotice
		if schemas.Decode(b, &n) != nil {
			return
		}
		if _, err := suit.VerifyNotice(&n, trust); err != nil {
			if suit.Code(err) == schemas.CodeNone {
				t.Fatalf("notice verify error %v maps to code none", err)
			}
			return
		}
		m, err := suit.Verify(n.Envelope, trust)
		if err != nil {
			if suit.Code(err) == schemas.CodeNone {
				t.Fatalf("verify error %v maps to code none", err)
			}
			return
		}
		if !m.Verified() {
			t.Fatal("Verify returned an unverified manifest without an error")
		}
		_, _ = m.ImageDigest()
		_, _ = m.ChunkInfo()
	})
}
