package schemas

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json from the vector table")

// vectorFile is the JSON layout of testdata/<name>.json.
type vectorFile struct {
	Title    string `json:"title"`
	Type     string `json:"type"`
	CBORHex  string `json:"cborHex"`
	CBORDiag string `json:"cborDiag"`
}

type vector struct {
	name  string // testdata/<name>.json
	title string
	msg   Message
}

func rep(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func u64(v uint64) *uint64 { return &v }

// testImage is a deterministic image of n bytes.
func testImage(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func testTable(t testing.TB) *ChunkTable {
	ct, err := BuildChunkTable(bytes.NewReader(testImage(600)), 256)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// testCodedTable is testTable with a code committed: blocks of 2 chunks,
// 1 parity chunk per block (placeholder hashes: schemas does not compute
// parity).
func testCodedTable(t testing.TB) *ChunkTable {
	ct := testTable(t)
	ct.Block, ct.ParityPerBlock = 2, 1
	for b := range ct.NumBlocks() {
		ct.Parity = append(ct.Parity, Digest(rep(0xb0+byte(b), DigestSize)))
	}
	return ct
}

// vectors returns the test vectors. The first vector of each type is the
// base the rejection table mutates.
func vectors(t testing.TB) []vector {
	img := rep(0xaa, 32)
	return []vector{
		{"notice-0001", "per-device notice with broker and HTTP sources", &UpdateNotice{
			V: Version, Campaign: "camp-1", Target: "dev-42", Envelope: []byte{0xd8, 0x6b, 0xa2, 0x02, 0x40, 0x03, 0x40, 0x00},
			Sources:  []SourceHint{{Kind: SourceBroker}, {Kind: SourceHTTP, URI: "https://cdn.example/fw.bin", Cost: 250}},
			Deadline: 1767225600, Image: img, ChunkSize: 16384,
			Auth: []byte{0x82, 0x40, 0x40}, // placeholder; schemas/suit signs and checks real ones
		}},
		{"notice-0002", "class announcement with a start window and no source hints", &UpdateNotice{
			V: Version, Campaign: "camp-1", Target: "sensor-v2", Envelope: []byte{0x01},
			StartWindowMS: 30000, Image: img, ChunkSize: 1024, ClassTarget: true, Auth: []byte{0x82, 0x40, 0x40},
		}},
		{"request-0001", "chunk request as ranges", &ChunkRequest{
			V: Version, Image: img, ChunkSize: 16384, Ranges: []Range{{First: 0, Count: 4}, {First: 10, Count: 1}},
			ReplyTo: "firmcast/v1/dev/dev-42/chunks", Requester: "dev-42", Campaign: "camp-1",
		}},
		{"request-0002", "chunk request as a bitmap, with the chunk table", &ChunkRequest{
			V: Version, Image: img, ChunkSize: 256, Bitmap: []byte{0x0f, 0x01},
			ReplyTo: "firmcast.v1.dev.dev-42.chunks", Requester: "dev-42", WantTable: true,
		}},
		{"request-0003", "chunk table request of a device listening on the broadcast topic", &ChunkRequest{
			V: Version, Image: img, ChunkSize: 16384,
			ReplyTo: "firmcast/v1/dev/dev-42/chunks", Requester: "dev-42", WantTable: true, Listening: true,
		}},
		{"request-0004", "chunk table request of a device that speaks coded repair (delivery protocol 2)", &ChunkRequest{
			V: Version, Image: img, ChunkSize: 16384,
			ReplyTo: "firmcast/v1/dev/dev-42/chunks", Requester: "dev-42", WantTable: true, Listening: true, Protocol: ProtocolCoded,
		}},
		{"request-0005", "loss summary of a device of delivery protocol 2 that heard end marker 3 (a repair round's) before asking", &ChunkRequest{
			V: Version, Image: img, ChunkSize: 16384, Bitmap: []byte{0x00, 0x81},
			ReplyTo: "firmcast/v1/dev/dev-42/chunks", Requester: "dev-42", Campaign: "camp-1", Protocol: ProtocolCoded, Seen: 3,
		}},
		{"chunk-0001", "chunk 3 of an image", &Chunk{
			V: Version, Image: img, Index: 3, Data: []byte("hello, firmware!"),
		}},
		{"waveend-0001", "end of wave 2, which carried chunks 0-511", &WaveEnd{
			V: Version, Image: img, Wave: 2, Sent: []Range{{First: 0, Count: 512}},
		}},
		{"announce-0001", "repair round for wave 2: 3 parity chunks of block 0, 1 of block 5", &RepairAnnounce{
			V: Version, Image: img, Wave: 2, Need: []BlockNeed{{Block: 0, Parity: 3}, {Block: 5, Parity: 1}},
		}},
		{"table-0001", "chunk table of a 600-byte image in 256-byte chunks", testTable(t)},
		{"table-0002", "coded chunk table: 600-byte image in 256-byte chunks, blocks of 2 chunks, 1 parity chunk per block", testCodedTable(t)},
		{"parity-0001", "parity chunk 1 of source block 3", &ParityChunk{
			V: Version, Image: img, Block: 3, Index: 1, Data: []byte("parity, 16 bytes"),
		}},
		{"report-0001", "download progress over the broker", &DeviceReport{
			V: Version, Device: "dev-42", Campaign: "camp-1", State: StateDownloading, BytesDone: 4096, BytesTotal: 600000,
			ActiveVersion: 7, Counter: 12, Time: 1764072000123, Source: SourceBroker,
		}},
		{"report-0002", "failure with an error code and text", &DeviceReport{
			V: Version, Device: "dev-42", Campaign: "camp-1", State: StateFailed, ActiveVersion: 7,
			Code: CodeSignature, Text: "manifest signature invalid", Counter: 13, Time: 1764072001000, Class: "sensor-v2",
		}},
		{"report-0003", "security event: a notice refused before anything in it was trusted", &DeviceReport{
			V: Version, Device: "dev-42", State: StateConfirmed, ActiveVersion: 7, Code: CodeUntrustedKey,
			Text: "notice refused: no signature by a trusted key", Counter: 14, Time: 1764072002000, Security: true,
		}},
		{"report-0004", "download progress of a device that speaks coded repair (delivery protocol 2)", &DeviceReport{
			V: Version, Device: "dev-42", Campaign: "camp-1", State: StateDownloading, BytesDone: 8192, BytesTotal: 600000,
			ActiveVersion: 7, Counter: 15, Time: 1764072003000, Source: SourceBroker, Protocol: ProtocolCoded,
		}},
		{"command-0001", "create a phased campaign", &CampaignCommand{
			V: Version, Op: OpCreate, Key: "k-123", Spec: &CampaignSpec{
				Image: img, Devices: []string{"dev-42", "dev-43"}, Class: "sensor-v2", OnVersion: u64(7),
				Phases: []uint8{10, 50, 100}, SuccessPermille: 950, FailPermille: 50, Start: true, Name: "spring rollout",
			},
		}},
		{"command-0002", "pause a campaign", &CampaignCommand{V: Version, Op: OpPause, Key: "k-123", Campaign: "camp-1"}},
		{"reply-0001", "status of a running campaign", &CampaignReply{
			V: Version, OK: true, Status: &CampaignStatus{
				ID: "camp-1", State: "running", Phase: 1, Counts: map[string]uint64{"confirmed": 3, "downloading": 10}, Image: img,
			},
		}},
		{"reply-0002", "refused command", &CampaignReply{V: Version, Code: CodeUnauthorized, Error: "bad API key"}},
		{"reply-0003", "campaign list", &CampaignReply{V: Version, OK: true, List: []CampaignStatus{
			{ID: "camp-1", State: "running"}, {ID: "camp-0", State: "aborted", Phase: 2, Reason: "fail threshold 50 permille reached"},
		}}},
	}
}

var cmpOpts = cmp.Options{cmpopts.IgnoreUnexported(Range{})}

func newLike(m Message) Message { return reflect.New(reflect.TypeOf(m).Elem()).Interface().(Message) }

func TestVectors(t *testing.T) {
	for _, v := range vectors(t) {
		t.Run(v.name, func(t *testing.T) {
			path := filepath.Join("testdata", v.name+".json")
			if *update {
				b, err := Encode(v.msg)
				if err != nil {
					t.Fatal(err)
				}
				diag, err := cbor.Diagnose(b)
				if err != nil {
					t.Fatal(err)
				}
				out, _ := json.MarshalIndent(vectorFile{v.title, v.msg.MessageName(), hex.EncodeToString(b), diag}, "", "  ")
				if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var f vectorFile
			if err := json.Unmarshal(raw, &f); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if f.Type != v.msg.MessageName() {
				t.Fatalf("type %q, want %q", f.Type, v.msg.MessageName())
			}
			want, err := hex.DecodeString(f.CBORHex)
			if err != nil {
				t.Fatal(err)
			}

			// hex -> struct
			got := newLike(v.msg)
			if err := Decode(want, got); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d := cmp.Diff(got, v.msg, cmpOpts); d != "" {
				t.Errorf("Decode mismatch (-got +want):\n%s", d)
			}
			// struct -> hex
			enc, err := Encode(v.msg)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(enc, want) {
				t.Errorf("Encode:\n got %x\nwant %x", enc, want)
			}
			// hex <-> diag, with a parser independent of ours: the diag is
			// what fxamacker's default (non-strict) decoder sees.
			diag, err := cbor.Diagnose(want)
			if err != nil {
				t.Fatal(err)
			}
			if diag != f.CBORDiag {
				t.Errorf("diag:\n got %s\nwant %s", diag, f.CBORDiag)
			}
		})
	}
}

// TestVectorFilesAllListed makes sure no vector file is left unchecked.
func TestVectorFilesAllListed(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, v := range vectors(t) {
		listed[filepath.Join("testdata", v.name+".json")] = true
	}
	for _, f := range files {
		if !listed[f] {
			t.Errorf("%s is not in the vector table", f)
		}
	}
	if len(files) != len(listed) {
		t.Errorf("%d vector files, %d vectors", len(files), len(listed))
	}
}

func TestRoundTrip(t *testing.T) {
	for _, v := range vectors(t) {
		b, err := Encode(v.msg)
		if err != nil {
			t.Fatalf("%s: Encode: %v", v.name, err)
		}
		// Decode into a dirty value: Decode must reset it first.
		got := newLike(v.msg)
		for _, w := range vectors(t) {
			if reflect.TypeOf(w.msg) == reflect.TypeOf(v.msg) && w.name != v.name {
				got = w.msg
				break
			}
		}
		got = cloneMsg(t, got)
		if err := Decode(b, got); err != nil {
			t.Fatalf("%s: Decode: %v", v.name, err)
		}
		if d := cmp.Diff(got, v.msg, cmpOpts); d != "" {
			t.Errorf("%s: round trip (-got +want):\n%s", v.name, d)
		}
		b2, err := Encode(got)
		if err != nil || !bytes.Equal(b, b2) {
			t.Errorf("%s: re-encoding differs (%v)", v.name, err)
		}
	}
}

func cloneMsg(t testing.TB, m Message) Message {
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	c := newLike(m)
	if err := Unmarshal(b, c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDecodeCopies checks that a decoded message does not alias its input.
func TestDecodeCopies(t *testing.T) {
	b, err := Encode(base[Chunk](t))
	if err != nil {
		t.Fatal(err)
	}
	var c Chunk
	if err := Decode(b, &c); err != nil {
		t.Fatal(err)
	}
	clear(b)
	if d := cmp.Diff(&c, base[Chunk](t), cmpOpts); d != "" {
		t.Errorf("decoded chunk changed with its input (-got +want):\n%s", d)
	}
}
