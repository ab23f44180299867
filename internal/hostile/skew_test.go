package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

type skewedClock struct{ d time.Duration }

func (c skewedClock) Now() time.Time { return time.Now().Add(c.d) }

// TestClockSkew: a device whose clock is a day ahead or behind installs a
// manifest whose use-before lies a week ahead, refuses one that expired
// three days ago, and refuses a replayed older sequence number whatever
// its clock says (anti-rollback does not depend on time). The acceptance
// error of use-before is bounded by the skew: a deadline closer than the
// device's skew is judged by the device's clock (docs/SECURITY.md).
func TestClockSkew(t *testing.T) {
	key, err := suit.ParsePrivateKeyPEM(readFile(t, "keys/trusted.pem"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	v2 := readFile(t, "images/v2.bin")
	v3 := readFile(t, "images/v3.bin")
	envelope := func(img []byte, seq uint64, useBefore time.Time) []byte {
		env, err := suit.Create(context.Background(), suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID,
			ClassID: classID, Seq: seq, ChunkSize: chunkSize, UseBefore: useBefore}, signer)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	for _, skew := range []time.Duration{24 * time.Hour, -24 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r := startRig(t, ctx, func(c *deviceagent.Config) { c.Clock = skewedClock{skew} })
			tab, err := schemas.BuildChunkTable(bytes.NewReader(v2), chunkSize)
			if err != nil {
				t.Fatal(err)
			}
			cs := &testutil.ChunkServer{Transport: r.backend, Topics: r.topics, Image: v2, Table: tab}
			if err := cs.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer cs.Stop(context.Background())
			send := func(campaign string, img, env []byte) schemas.DeviceReport {
				t.Helper()
				from := r.mark()
				n := schemas.UpdateNotice{V: schemas.Version, Campaign: campaign, Target: deviceID, Envelope: env,
					Image: sha256Sum(img), ChunkSize: chunkSize}
				if err := suit.SignNotice(ctx, &n, signer); err != nil {
					t.Fatal(err)
				}
				b, err := schemas.Encode(&n)
				if err != nil {
					t.Fatal(err)
				}
				topic, _ := r.topics.Notice(deviceID)
				if err := r.backend.Publish(ctx, topic, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
					t.Fatal(err)
				}
				rep, ok := r.waitReport(20*time.Second, from, func(x schemas.DeviceReport) bool {
					return x.Device == deviceID && x.Campaign == campaign &&
						(x.Code != schemas.CodeNone || x.State == schemas.StateConfirmed || x.State == schemas.StateSkipped)
				})
				if !ok {
					t.Fatalf("%s: no outcome reported", campaign)
				}
				return rep
			}
			now := time.Now()
			if rep := send("skew-expired", v2, envelope(v2, 6, now.Add(-72*time.Hour))); rep.Code != schemas.CodeExpired {
				t.Errorf("expired 3 days ago: %s %s, want expired", rep.Code, rep.Text)
			}
			if rep := send("skew-valid", v2, envelope(v2, 6, now.Add(7*24*time.Hour))); rep.State != schemas.StateConfirmed || rep.ActiveVersion != 6 {
				t.Errorf("valid for a week: %s %s (%s), want confirmed version 6", rep.State, rep.Code, rep.Text)
			}
			if rep := send("skew-replay", v3, envelope(v3, 5, time.Time{})); rep.Code != schemas.CodeRollback {
				t.Errorf("replayed sequence 5 (another image) after 6: %s %s, want rollback", rep.Code, rep.Text)
			}
		})
	}
}

func sha256Sum(b []byte) []byte { d := sha256.Sum256(b); return d[:] }
