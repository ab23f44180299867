package hostile

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

var update = flag.Bool("update", false, "rewrite testdata/ from the generator")

// The device every case is aimed at.
const (
	deviceID       = "dev-a"
	otherDevice    = "dev-b"
	deviceClass    = "cls-a"
	chunkSize      = 1024
	factoryVersion = 5
)

var (
	vendorID = bytes.Repeat([]byte{0xfa}, 16)
	classID  = bytes.Repeat([]byte{0xc1}, 16)
	// deviceUUID is device A's SUIT device identifier; otherUUID another's.
	deviceUUID = bytes.Repeat([]byte{0xd1}, 16)
	otherUUID  = bytes.Repeat([]byte{0xd2}, 16)
)

// Case is one hostile input. File holds the bytes published (or the HTTP
// body); Target says where; Stage names the check that must refuse it and
// Code the schemas.ErrCode that check reports.
type Case struct {
	Name   string `json:"name"`
	File   string `json:"file"`
	Target string `json:"target"` // notice, announce, report, http, request
	Stage  string `json:"stage"`
	Code   string `json:"code"`
	// Signed: the case carries an envelope validly signed by the trusted
	// key, and is wrong anyway.
	Signed bool `json:"signed,omitempty"`
	// Serve: a chunk source for the notice's image, playing the attacker
	// (the bytes it sends that differ from the honest ones are files too).
	Serve *Serve `json:"serve,omitempty"`
	// Path is the HTTP method and path of http cases; Auth its key kind
	// ("admin", "none", "bogus").
	Path string `json:"path,omitempty"`
	Auth string `json:"auth,omitempty"`
	// Live: the report names the live campaign the test starts for device
	// B (its id is only known at run time and replaces the file's).
	Live bool `json:"live,omitempty"`
	// Op is the campaign API operation (request topic) of request cases.
	Op  string `json:"op,omitempty"`
	Why string `json:"why"`
}

// Serve describes the chunk source of a fetch-stage case.
type Serve struct {
	Image   string   `json:"image"`             // images/<name>.bin
	Table   string   `json:"table,omitempty"`   // served table bytes instead of the honest one
	Extra   []string `json:"extra,omitempty"`   // chunk messages sent before the honest chunks of every request
	Corrupt bool     `json:"corrupt,omitempty"` // every honest chunk has a byte flipped
	Drop    bool     `json:"drop,omitempty"`    // honest chunks are never sent
}

func keyFrom(label string) ed25519.PrivateKey {
	s := sha256.Sum256([]byte("firmcast hostile corpus " + label))
	return ed25519.NewKeyFromSeed(s[:])
}

func image(seed uint64, n int) []byte { return testutil.PseudoRandom(seed, 0x6f7461, n) }

// corpus is the generator's output: file contents by path under testdata/.
type corpus struct {
	t     testing.TB
	files map[string][]byte
	cases []Case
}

func (c *corpus) put(path string, b []byte) string {
	if _, dup := c.files[path]; dup {
		c.t.Fatalf("generator: %s written twice", path)
	}
	c.files[path] = b
	return path
}

func (c *corpus) add(cs Case, b []byte) {
	cs.File = c.put(fmt.Sprintf("cases/%03d-%s.bin", len(c.cases)+1, cs.Name), b)
	c.cases = append(c.cases, cs)
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func enc(t testing.TB, v any) []byte { return must[[]byte](t)(schemas.Marshal(v)) }

// generate builds the whole corpus deterministically.
func generate(t testing.TB) *corpus {
	c := &corpus{t: t, files: map[string][]byte{}}
	ctx := context.Background()
	trusted, untrusted := keyFrom("trusted"), keyFrom("untrusted")
	for name, k := range map[string]ed25519.PrivateKey{"trusted": trusted, "untrusted": untrusted} {
		c.put("keys/"+name+".pem", must[[]byte](t)(suit.MarshalPrivateKeyPEM(k)))
		c.put("keys/"+name+".pub.pem", must[[]byte](t)(suit.MarshalPublicKeyPEM(k.Public())))
	}
	signer := must[suit.Signer](t)(suit.NewKeySigner(trusted, suit.EdDSA))
	rogue := must[suit.Signer](t)(suit.NewKeySigner(untrusted, suit.EdDSA))
	hmacSigner := must[suit.Signer](t)(suit.NewHMACSigner(suit.HMACKey(bytes.Repeat([]byte{7}, 32))))

	images := map[string][]byte{"v1": image(1, 3000), "v2": image(2, 5000), "v3": image(3, 4100)}
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for k := range images {
			if !yield(k) {
				return
			}
		}
	}) {
		c.put("images/"+n+".bin", images[n])
	}
	v2, v3 := images["v2"], images["v3"]
	digest := func(b []byte) []byte { d := sha256.Sum256(b); return d[:] }

	opts := func(img []byte, seq uint64) suit.CreateOptions {
		return suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendorID, ClassID: classID, Seq: seq, ChunkSize: chunkSize}
	}
	create := func(o suit.CreateOptions, s suit.Signer) []byte { return must[[]byte](t)(suit.Create(ctx, o, s)) }
	good := create(opts(v2, 6), signer)
	camp := 0
	// notice makes a notice signed by the campaign authority (the trusted
	// key: the device's notice trust defaults to its manifest trust).
	notice := func(env, img []byte, mod func(*schemas.UpdateNotice)) []byte {
		camp++
		n := schemas.UpdateNotice{V: schemas.Version, Campaign: fmt.Sprintf("h-%03d", camp), Target: deviceID,
			Envelope: env, Image: digest(img), ChunkSize: chunkSize}
		if mod != nil {
			mod(&n)
		}
		if err := suit.SignNotice(ctx, &n, signer); err != nil {
			t.Fatal(err)
		}
		return must[[]byte](t)(schemas.Encode(&n))
	}
	validNotice := notice(good, v2, nil)

	// --- Stage decode: the notice is not a valid UpdateNotice. ---------
	dec := func(name string, b []byte, why string) {
		c.add(Case{Name: name, Target: "notice", Stage: "agent:decode-notice", Code: "malformed", Why: why}, b)
	}
	dec("not-cbor", []byte("hello, device"), "text, not CBOR")
	dec("empty-map", []byte{0xa0}, "a map without the required fields")
	dec("truncated-half", validNotice[:len(validNotice)/2], "a valid notice cut in half")
	dec("truncated-one", validNotice[:len(validNotice)-1], "a valid notice missing its last byte")
	dec("trailing-byte", append(slices.Clone(validNotice), 0x00), "a valid notice followed by one more item")
	dec("top-level-array", []byte{0x83, 0x01, 0x02, 0x03}, "an array where a map is expected")
	dec("wrong-type-version", enc(t, map[int]any{0: "one", 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: chunkSize}), "version as a text string")
	dec("wrong-type-envelope", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: "envelope", 7: digest(v2), 8: chunkSize}), "envelope as a text string")
	dec("wrong-type-chunk-size", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: -1024}), "negative chunk size")
	dec("float-chunk-size", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: 1024.5}), "float chunk size")
	dup := []byte{0xa6, 0x00, 0x01, 0x00, 0x01, 0x01, 0x61, 'c', 0x02, 0x65, 'd', 'e', 'v', '-', 'a', 0x07, 0x41, 0x00, 0x08, 0x19, 0x04, 0x00}
	dec("duplicate-key", dup, "key 0 twice")
	dec("indefinite-map", append(append([]byte{0xbf}, validNotice[1:]...), 0xff), "an indefinite-length map")
	dec("deep-array-nesting", append(bytes.Repeat([]byte{0x81}, 20000), 0x00), "20000 nested arrays")
	dec("deep-map-nesting", append(append([]byte{0xa1, 0x18, 0x63}, bytes.Repeat([]byte{0xa1, 0x00}, 5000)...), 0x00), "5000 nested maps under an unknown key")
	dec("huge-bstr-length", append([]byte{0xa1, 0x03, 0x5b}, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00), "a byte string declaring 2^63 bytes")
	dec("huge-map-length", []byte{0xba, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00}, "a map declaring 2^32-1 entries")
	dec("huge-array-length", []byte{0xa1, 0x04, 0x9b, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00}, "sources declaring 2^40 entries")
	dec("oversize-envelope", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: bytes.Repeat([]byte{0x42}, schemas.MaxEnvelopeSize+1), 7: digest(v2), 8: chunkSize}), "an envelope one byte over the cap")
	dec("unknown-field", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: chunkSize, 99: "x"}), "an unknown key")
	dec("wrong-version", enc(t, map[int]any{0: 99, 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: chunkSize}), "a format version this build does not speak")
	dec("short-image-digest", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: good, 7: digest(v2)[:31], 8: chunkSize}), "a 31-byte image digest")
	dec("self-describe-tag", append([]byte{0xd9, 0xd9, 0xf7}, validNotice...), "a tag in front of the notice")
	dec("zero-chunk-size", enc(t, map[int]any{0: 1, 1: "c", 2: deviceID, 3: good, 7: digest(v2), 8: 0}), "chunk size 0")
	c.add(Case{Name: "announce-garbage", Target: "announce", Stage: "agent:decode-notice", Code: "malformed",
		Why: "garbage on the class announcement topic"}, []byte("\xa1\x00\x00not cbor"))

	// --- Stage authenticate: the notice is not the campaign authority's.
	// Refused before anything in it is recorded, as a security event.
	auth := func(name, code string, b []byte, why string) {
		c.add(Case{Name: name, Target: "notice", Stage: "agent:authenticate", Code: code, Why: why}, b)
	}
	rogueNotice := func(env, img []byte, campaign string) []byte {
		n := schemas.UpdateNotice{V: schemas.Version, Campaign: campaign, Target: deviceID, Envelope: env, Image: digest(img), ChunkSize: chunkSize}
		if err := suit.SignNotice(ctx, &n, rogue); err != nil {
			t.Fatal(err)
		}
		return must[[]byte](t)(schemas.Encode(&n))
	}
	auth("notice-untrusted-key", "untrusted-key", rogueNotice(good, v2, "h-auth-1"),
		"a notice signed by a key the device does not trust, carrying a genuine envelope")
	auth("notice-replayed-envelope", "untrusted-key", rogueNotice(create(opts(v3, 7), signer), v3, "h-auth-2"),
		"a validly signed envelope replayed under a new campaign id, the notice re-signed by the attacker")
	rewritten := func(mod func(n *schemas.UpdateNotice)) []byte {
		var n schemas.UpdateNotice
		if err := schemas.Decode(notice(good, v2, nil), &n); err != nil {
			t.Fatal(err)
		}
		mod(&n)
		return must[[]byte](t)(schemas.Encode(&n))
	}
	auth("notice-campaign-rewritten", "signature", rewritten(func(n *schemas.UpdateNotice) { n.Campaign = "h-other" }),
		"a genuine notice whose campaign id was changed after signing")
	auth("notice-hint-added", "signature", rewritten(func(n *schemas.UpdateNotice) {
		n.Sources = []schemas.SourceHint{{Kind: schemas.SourceHTTP, URI: "http://127.0.0.1:9/steal"}}
	}), "a genuine notice with a source hint added after signing")
	auth("notice-manifest-signature", "signature", rewritten(func(n *schemas.UpdateNotice) { n.Auth = authOf(t, good) }),
		"the envelope's own authentication wrapper (the trusted key's manifest signature) offered as the notice's")

	// --- Stage target: a valid notice for someone else. ----------------
	c.add(Case{Name: "other-device", Target: "notice", Stage: "agent:target", Code: "device-mismatch", Signed: true,
		Why: "a validly signed notice naming another device, on this device's topic"},
		notice(good, v2, func(n *schemas.UpdateNotice) { n.Target = otherDevice }))
	c.add(Case{Name: "other-class-announce", Target: "announce", Stage: "agent:target", Code: "device-mismatch", Signed: true,
		Why: "a validly signed announcement naming another class"},
		notice(good, v2, func(n *schemas.UpdateNotice) { n.Target, n.ClassTarget = "cls-b", true }))
	c.add(Case{Name: "device-notice-as-announce", Target: "announce", Stage: "agent:target", Code: "device-mismatch", Signed: true,
		Why: "a validly signed notice for a device named like this device's class, replayed on the class topic"},
		notice(good, v2, func(n *schemas.UpdateNotice) { n.Target = deviceClass }))

	// --- Stage verify: the envelope does not authenticate. -------------
	ver := func(name, code string, env []byte, why string) {
		c.add(Case{Name: name, Target: "notice", Stage: "agent:verify", Code: code, Why: why}, notice(env, v2, nil))
	}
	flip := func(b []byte, i int) []byte { b = slices.Clone(b); b[i] ^= 0x01; return b }
	ver("envelope-last-byte", "signature", flip(good, len(good)-1), "the manifest's last byte flipped")
	ver("envelope-signature-byte", "untrusted-key", flip(good, bytes.Index(good, must[[]byte](t)(sigOf(good)))+3), "a byte of the signature flipped")
	ver("untrusted-key", "untrusted-key", create(opts(v2, 6), rogue), "signed by a key the device does not trust")
	ver("hmac-unknown-key", "untrusted-key", create(opts(v2, 6), hmacSigner), "a COSE_Mac0 with a key the device does not hold")
	ver("envelope-truncated", "malformed", good[:len(good)-7], "envelope cut short")
	ver("envelope-not-cbor", "malformed", []byte("not an envelope at all"), "envelope bytes that are not CBOR")
	ver("envelope-wrong-tag", "malformed", append([]byte{0xd8, 0x6c}, good[2:]...), "envelope under tag 108 instead of 107")
	ver("envelope-no-signature", "malformed", stripAuth(t, good), "the authentication wrapper holds the digest only, no signature")

	// --- Stage process: validly signed, wrong for this device. ---------
	// The agent's verify step checks, after the signature, the notice's
	// image digest, anti-rollback and the slot size (stage agent:verify);
	// the SUIT processor then checks vendor, class, device and expiry
	// (agent:process).
	proc := func(name, code string, env []byte, img []byte, why string) {
		stage := "agent:process"
		if code == "rollback" || code == "size" || code == "digest" {
			stage = "agent:verify"
		}
		c.add(Case{Name: name, Target: "notice", Stage: stage, Code: code, Signed: true, Why: why}, notice(env, img, nil))
	}
	other := bytes.Repeat([]byte{0x33}, 16)
	o := opts(v2, 6)
	o.ClassID = other
	proc("other-class", "class-mismatch", create(o, signer), v2, "a manifest for another device class")
	o = opts(v2, 6)
	o.VendorID = other
	proc("other-vendor", "vendor-mismatch", create(o, signer), v2, "a manifest for another vendor")
	proc("other-device-manifest", "device-mismatch", withDeviceID(t, good, otherUUID, signer), v2, "a manifest whose device-identifier condition names another device")
	for _, seq := range []uint64{0, 1, 4} {
		proc(fmt.Sprintf("replay-seq-%d", seq), "rollback", create(opts(v2, seq), signer), v2,
			fmt.Sprintf("an older sequence number (%d) than the installed %d", seq, factoryVersion))
	}
	for _, at := range []string{"2020-01-01T00:00:00Z", "2001-09-09T01:46:40Z"} {
		o = opts(v2, 6)
		o.UseBefore = must[time.Time](t)(time.Parse(time.RFC3339, at))
		proc("expired-"+at[:4], "expired", create(o, signer), v2, "use-before "+at+" has passed")
	}
	o = opts(nil, 6)
	o.Image, o.ImageDigest, o.ImageSize, o.ChunkTableDigest = nil, digest(v2), 1<<30, digest([]byte("t"))
	proc("oversize-image", "size", create(o, signer), v2, "a 1 GiB image for a 64 KiB slot")
	proc("notice-digest-differs", "digest", good, v3, "the notice names image v3, the manifest signs v2")

	// --- Stage fetch: signed, but the bytes on the wire disagree. ------
	tab := func(img []byte) *schemas.ChunkTable {
		return must[*schemas.ChunkTable](t)(schemas.BuildChunkTable(bytes.NewReader(img), chunkSize))
	}
	fetch := func(name, code string, env, img []byte, s *Serve, why string) {
		c.add(Case{Name: name, Target: "notice", Stage: "agent:fetch", Code: code, Signed: true, Serve: s, Why: why}, notice(env, img, nil))
	}
	chunk := func(ch schemas.Chunk) []byte { ch.V = schemas.Version; return enc(t, &ch) } // no validation: hostile
	v3tab := must[[]byte](t)(schemas.Encode(tab(v3)))
	fetch("table-of-other-image", "chunk-table", good, v2, &Serve{Image: "images/v2.bin",
		Table: c.put("serve/table-of-v3.bin", v3tab)}, "the source serves v3's chunk table for v2")
	t2 := tab(v2)
	t2.Hashes = slices.Clone(t2.Hashes)
	t2.Hashes[1] = schemas.Digest(digest([]byte("forged")))
	fetch("table-one-entry-forged", "chunk-table", good, v2, &Serve{Image: "images/v2.bin",
		Table: c.put("serve/table-forged-entry.bin", must[[]byte](t)(schemas.Encode(t2)))}, "one chunk digest in the table replaced")
	fetch("table-garbage", "no-source", good, v2, &Serve{Image: "images/v2.bin",
		Table: c.put("serve/table-garbage.bin", []byte{0xa2, 0x00, 0x01, 0x00, 0x01})}, "only a chunk table that does not decode: dropped as noise, so no source delivers one")
	o = opts(v2, 6)
	o.ChunkTableDigest = digest([]byte("some other table"))
	fetch("manifest-table-digest-differs", "chunk-table", create(o, signer), v2, &Serve{Image: "images/v2.bin"},
		"the manifest signs a chunk-table digest no table has")
	fetch("every-chunk-corrupt", "bad-chunk", good, v2, &Serve{Image: "images/v2.bin", Corrupt: true},
		"every chunk arrives with a byte flipped")
	onlyJunk := func(name, file string, chunks [][]byte, why string) {
		var files []string
		for i, b := range chunks {
			files = append(files, c.put(fmt.Sprintf("serve/%s-%d.bin", file, i), b))
		}
		code := "no-source"
		if file == "chunks-dup" || file == "chunks-big" {
			code = "bad-chunk" // the right image and index, the wrong bytes
		}
		fetch(name, code, good, v2, &Serve{Image: "images/v2.bin", Drop: true, Extra: files}, why)
	}
	onlyJunk("chunks-of-other-image", "chunks-v3", [][]byte{
		chunk(schemas.Chunk{Image: digest(v3), Index: 0, Data: v3[:chunkSize]}),
		chunk(schemas.Chunk{Image: digest(v3), Index: 1, Data: v3[chunkSize : 2*chunkSize]})},
		"the source answers with chunks of another image")
	onlyJunk("chunk-index-out-of-range", "chunks-oob", [][]byte{
		chunk(schemas.Chunk{Image: digest(v2), Index: 5, Data: v2[:chunkSize]}),
		chunk(schemas.Chunk{Image: digest(v2), Index: 4000000, Data: v2[:chunkSize]})},
		"chunk indexes past the image's last chunk")
	onlyJunk("chunk-duplicate-index-wrong-data", "chunks-dup", [][]byte{
		chunk(schemas.Chunk{Image: digest(v2), Index: 0, Data: v2[chunkSize : 2*chunkSize]}),
		chunk(schemas.Chunk{Image: digest(v2), Index: 0, Data: v2[2*chunkSize : 3*chunkSize]})},
		"the same index twice, each time with another chunk's bytes")
	onlyJunk("chunk-oversize-data", "chunks-big", [][]byte{
		chunk(schemas.Chunk{Image: digest(v2), Index: 4, Data: v2[:]})},
		"the last chunk carrying the whole image (more bytes than the manifest allows)")
	var endless [][]byte
	for i := range 40 {
		endless = append(endless, chunk(schemas.Chunk{Image: digest(v2), Index: uint32(5 + i), Data: bytes.Repeat([]byte{byte(i)}, chunkSize)}))
	}
	onlyJunk("endless-chunk-stream", "chunks-endless", endless, "an endless stream of chunks beyond the image's end")
	onlyJunk("chunk-garbage", "chunks-garbage", [][]byte{{0xff, 0xfe, 0xfd}, []byte("chunk")},
		"bytes that are not chunks on the chunk reply topic")

	// --- Publisher: reports. --------------------------------------------
	rep := func(name, stage, code string, b []byte, why string) {
		c.add(Case{Name: name, Target: "report", Stage: "publisher:report:" + stage, Code: code, Why: why}, b)
	}
	report := func(mod func(*schemas.DeviceReport)) []byte {
		r := schemas.DeviceReport{V: schemas.Version, Device: deviceID, Campaign: "h-none", State: schemas.StateConfirmed,
			ActiveVersion: 6, Counter: 1 << 40, Time: 1}
		if mod != nil {
			mod(&r)
		}
		return must[[]byte](t)(schemas.Encode(&r))
	}
	goodRep := report(nil)
	rep("report-not-cbor", "malformed", "malformed", []byte("state: confirmed"), "a report that is not CBOR")
	rep("report-truncated", "malformed", "malformed", goodRep[:len(goodRep)-2], "a report cut short")
	rep("report-duplicate-key", "malformed", "malformed", []byte{0xa5, 0x00, 0x01, 0x00, 0x01, 0x01, 0x65, 'd', 'e', 'v', '-', 'a', 0x03, 0x01, 0x09, 0x01},
		"key 0 twice")
	rep("report-unknown-state", "malformed", "malformed", enc(t, map[int]any{0: 1, 1: deviceID, 2: "h-none", 3: 200, 6: 6, 9: 1 << 40, 10: 1}), "a state number that does not exist")
	rep("report-deep-nesting", "malformed", "malformed", append(bytes.Repeat([]byte{0x81}, 10000), 0x00), "10000 nested arrays")
	rep("report-for-other-device", "wrong-topic", "device-mismatch", report(func(r *schemas.DeviceReport) { r.Device = otherDevice }),
		"a device reporting in another device's name")
	rep("report-unknown-campaign", "not-target", "not-found", goodRep, "confirmed for a campaign that does not exist")
	live := func(name, stage string, st schemas.State, counter uint64, why string) {
		b := report(func(r *schemas.DeviceReport) {
			r.Device, r.Campaign, r.State, r.Counter, r.ActiveVersion = otherDevice, "live", st, counter, factoryVersion
		})
		c.add(Case{Name: name, Target: "report", Stage: "publisher:report:" + stage, Code: "conflict", Live: true, Why: why}, b)
	}
	live("report-idle-in-campaign", "impossible", schemas.StateIdle, 50, "a notified device reporting idle in the campaign (no transition leads back to idle)")
	live("report-counter-zero", "stale", schemas.StateDownloading, 0, "a report whose counter is not above the last one the backend holds")
	c.put("serve/live-envelope.suit", good)

	// --- Publisher: campaign API with bad input. -------------------------
	api := func(name, path, auth, code string, body []byte, why string) {
		c.add(Case{Name: name, Target: "http", Stage: "publisher:api:http", Code: code, Path: path, Auth: auth, Why: why}, body)
	}
	api("api-truncated-json", "POST /api/v1/campaigns", "admin", "malformed", []byte(`{"image": "ab`), "truncated JSON")
	api("api-not-json", "POST /api/v1/campaigns", "admin", "malformed", []byte("image=ab&class=x"), "a form body")
	api("api-unknown-field", "POST /api/v1/campaigns", "admin", "malformed", []byte(`{"imgae": "ab"}`), "a misspelt field")
	api("api-wrong-type", "POST /api/v1/campaigns", "admin", "malformed", []byte(`{"devices": "dev-a"}`), "a string where a list is expected")
	api("api-trailing-data", "POST /api/v1/campaigns", "admin", "malformed", []byte(`{} {}`), "two JSON values")
	api("api-array", "POST /api/v1/campaigns", "admin", "malformed", []byte(`[1,2,3]`), "an array where an object is expected")
	api("api-deep-nesting", "POST /api/v1/campaigns", "admin", "malformed", append(bytes.Repeat([]byte("["), 20000), bytes.Repeat([]byte("]"), 20000)...), "20000 nested arrays")
	api("api-huge-body", "POST /api/v1/campaigns", "admin", "size", append(append([]byte(`{"image": "`), bytes.Repeat([]byte("a"), 1<<20)...), []byte(`"}`)...), "a body over the 1 MiB cap")
	api("api-action-body", "POST /api/v1/campaigns/h-none/start", "admin", "malformed", []byte(`{"force": true}`), "a body on a call that takes none")
	api("api-no-key", "POST /api/v1/campaigns", "none", "unauthorized", []byte(`{}`), "no Authorization header")
	api("api-bogus-key", "POST /api/v1/campaigns", "bogus", "unauthorized", []byte(`{}`), "an API key that was never issued")
	api("api-device-bad-json", "POST /api/v1/devices", "admin", "malformed", []byte(`{"id": 12}`), "a number where the device id string is expected")
	request := func(name, op, code string, body []byte, why string) {
		c.add(Case{Name: name, Target: "request", Stage: "publisher:api:request", Code: code, Op: op, Why: why}, body)
	}
	request("request-not-cbor", "create", "malformed", []byte(`{"op":"create"}`), "JSON on the CBOR API subject")
	request("request-truncated", "status", "malformed", must[[]byte](t)(schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "status", Key: "k", Campaign: "h-none"}))[:9], "a command cut short")
	request("request-op-mismatch", "abort", "malformed", must[[]byte](t)(schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "status", Campaign: "h-none", Key: "k"})), "a status command on the abort subject")
	request("request-no-key", "status", "unauthorized", must[[]byte](t)(schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "status", Campaign: "h-none"})), "no API key")
	request("request-bogus-key", "list", "unauthorized", must[[]byte](t)(schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "list", Key: "fk-bogus"})), "an API key that was never issued")

	c.encryptedCases(signer, v2, notice)

	b := must[[]byte](t)(json.MarshalIndent(c.cases, "", "  "))
	c.put("cases.json", append(b, '\n'))
	return c
}

// sigOf returns the signature bytes of the envelope's first COSE_Sign1
// (the last 64 bytes of an Ed25519 block).
func sigOf(env []byte) ([]byte, error) {
	m, err := suit.Decode(env)
	if err != nil || len(m.Signatures) == 0 {
		return nil, fmt.Errorf("no signature: %v", err)
	}
	// Ed25519 signatures are 64 bytes, encoded as 0x58 0x40 + bytes;
	// the first such bstr after the digest is the signature.
	i := bytes.Index(env, []byte{0x58, 0x40})
	if i < 0 {
		return nil, fmt.Errorf("no 64-byte bstr")
	}
	return env[i+2 : i+2+64], nil
}

// stripAuth rebuilds the envelope with an authentication wrapper holding
// the digest only.
func stripAuth(t testing.TB, env []byte) []byte {
	m := must[*suit.Manifest](t)(suit.Decode(env))
	digestItem := enc(t, enc(t, []any{m.Digest.Alg, m.Digest.Bytes}))
	auth := enc(t, []any{cbor.RawMessage(digestItem)})
	return enc(t, cbor.Tag{Number: 107, Content: map[int]any{2: auth, 3: cbor.RawMessage(m.Raw())}})
}

// authOf returns the content of an envelope's authentication wrapper
// (its key 2 bstr).
func authOf(t testing.TB, env []byte) []byte {
	var tagged cbor.Tag
	if err := cbor.Unmarshal(env, &tagged); err != nil {
		t.Fatal(err)
	}
	var m map[int]cbor.RawMessage
	if err := cbor.Unmarshal(must[[]byte](t)(cbor.Marshal(tagged.Content)), &m); err != nil {
		t.Fatal(err)
	}
	var auth []byte
	if err := cbor.Unmarshal(m[2], &auth); err != nil {
		t.Fatal(err)
	}
	return auth
}

// trustedSigner is the corpus's trusted key as a signer: it signs the
// envelopes and, as the campaign authority, the notices (a publisher of
// these tests uses it as its notice signer).
func trustedSigner(t testing.TB) suit.Signer {
	k, err := suit.ParsePrivateKeyPEM(readFile(t, "keys/trusted.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return must[suit.Signer](t)(suit.NewKeySigner(k, suit.EdDSA))
}

// withDeviceID re-signs the envelope's manifest with a device-identifier
// condition for id added to the shared sequence.
func withDeviceID(t testing.TB, env, id []byte, s suit.Signer) []byte {
	m := must[*suit.Manifest](t)(suit.Decode(env))
	m.Shared = append(m.Shared,
		suit.Command{Label: suit.DirOverrideParams, Params: &suit.Params{DeviceID: id}, Known: true},
		suit.Command{Label: suit.CondDeviceID, Policy: 15, Known: true})
	return must[[]byte](t)(suit.Seal(context.Background(), m, s))
}

// TestGenerate checks that testdata/ is what the generator makes (with
// -update, rewrites it).
func TestGenerate(t *testing.T) {
	c := generate(t)
	if len(c.cases) < 50 {
		t.Fatalf("%d cases, want at least 50", len(c.cases))
	}
	signed := 0
	for _, cs := range c.cases {
		if cs.Signed {
			signed++
		}
		if _, ok := schemas.ParseErrCode(cs.Code); !ok {
			t.Errorf("%s: code %q is not a schemas.ErrCode name", cs.Name, cs.Code)
		}
	}
	if signed < 20 {
		t.Errorf("%d validly signed cases, want at least 20", signed)
	}
	if *update {
		if err := os.RemoveAll("testdata"); err != nil {
			t.Fatal(err)
		}
	}
	for p, b := range c.files {
		p = filepath.Join("testdata", p)
		if *update {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s differs from the generator's output (run go test -run TestGenerate -update): %v", p, err)
		}
	}
	t.Logf("%d cases, %d validly signed, %d files", len(c.cases), signed, len(c.files))
}
