package deviceagent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

var escrowKEK = suit.KEK{KeyID: []byte("escrow"), Key: bytes.Repeat([]byte{0xe5}, 16)}

// devKEK is the key-encryption key in a test device's root of trust.
func devKEK(id string) suit.KEK {
	k := sha256.Sum256([]byte("kek " + id))
	return suit.KEK{KeyID: []byte(id), Key: k[:16]}
}

// sealed is an image encrypted as the backend does: the ciphertext, its
// content cipher, and its encryption parameter (escrow recipient only).
type sealed struct {
	plain, ct []byte
	cc        *suit.ContentCipher
	enc       *suit.ImageEncryption
}

func seal(t *testing.T, plain []byte) sealed {
	t.Helper()
	cc, err := suit.NewContentCipher(suit.A128CTR, nil)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := cc.Seal(plain)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(plain)
	wd, err := cc.SealDigest(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	esc, err := cc.WrapFor(escrowKEK, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sealed{plain: plain, ct: ct, cc: cc, enc: &suit.ImageEncryption{Info: cc.Info(*esc), PlaintextDigest: wd}}
}

// wrapFor returns the encoded recipient of s's content key for k.
func (s sealed) wrapFor(t *testing.T, k suit.KeyWrapper) []byte {
	t.Helper()
	r, err := s.cc.WrapFor(k, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.Encode()
}

// envelope signs the manifest of the ciphertext with its encryption
// parameter (mod may change it).
func (s sealed) envelope(w *world, seq uint64, mod func(*suit.CreateOptions)) []byte {
	return w.envelope(s.ct, seq, func(o *suit.CreateOptions) {
		o.Encryption = s.enc
		if mod != nil {
			mod(o)
		}
	}, nil)
}

// encNotice publishes a per-device notice of s carrying key.
func (w *world) encNotice(campaign, dev string, s sealed, env, key []byte) {
	w.t.Helper()
	n := w.newNotice(campaign, dev, s.ct, env)
	n.Key = key
	w.raw(dev, false, w.signNotice(n, w.signer))
}

// activeBytes reads the first n bytes of the active region's image.
func (d *device) activeBytes(n int) []byte {
	d.w.t.Helper()
	base := int64(testLayout.Active.Start+testLayout.HeaderSectors) * int64(testGeom.SectorSize)
	b := make([]byte, n)
	if _, err := d.flash.ReadAt(b, base); err != nil {
		d.w.t.Fatal(err)
	}
	return b
}

// assertNoPlaintext fails if any file under dir holds a 64-byte window of
// plain or its SHA-256.
func assertNoPlaintext(t *testing.T, dir string, plain []byte) {
	t.Helper()
	sum := sha256.Sum256(plain)
	windows := map[string]bool{}
	for i := 0; i+64 <= len(plain); i += 32 {
		windows[string(plain[i:i+64])] = true
	}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, sum[:]) {
			t.Errorf("%s holds the plaintext's SHA-256", p)
		}
		// Any 64-byte window of the plaintext contains an aligned
		// 32-byte-stepped window's first 32 bytes; check 64-byte windows
		// at every offset of the file against the stepped set.
		for i := 0; i+64 <= len(b); i++ {
			if windows[string(b[i:i+64])] {
				t.Errorf("%s holds plaintext bytes at offset %d", p, i)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An encrypted image travels as ciphertext (named by its ciphertext
// digest, its chunks checked against the ciphertext table), its content
// key reaches the device wrapped for the device's own KEK in its signed
// notice, and the device installs the plaintext: the active region holds
// it, its header carries the plaintext digest. The agent's state
// directory holds neither plaintext nor its digest. A resumed run (the
// agent killed mid-download and in trial) finishes without the key in
// memory, deriving it again.
func TestEncryptedUpdate(t *testing.T) {
	for _, kill := range []string{"none", "download", "candidate-verified", "trial"} {
		t.Run(kill, func(t *testing.T) {
			w := memWorld(t)
			v2 := seal(t, testImage(21, 30*testChunk+77))
			d := w.newDevice("dev-e", func(c *Config) { c.Keys = devKEK("dev-e") })
			killed, stop := killSwitch(func() { d.cancel() })
			tune := d.tune
			d.tune = killAt(kill, stop, tune)
			updateThroughKill(t, w, d, "camp-e", v2, kill, killed, tune)
			a := d.active()
			if a.Digest != sha256.Sum256(v2.plain) || a.Version != 2 {
				t.Errorf("active header: version %d digest %x, want 2 and the plaintext's", a.Version, a.Digest[:8])
			}
			if !bytes.Equal(d.activeBytes(len(v2.plain)), v2.plain) {
				t.Error("the active region does not hold the plaintext")
			}
			assertNoPlaintext(t, d.dir, v2.plain)
		})
	}
}

// killSwitch returns a channel and a stop func that closes it and calls
// cancel (the agent killed), once however often it is called.
func killSwitch(cancel func()) (<-chan struct{}, func()) {
	killed := make(chan struct{})
	var once sync.Once
	return killed, func() {
		once.Do(func() {
			close(killed)
			cancel()
		})
	}
}

// killAt returns tune with hooks that call stop when the agent gets to
// kill: "download" (9 chunks fetched), "candidate-verified" or "trial"
// (the state recorded); with kill "none", tune itself. An OnState that
// tune sets still runs, first.
func killAt(kill string, stop func(), tune func(*Config)) func(*Config) {
	if kill == "none" {
		return tune
	}
	at := map[string]schemas.State{"candidate-verified": schemas.StateCandidateVerified, "trial": schemas.StateTrial}
	return func(c *Config) {
		tune(c)
		onState := c.OnState
		c.OnProgress = func(done, total uint64) {
			if kill == "download" && done >= 9*testChunk {
				stop()
			}
		}
		c.OnState = func(r Record) {
			if onState != nil {
				onState(r)
			}
			if s, ok := at[kill]; ok && r.State == s {
				stop()
			}
		}
	}
}

// updateThroughKill serves v2's ciphertext, starts d's agent and sends it
// v2's notice (campaign camp, the content key wrapped for the device's
// KEK). Unless kill is "none" it waits until killed is closed (the agent
// was killed) and starts the agent again with tune. It waits until the
// device confirmed version 2, stops the agent and fails the test on any
// failed report of the device.
func updateThroughKill(t *testing.T, w *world, d *device, camp string, v2 sealed, kill string, killed <-chan struct{}, tune func(*Config)) {
	t.Helper()
	w.serve(v2.ct, nil)
	d.start()
	w.encNotice(camp, d.id, v2, v2.envelope(w, 2, nil), v2.wrapFor(t, devKEK(d.id)))
	if kill != "none" {
		select {
		case <-killed:
		case <-time.After(20 * time.Second):
			t.Fatal("agent was not killed")
		}
		d.stop()
		d.tune = tune
		d.start()
	}
	w.waitReport(d.id, 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	d.stop()
	for _, r := range w.reportsOf(d.id) {
		if r.State == schemas.StateFailed {
			t.Errorf("failed report: %s %s", r.Code, r.Text)
		}
	}
}

// TestEncryptedRejections is the hostile table of encrypted updates, each
// refused at its stage with the active image byte-identical: keys that
// are not the device's, and a content key that is not the image's (it
// does not open the signed wrapped digest), are refused before a chunk is
// fetched; a decrypted slot that does not match the signed plaintext
// digest is never committed; tampered encryption parameters break the
// manifest's signature; ciphertext chunks that fail their table hash are
// dropped before decryption.
func TestEncryptedRejections(t *testing.T) {
	w := memWorld(t)
	d := w.newDevice("dev-h", func(c *Config) { c.Keys = devKEK("dev-h"); c.MaxAttempts = 2 })
	d.start()
	w.waitReport("dev-h", 5*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
	v1 := d.activeBytes(len(w.v1))

	img := seal(t, testImage(31, 12*testChunk+5))
	cs := w.serve(img.ct, nil)
	env := img.envelope(w, 2, nil)
	mine := img.wrapFor(t, devKEK("dev-h"))
	wrongKEK := img.wrapFor(t, suit.KEK{KeyID: []byte("dev-h"), Key: bytes.Repeat([]byte{9}, 16)})
	otherDev := img.wrapFor(t, devKEK("dev-other"))
	forged := seal(t, testImage(31, 12*testChunk+5)) // same plaintext, another content key
	forgedKey := forged.wrapFor(t, devKEK("dev-h"))
	unknownAlg := func() []byte {
		r, _ := suit.DecodeRecipient(mine)
		r2 := suit.Recipient{Alg: -99, KeyID: r.KeyID, WrappedKey: r.WrappedKey}
		return r2.Encode()
	}()
	gcm := &suit.ImageEncryption{Info: &suit.EncryptionInfo{Alg: suit.A128GCM, IV: make([]byte, 12), Recipients: img.enc.Info.Recipients}, PlaintextDigest: img.enc.PlaintextDigest}
	tamperedIV := func() []byte {
		// The IV is inside the signed manifest: changing it breaks the
		// signature.
		e := bytes.Clone(env)
		i := bytes.Index(e, img.enc.Info.IV)
		e[i] ^= 1
		return e
	}()
	var wrongDigest []byte
	{
		// Signed, and wrapped with the right key, but another digest.
		e := *img.enc
		other := sha256.Sum256([]byte("another image"))
		e.PlaintextDigest, _ = img.cc.SealDigest(other[:])
		wrongDigest = w.envelope(img.ct, 2, func(o *suit.CreateOptions) { o.Encryption = &e }, nil)
	}

	cases := []struct {
		name       string
		env, key   []byte
		code       schemas.ErrCode
		noDownload bool // refused before a chunk is fetched
	}{
		{"wrong KEK", env, wrongKEK, schemas.CodeUnauthorized, true},
		{"no wrapped key", env, nil, schemas.CodeUnauthorized, true},
		{"wrapped key for another device", env, otherDev, schemas.CodeUnauthorized, true},
		{"wrapped key not a COSE_recipient", env, []byte{0x01}, schemas.CodeMalformed, true},
		{"unknown key-wrap algorithm", env, unknownAlg, schemas.CodeUnsupported, true},
		{"unknown content algorithm", w.envelope(img.ct, 2, func(o *suit.CreateOptions) { o.Encryption = gcm }, nil), mine, schemas.CodeUnsupported, true},
		{"tampered IV", tamperedIV, mine, schemas.CodeSignature, true},
		{"content key of another image (swapped recipients)", env, forgedKey, schemas.CodeUnauthorized, true},
		{"signed plaintext digest that does not match", wrongDigest, mine, schemas.CodeDigest, false},
	}
	for i, tc := range cases {
		camp := "enc-" + string(rune('a'+i))
		before, served := w.maxCounter("dev-h"), len(cs.Served())
		n := w.newNotice(camp, "dev-h", img.ct, tc.env)
		n.Key = tc.key
		w.raw("dev-h", false, w.signNotice(n, w.signer))
		r := w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool {
			return r.Counter > before && r.Campaign == camp && r.State == schemas.StateFailed
		})
		if r.Code != tc.code {
			t.Errorf("%s: report code %s (%s), want %s", tc.name, r.Code, r.Text, tc.code)
		}
		if r.ActiveVersion != 1 || !bytes.Equal(d.activeBytes(len(w.v1)), v1) {
			t.Errorf("%s: the active image changed", tc.name)
		}
		if ps := sha256.Sum256(img.plain); bytes.Contains([]byte(r.Text), []byte(hex.EncodeToString(ps[:4]))) {
			t.Errorf("%s: the report names the plaintext digest: %s", tc.name, r.Text)
		}
		if tc.noDownload && len(cs.Served()) != served {
			t.Errorf("%s: chunks were fetched before the refusal", tc.name)
		}
		t.Logf("%-50s -> %s: %s", tc.name, r.Code, r.Text)
	}

	// A ciphertext chunk that fails its table hash is dropped before it is
	// decrypted and fetched again; the update then completes.
	good := seal(t, testImage(32, 12*testChunk+5))
	w.serve(good.ct, func(cs *testutil.ChunkServer) { cs.Corrupt = func(i uint32, n int) bool { return i == 4 && n == 0 } })
	w.encNotice("enc-good", "dev-h", good, good.envelope(w, 3, nil), good.wrapFor(t, devKEK("dev-h")))
	cv := w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "enc-good" && r.State == schemas.StateCandidateVerified
	})
	if !bytes.Contains([]byte(cv.Text), []byte("dropped 1 chunks that did not match")) {
		t.Errorf("candidate-verified report %q does not say a chunk was dropped", cv.Text)
	}
	w.waitReport("dev-h", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "enc-good" && r.State == schemas.StateConfirmed && r.ActiveVersion == 3
	})
	if !bytes.Equal(d.activeBytes(len(good.plain)), good.plain) {
		t.Error("the active region does not hold the plaintext")
	}
}

// A secure-boot device (its bootloader checks the envelope's image digest,
// which for an encrypted image is the ciphertext's) refuses an encrypted
// image before anything is fetched, rather than stage one it would not
// boot.
func TestEncryptedRefusedOnSecureBoot(t *testing.T) {
	w := memWorld(t)
	img := seal(t, testImage(51, 6*testChunk))
	cs := w.serve(img.ct, nil)
	var d *device
	d = w.newDevice("dev-sb", func(c *Config) {
		c.Keys = devKEK("dev-sb")
		bd, err := bootctl.Open(d.flash, testLayout, bootctl.RootOfTrust{DeviceKey: deviceKey, Verifier: suit.BootVerifier{Trust: w.trust}})
		if err != nil {
			t.Fatal(err)
		}
		c.Boot = bd
	})
	d.start()
	w.encNotice("camp-sb", "dev-sb", img, img.envelope(w, 2, nil), img.wrapFor(t, devKEK("dev-sb")))
	r := w.waitReport("dev-sb", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "camp-sb" && r.State == schemas.StateFailed
	})
	if r.Code != schemas.CodeUnsupported || len(cs.Served()) != 0 {
		t.Fatalf("report %s (%s), %d chunks served; want unsupported before any fetch", r.Code, r.Text, len(cs.Served()))
	}
}
