package deviceagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// sealDelta encrypts delta bytes d to the sealed image img as the
// publisher does: a fresh content key and IV, wrapped with wrap (the
// image's DeltaKEK unless a test says otherwise), and the offer of the
// ciphertext from source src.
func sealDelta(t *testing.T, src, d []byte, wrap suit.KEK) ([]byte, suit.DeltaInfo) {
	t.Helper()
	s := seal(t, d)
	r, err := s.cc.WrapFor(wrap, nil)
	if err != nil {
		t.Fatal(err)
	}
	offer := deltaOffer(t, src, s.ct)
	offer.Encryption = &suit.ImageEncryption{Info: s.cc.Info(*r), PlaintextDigest: s.enc.PlaintextDigest}
	return s.ct, offer
}

// An encrypted delta (issue 17): a device running the plain v1 takes the
// delta to the encrypted v2, whose content key it unwraps with v2's
// DeltaKEK (v2's own key, from its notice), fetches only the delta's
// ciphertext, keeps it encrypted at rest while it applies it, and
// confirms v2. With encrypted slots, the result goes into the slot
// encrypted again with v2's key, and no window of v2's new bytes is on
// the flash outside the active region. The state directory holds neither
// v2's new bytes nor its digest.
func TestEncryptedDeltaUpdate(t *testing.T) {
	for _, slots := range []bool{false, true} {
		name := "plain-slot"
		if slots {
			name = "encrypted-slot"
		}
		t.Run(name, func(t *testing.T) {
			w := memWorld(t)
			v2 := seal(t, nextOf(w.v1, 2))
			secret := v2.plain[len(v2.plain)/3 : len(v2.plain)/3+300] // what v2 adds to v1
			d, _ := makeDelta(t, w.v1, v2.plain, 0)
			dct, offer := sealDelta(t, w.v1, d, v2.cc.DeltaKEK())
			full, dcs := w.serve(v2.ct, nil), w.serve(dct, nil)
			var dev *device
			dev = w.newDevice("dev-ed", func(c *Config) {
				c.Keys = devKEK("dev-ed")
				if slots {
					c.EncryptedSlots = true
					c.Boot = encSlotBoot(t, dev)
					c.OnState = func(r Record) {
						if (r.State == schemas.StateCandidateVerified || r.State == schemas.StateStaged) && flashHasPlaintext(t, dev.flash, secret, false) {
							t.Errorf("%s: the flash outside the active region holds v2's new bytes", r.State)
						}
					}
				}
			})
			dev.start()
			w.encNotice("camp-ed", "dev-ed", v2, v2.envelope(w, 2, withDeltas(offer)), v2.wrapFor(t, devKEK("dev-ed")))
			r := w.waitReport("dev-ed", 20*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
			})
			dev.stop()
			if r.State != schemas.StateConfirmed {
				t.Fatalf("ended %s: %s\n%s", r.State, r.Text, w.dump("dev-ed"))
			}
			if a := dev.active(); a.Version != 2 || a.Digest != sha256.Sum256(v2.plain) {
				t.Fatalf("active %+v", a)
			}
			if !bytes.Equal(dev.activeBytes(len(v2.plain)), v2.plain) {
				t.Error("the active region does not hold v2's plaintext")
			}
			if n := served(full); n != 0 {
				t.Errorf("%d chunks of the full image served, want none", n)
			}
			if served(dcs) == 0 {
				t.Error("the delta was not fetched")
			}
			if txt := w.verifiedText("dev-ed"); !strings.Contains(txt, "applied") {
				t.Errorf("candidate-verified report %q does not say the delta was applied", txt)
			}
			sum := sha256.Sum256(v2.plain)
			if strings.Contains(w.dump("dev-ed"), string(sum[:])) {
				t.Error("a report holds v2's plaintext digest")
			}
			assertNoPlaintext(t, dev.dir, secret)
			assertNoDigest(t, dev.dir, sum[:])
		})
	}
}

// assertNoDigest fails if any file under dir holds digest.
func assertNoDigest(t *testing.T, dir string, digest []byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, digest) || bytes.Contains(b, []byte(schemas.DigestHex(digest))) {
			t.Errorf("%s holds the plaintext digest", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An encrypted image's delta that the device cannot open, or that is not
// encrypted, is refused before it is fetched, and the full image is
// taken: a delta key wrapped with another image's DeltaKEK (or with the
// image's content key itself), and a plain delta to an encrypted image
// (it would carry the image's plaintext).
func TestEncryptedDeltaRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(t *testing.T, v1 []byte, v2 sealed, d []byte) ([]byte, suit.DeltaInfo)
		why  string
	}{
		{"another image's delta key", func(t *testing.T, v1 []byte, v2 sealed, d []byte) ([]byte, suit.DeltaInfo) {
			other := seal(t, v2.plain)
			return sealDelta(t, v1, d, other.cc.DeltaKEK())
		}, "encrypted delta"},
		{"wrapped with the content key", func(t *testing.T, v1 []byte, v2 sealed, d []byte) ([]byte, suit.DeltaInfo) {
			return sealDelta(t, v1, d, suit.KEK{KeyID: []byte(suit.DeltaKeyID), Key: v2.cc.Key()})
		}, "encrypted delta"},
		{"plain delta", func(t *testing.T, v1 []byte, v2 sealed, d []byte) ([]byte, suit.DeltaInfo) {
			return d, deltaOffer(t, v1, d)
		}, "plain delta to an encrypted image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := memWorld(t)
			v2 := seal(t, nextOf(w.v1, 2))
			d, _ := makeDelta(t, w.v1, v2.plain, 0)
			served, offer := tc.mk(t, w.v1, v2, d)
			full, dcs := w.serve(v2.ct, nil), w.serve(served, nil)
			dev := w.newDevice("dev-er", func(c *Config) { c.Keys = devKEK("dev-er") })
			dev.start()
			w.encNotice("camp-er", "dev-er", v2, v2.envelope(w, 2, withDeltas(offer)), v2.wrapFor(t, devKEK("dev-er")))
			r := w.waitReport("dev-er", 20*time.Second, func(r schemas.DeviceReport) bool {
				return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
			})
			dev.stop()
			if r.State != schemas.StateConfirmed || dev.active().Digest != sha256.Sum256(v2.plain) {
				t.Fatalf("ended %s (%s)\n%s", r.State, r.Text, w.dump("dev-er"))
			}
			if reqs, _, _ := dcs.Counts(); reqs > 0 {
				t.Errorf("the refused delta was requested %d times", reqs)
			}
			if n := full.Served(); len(n) == 0 {
				t.Error("the full image was not fetched")
			}
			if !strings.Contains(w.dump("dev-er"), tc.why) {
				t.Errorf("no report says %q:\n%s", tc.why, w.dump("dev-er"))
			}
		})
	}
}

// TestEncryptedDeltaPowerCut: TestDeltaPowerCut for an encrypted delta,
// into a plain and into an encrypted slot: a power cut or a torn program
// at every flash operation from the notice to staged ends with the
// device confirmed on v2 by the delta (never the full image), resumed
// from a checkpoint at least once, the keys derived again after each
// reset from the persisted envelope and wrapped key.
func TestEncryptedDeltaPowerCut(t *testing.T) {
	for _, slots := range []bool{false, true} {
		name := "plain-slot"
		if slots {
			name = "encrypted-slot"
		}
		t.Run(name, func(t *testing.T) {
			w := memWorld(t)
			v2 := seal(t, nextOf(w.v1, 2))
			d, _ := makeDelta(t, w.v1, v2.plain, delta.MinFrameSize)
			dct, offer := sealDelta(t, w.v1, d, v2.cc.DeltaKEK())
			w.serve(v2.ct, nil)
			w.serve(dct, nil)
			env := v2.envelope(w, 2, withDeltas(offer))
			want := sha256.Sum256(v2.plain)
			rot := func(id string) bootctl.RootOfTrust {
				r := bootctl.RootOfTrust{DeviceKey: deviceKey}
				if slots {
					r.KEK = devKEK(id).Key
				}
				return r
			}
			newDev := func(id string) *device {
				var dev *device
				dev = w.newDevice(id, func(c *Config) {
					c.Keys = devKEK(id)
					if slots {
						c.EncryptedSlots = true
						c.Boot = encSlotBoot(t, dev)
					}
				})
				return dev
			}

			// A run without a cut counts the flash operations up to staged.
			ref := newDev("dev-ref")
			ref.flash.ResetStats()
			var ops uint64
			tune := ref.tune
			ref.tune = func(c *Config) {
				tune(c)
				c.OnState = func(r Record) {
					if r.State == schemas.StateStaged && ops == 0 {
						ops = ref.flash.Stats().Ops()
					}
				}
			}
			ref.start()
			w.encNotice("camp-ref", "dev-ref", v2, env, v2.wrapFor(t, devKEK("dev-ref")))
			w.waitState("dev-ref", schemas.StateConfirmed, 20*time.Second)
			ref.stop()
			if ops == 0 {
				t.Fatal("no flash operations counted")
			}
			t.Logf("%d flash operations from the notice to staged", ops)

			for _, kind := range []bootctl.FaultKind{bootctl.FaultCut, bootctl.FaultTorn} {
				var viaDelta, viaFull, resumed int
				for k := uint64(0); k < ops; k++ {
					id := fmt.Sprintf("dev-%s-%d", kind, k)
					dev := newDev(id)
					dev.flash.ResetStats()
					dev.flash.Arm(bootctl.Fault{After: k, Kind: kind})
					dev.start()
					w.encNotice("camp-"+id, id, v2, env, v2.wrapFor(t, devKEK(id)))
					if !waitPowerOff(dev.flash, 20*time.Second) {
						t.Fatalf("%s at %d: the power was not cut", kind, k)
					}
					dev.stop()
					dev.flash.PowerOn()
					bd, err := bootctl.Open(dev.flash, testLayout, rot(id))
					if err != nil {
						t.Fatal(err)
					}
					if dec, err := bd.Boot(context.Background()); err != nil || !dec.Booted {
						t.Fatalf("%s at %d: the device does not boot: %+v, %v", kind, k, dec, err)
					}
					st, _ := LoadState(dev.dir)
					dev.start()
					r := w.waitReport(id, 20*time.Second, func(r schemas.DeviceReport) bool {
						return r.State == schemas.StateConfirmed || r.State == schemas.StateFailed
					})
					if r.State != schemas.StateConfirmed || dev.active().Digest != want {
						t.Fatalf("%s at %d: ended %s (%s)\n%s", kind, k, r.State, r.Text, w.dump(id))
					}
					dev.stop()
					txt := w.dump(id)
					if strings.Contains(txt, "not applied") {
						viaFull++
					} else {
						viaDelta++
					}
					last := ""
					for _, r := range w.reportsOf(id) {
						if strings.HasPrefix(r.Text, "applying delta") {
							last = r.Text
						}
					}
					if len(st.Delta) > 0 && !strings.Contains(last, "from frame 0 ") {
						resumed++
					}
				}
				t.Logf("%s: %d cuts; ended by the delta %d times (%d resumed from a checkpoint), by the full image %d times",
					kind, ops, viaDelta, resumed, viaFull)
				if viaFull > 0 {
					t.Errorf("%s: %d cuts ended with the full image; the staged delta is applied again", kind, viaFull)
				}
				if resumed == 0 {
					t.Errorf("%s: no cut resumed the delta from a checkpoint", kind)
				}
			}
		})
	}
}
