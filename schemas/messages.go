package schemas

import "fmt"

// Version is the format version written into every message's field 0.
const Version = 1

// Delivery protocol versions a device speaks (ChunkRequest.Protocol,
// DeviceReport.Protocol). The message format (Version) is the same for
// both; what differs is which chunk table the device takes and how it is
// repaired.
const (
	// ProtocolPlain is the delivery protocol of the first agents: chunk
	// tables without parity (ChunkTable.Block 0), repair by chunks
	// (re-broadcast or unicast). An agent that sends no protocol speaks it.
	ProtocolPlain = 1
	// ProtocolCoded adds erasure-coded repair: the device takes the coded
	// chunk table the manifest names (suit.ParamFirmcastCodedTable) and
	// parity chunks (ParityChunk).
	ProtocolCoded = 2
	// MaxProtocol is the highest delivery protocol this package knows.
	MaxProtocol = ProtocolCoded
)

// Sizes and limits of the wire contract.
const (
	// DigestSize is the size of every digest on the wire (SHA-256).
	DigestSize = 32
	// MinChunkSize and MaxChunkSize bound the chunk size of an image.
	MinChunkSize = 256
	MaxChunkSize = 1 << 20
	// MaxChunks bounds the number of chunks of one image.
	MaxChunks = 1 << 17
	// MaxCodeShards bounds source plus parity chunks of one erasure-coded
	// block (ChunkTable.Block + ChunkTable.ParityPerBlock): the code is
	// Reed-Solomon over GF(2^8), which has 256 distinct evaluation points.
	MaxCodeShards = 256
	// MaxParityChunks bounds the parity chunk hashes a chunk table
	// commits (ChunkTable.Parity).
	MaxParityChunks = MaxChunks / 2
	// MaxEnvelopeSize bounds the signed SUIT envelope carried in a notice.
	MaxEnvelopeSize = 64 << 10
	// MaxNoticeAuthSize bounds the authentication wrapper of a notice (a
	// few COSE blocks).
	MaxNoticeAuthSize = 2 << 10
	// MaxNoticeKeySize bounds the wrapped content key of a notice (one
	// COSE_recipient: a wrapped key, a key id, maybe an ephemeral key).
	MaxNoticeKeySize = 1 << 10
	// MaxSources bounds the source hints of a notice.
	MaxSources = 16
	// MaxURILen bounds the URI of a source hint.
	MaxURILen = 1024
	// MaxRanges bounds the ranges of a chunk request.
	MaxRanges = 1024
	// MaxBitmapSize bounds the bitmap of a chunk request (one bit per chunk).
	MaxBitmapSize = MaxChunks / 8
	// MaxReplyToLen bounds the reply address of a chunk request.
	MaxReplyToLen = 256
	// MaxTextLen bounds free text: a report's error text, a reply's error,
	// a campaign's pause or abort reason.
	MaxTextLen = 512
	// MaxKeyLen bounds the API key of a campaign command.
	MaxKeyLen = 256
	// MaxNameLen bounds a campaign's display name and a status' state name.
	MaxNameLen = 128
)

// Source kinds of a SourceHint.
const (
	SourceBroker   = "broker"   // chunks over the broker (URI empty)
	SourceObjStore = "objstore" // NATS JetStream object store (URI "nats://bucket/object")
	SourceHTTP     = "http"     // HTTP(S) range requests (URI "https://...")
	SourceFile     = "file"     // a local file or directory (URI a path)
)

// Campaign API operations (CampaignCommand.Op).
const (
	OpCreate = "create"
	OpStart  = "start"
	OpPause  = "pause"
	OpResume = "resume"
	OpAbort  = "abort"
	OpStatus = "status"
	OpList   = "list"
)

// SourceHint names a place an image can be fetched from, with its cost.
//
//	source-hint = { 0: tstr, ? 1: tstr, ? 2: uint }
type SourceHint struct {
	// Kind is one of SourceBroker, SourceObjStore, SourceHTTP, SourceFile.
	Kind string `cbor:"0,keyasint"`
	// URI locates the image for that kind: empty for SourceBroker, required
	// (1..MaxURILen bytes) for the others.
	URI string `cbor:"1,keyasint,omitempty"`
	// Cost is the publisher's price hint in milli-units per MiB; 0 = free.
	Cost uint32 `cbor:"2,keyasint,omitempty"`
}

// UpdateNotice tells a device (or a class) that an update is pending.
// It is published retained on the device's notice topic (Topics.Notice)
// or on the class announcement topic (Topics.Announce).
//
// A notice is signed by the campaign authority (the publisher's notice
// key): Auth authenticates every other field, so the campaign id, the
// target, the envelope, the image and the source hints are what the
// publisher sent to this target, and a notice for one device or campaign
// cannot be replayed as one for another. The SUIT envelope inside is
// signed separately, by the firmware signer. schemas/suit signs and
// verifies Auth (suit.SignNotice, suit.VerifyNotice); SignedBytes gives
// the bytes it covers.
//
//	update-notice = { 0: 1, 1: id, 2: id, 3: bstr, ? 4: [* source-hint],
//	                  ? 5: uint, ? 6: uint, 7: digest, 8: chunk-size,
//	                  ? 9: true, 10: bstr, ? 11: bstr, ? 12: true }
type UpdateNotice struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Campaign is the campaign id (an identifier, see CheckID).
	Campaign string `cbor:"1,keyasint"`
	// Target is the device id (per-device notice) or, with ClassTarget,
	// the class id (announcement).
	Target string `cbor:"2,keyasint"`
	// Envelope is the signed SUIT envelope (1..MaxEnvelopeSize bytes),
	// opaque to this package; schemas/suit decodes and verifies it.
	Envelope []byte `cbor:"3,keyasint"`
	// Sources are where the image can be fetched, at most MaxSources.
	// Devices take only their cost (price per kind) from them; where to
	// fetch from comes from the signed manifest and the device's own
	// configuration.
	Sources []SourceHint `cbor:"4,keyasint,omitempty"`
	// Deadline is the campaign deadline, Unix seconds; 0 = none. A device
	// refuses the notice after it.
	Deadline int64 `cbor:"5,keyasint,omitempty"`
	// StartWindowMS is the random start delay window in milliseconds: the
	// device waits a uniformly random time in [0, window) before it asks.
	StartWindowMS uint32 `cbor:"6,keyasint,omitempty"`
	// Image is the SHA-256 of the image, naming its chunk topics.
	Image []byte `cbor:"7,keyasint"`
	// ChunkSize is the chunk size in bytes used by the broker source.
	ChunkSize uint32 `cbor:"8,keyasint"`
	// ClassTarget says that Target names a device class, not a device.
	ClassTarget bool `cbor:"9,keyasint,omitempty"`
	// Auth is the notice's signature: a SUIT_Authentication array (the
	// SHA-256 of SignedBytes and at least one COSE_Sign1 or COSE_Mac0
	// block over it), 1..MaxNoticeAuthSize bytes.
	Auth []byte `cbor:"10,keyasint"`
	// Key is this device's wrapped content key for an encrypted image: one
	// COSE_recipient (schemas/suit DecodeRecipient), 1..MaxNoticeKeySize
	// bytes, signed with the rest of the notice. Only a per-device notice
	// carries one (never a class announcement): each device receives the
	// content key wrapped for its own key, while the ciphertext is one for
	// all. What the key decrypts is authenticated by the signed manifest,
	// not by this field.
	Key []byte `cbor:"11,keyasint,omitempty"`
	// Retry asks a device to install the image even if it failed on it
	// before (CodeFailedBefore otherwise): the campaign retries it on
	// purpose.
	Retry bool `cbor:"12,keyasint,omitempty"`
}

// SignedBytes returns the bytes Auth authenticates: the deterministic
// encoding of n without Auth (key 10). Decode accepts only the
// deterministic encoding, so for a decoded notice these are exactly the
// received bytes minus that entry. It does not validate n.
func (n *UpdateNotice) SignedBytes() ([]byte, error) {
	c := *n
	c.Auth = nil
	b, err := encMode.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, nameNotice, err)
	}
	return b, nil
}

// Range is a run of chunk indexes [First, First+Count), Count >= 1.
//
//	range = [first: uint, count: uint]
type Range struct {
	_     struct{} `cbor:",toarray"`
	First uint32
	Count uint32
}

// ChunkRequest asks the publisher for chunks of an image. Wanted chunks are
// given either as Ranges or as a Bitmap (bit i is bit i%8, counted from the
// least significant bit, of byte i/8; set = chunk i wanted; see Bitmap),
// not both. A request wants at least one chunk or the table. A device
// publishes it on its own request topic (Topics.ChunkRequestsFrom);
// publishers receive every device's through a shared subscription and
// answer the device that topic names, on its Topics.ChunkReply, never
// anywhere the request's fields point to.
//
//	chunk-request = { 0: 1, 1: digest, 2: chunk-size, ? 3: [+ range],
//	                  ? 4: bstr, 5: tstr, 6: id, ? 7: id, ? 8: true,
//	                  ? 9: true, ? 10: 2..255 }
type ChunkRequest struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the image.
	Image []byte `cbor:"1,keyasint"`
	// ChunkSize must equal the chunk size the image is served with.
	ChunkSize uint32 `cbor:"2,keyasint"`
	// Ranges lists wanted chunks, at most MaxRanges runs, sorted and
	// disjoint (as Bitmap.Missing returns them).
	Ranges []Range `cbor:"3,keyasint,omitempty"`
	// Bitmap marks wanted chunks, at most MaxBitmapSize bytes.
	Bitmap []byte `cbor:"4,keyasint,omitempty"`
	// ReplyTo is the requester's Topics.ChunkReply (in its transport's
	// form), 1..MaxReplyToLen bytes, no wildcards or whitespace. The
	// publisher refuses a request whose ReplyTo is anything else.
	ReplyTo string `cbor:"5,keyasint"`
	// Requester is the device id of the requester; the publisher refuses
	// a request whose Requester is not the device its topic names.
	Requester string `cbor:"6,keyasint"`
	// Campaign is the campaign the request belongs to, if known.
	Campaign string `cbor:"7,keyasint,omitempty"`
	// WantTable asks for the chunk table as well.
	WantTable bool `cbor:"8,keyasint,omitempty"`
	// Listening says the requester listens on the image's broadcast chunk
	// topic already: a table it asks for may come there, in a wave (once
	// per wave, at its start and repeated within it), instead of by
	// unicast. A device asks again only if it missed every copy, and is
	// then answered by unicast. Agents that do not set it get the table
	// by unicast, as before.
	Listening bool `cbor:"9,keyasint,omitempty"`
	// Protocol is the delivery protocol the requester speaks
	// (ProtocolCoded, ...); absent (0) means ProtocolPlain, which is never
	// written. The publisher answers a table request with the table of
	// that protocol (the plain table for ProtocolPlain) and repairs the
	// requester's losses by the repair path of that protocol.
	Protocol uint8 `cbor:"10,keyasint,omitempty"`
	// Seen is the number of the last end marker of the image
	// (WaveEnd.Wave: a wave's or a repair round's) the requester heard
	// before asking; absent (0) when it heard none or does not say. What a
	// round sent before its marker reached the requester or was lost, so
	// its losses are in this request: the publisher counts as crossing the
	// request, still on their way to it, only the repair rounds whose
	// marker came after Seen, and answers at once the need those leave.
	// A requester that does not send it is answered as if every recent
	// round had crossed it. Markers are numbered by the publisher
	// instance that sends them, the one that owns the image's waves and
	// takes its summaries. Agents send it only for a coded image; a
	// publisher from before the field refuses a request that carries it
	// (unknown key), so the backend is upgraded before the agents.
	Seen uint32 `cbor:"11,keyasint,omitempty"`
}

// DeliveryProtocol returns the delivery protocol of r's requester
// (ProtocolPlain when it names none).
func (r *ChunkRequest) DeliveryProtocol() int { return protocolOf(r.Protocol) }

func protocolOf(p uint8) int {
	if p == 0 {
		return ProtocolPlain
	}
	return int(p)
}

// Chunk carries one chunk of an image: Data is bytes
// [Index*chunkSize, Index*chunkSize+len(Data)) of the image. A receiver
// checks it with ChunkTable.VerifyChunk before writing it anywhere.
//
//	chunk = { 0: 1, 1: digest, 2: uint, 3: bstr }
type Chunk struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the image.
	Image []byte `cbor:"1,keyasint"`
	// Index is the chunk index, below MaxChunks.
	Index uint32 `cbor:"2,keyasint"`
	// Data is the chunk, 1..MaxChunkSize bytes.
	Data []byte `cbor:"3,keyasint"`
}

// WaveEnd marks the end of a broadcast wave of an image: the publisher
// sends it on the image's broadcast chunk topic (QoS 0) after the wave's
// last chunk, saying which chunks the wave carried. A device does not ask
// for chunks while a wave flows; once it sees the marker (or, should the
// marker be lost, once the wave has been quiet for a while) it sends one
// loss summary (a ChunkRequest of what it still lacks) after a random
// back-off, shorter for devices that lack more.
//
//	wave-end = { 0: 1, 1: digest, 2: uint, 3: [+ range] }
type WaveEnd struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the image.
	Image []byte `cbor:"1,keyasint"`
	// Wave numbers the sender's waves of the image, from 1.
	Wave uint32 `cbor:"2,keyasint"`
	// Sent lists the chunks the wave carried: 1..MaxRanges runs, sorted
	// and disjoint.
	Sent []Range `cbor:"3,keyasint"`
}

// RepairAnnounce tells the devices of a coded image, on its broadcast
// chunk topic (QoS 0), that a repair round is coming: for each block
// named, that many fresh parity chunks follow. The publisher sends it as
// soon as the first loss summaries after a wave show what each block
// needs (the neediest devices speak first, see WaveEnd), before the
// parity. Devices cannot hear one another, so this is how summaries are
// suppressed: a device whose need the announcement covers (for every
// block, it lacks no more chunks than parity held plus announced) does
// not send its summary; one that the round leaves short asks later.
// Devices of delivery protocol 1 drop it unread.
//
//	repair-announce = { 0: 1, 1: digest, 2: uint, 4: [+ block-need] }
type RepairAnnounce struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the image.
	Image []byte `cbor:"1,keyasint"`
	// Wave is the number of the wave (WaveEnd.Wave) whose losses the
	// round repairs, 1 or more.
	Wave uint32 `cbor:"2,keyasint"`
	// Need lists, per block, the parity chunks coming: 1..MaxChunks
	// entries, blocks strictly increasing. Key 4, not 3, so that an
	// announcement never decodes as a WaveEnd.
	Need []BlockNeed `cbor:"4,keyasint"`
}

// BlockNeed is one block's entry of a RepairAnnounce: Parity fresh parity
// chunks of block Block are coming (1..MaxCodeShards-1).
//
//	block-need = [block: uint, parity: uint]
type BlockNeed struct {
	_      struct{} `cbor:",toarray"`
	Block  uint32
	Parity uint32
}

// ChunkTable lists the SHA-256 of every chunk of an image, so that a device
// can check each chunk on arrival. Its own SHA-256 (over the deterministic
// encoding, see Digest) is signed in the manifest. Build one with
// BuildChunkTable.
//
// A coded table (Block > 0) also commits erasure-coded repair: the image's
// chunks are cut into source blocks of Block consecutive chunks (the last
// block may hold fewer), and for each block ParityPerBlock parity chunks
// are defined (see ParityChunk); Parity holds their SHA-256, block-major,
// so that a device checks each parity chunk on arrival (VerifyParity), as
// it checks each chunk, and never feeds a forged one into a decode. Tables
// without these keys are the format agents of delivery protocol 1 decode;
// a coded table is for agents that speak coded repair.
//
//	chunk-table = { 0: 1, 1: digest, 2: uint, 3: chunk-size, 4: [+ digest],
//	                ? 5: uint, ? 6: uint, ? 7: [+ digest] }
type ChunkTable struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the whole image.
	Image []byte `cbor:"1,keyasint"`
	// ImageSize is the image size in bytes, at least 1.
	ImageSize uint64 `cbor:"2,keyasint"`
	// ChunkSize is the size of every chunk but the last.
	ChunkSize uint32 `cbor:"3,keyasint"`
	// Hashes holds ChunkCount(ImageSize, ChunkSize) SHA-256 digests.
	Hashes []Digest `cbor:"4,keyasint"`
	// Block is the number of source chunks per erasure-coded block, or 0
	// for a table that commits no parity (then keys 6 and 7 are absent).
	Block uint32 `cbor:"5,keyasint,omitempty"`
	// ParityPerBlock is the number of parity chunks committed per block,
	// at least 1 when Block is set; Block+ParityPerBlock <= MaxCodeShards.
	ParityPerBlock uint32 `cbor:"6,keyasint,omitempty"`
	// Parity holds the SHA-256 of parity chunk j of block b at index
	// b*ParityPerBlock+j: NumBlocks()*ParityPerBlock digests, at most
	// MaxParityChunks.
	Parity []Digest `cbor:"7,keyasint,omitempty"`
}

// ParityChunk carries parity chunk Index of source block Block of an
// image whose chunk table is coded (ChunkTable.Block > 0). Data is always
// ChunkSize bytes: Reed-Solomon parity (github.com/klauspost/reedsolomon's
// default systematic matrix, data shards = the block's source chunks, the
// image's last chunk zero-padded to ChunkSize, parity shards =
// ChunkTable.ParityPerBlock) over the block's chunks; any source chunks
// and parity chunks of a block that number its source chunks rebuild it.
// A receiver checks it with ChunkTable.VerifyParity before keeping it.
// Broadcast on the image's chunk topic only; a receiver that does not
// know the message (an agent of delivery protocol 1) drops it.
//
//	parity-chunk = { 0: 1, 1: digest, 2: uint, 3: uint, 4: bstr }
type ParityChunk struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Image is the SHA-256 of the image.
	Image []byte `cbor:"1,keyasint"`
	// Block is the source block index, below MaxChunks.
	Block uint32 `cbor:"2,keyasint"`
	// Index is the parity chunk's index within its block, below
	// MaxCodeShards-1.
	Index uint32 `cbor:"3,keyasint"`
	// Data is the parity chunk, 1..MaxChunkSize bytes.
	Data []byte `cbor:"4,keyasint"`
}

// State is a device's update state as reported.
type State uint8

// Device states, in the order of the agent's state machine.
const (
	StateIdle State = iota
	StateNotified
	StateManifestVerified
	StateDownloading
	StateCandidateVerified
	StateStaged
	StateRebooting
	StateTrial
	StateConfirmed
	StateRolledBack
	StateFailed
	StateDeferred
	StateSkipped
	stateCount
)

var stateNames = [...]string{
	"idle", "notified", "manifest-verified", "downloading", "candidate-verified",
	"staged", "rebooting", "trial", "confirmed", "rolled-back", "failed", "deferred", "skipped",
}

func (s State) String() string {
	if s < stateCount {
		return stateNames[s]
	}
	return "state(" + itoa(uint64(s)) + ")"
}

// ParseState returns the state named s.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n == s {
			return State(i), true
		}
	}
	return 0, false
}

// ErrCode is the reason code of a failed, rejected or deferred update.
type ErrCode uint16

// Error codes carried in reports and replies.
const (
	CodeNone ErrCode = iota
	CodeMalformed
	CodeSignature
	CodeUntrustedKey
	CodeVendorMismatch
	CodeClassMismatch
	CodeDeviceMismatch
	CodeRollback
	CodeExpired
	CodeSize
	CodeDigest
	CodeChunkTable
	CodeBadChunk
	CodeNoSource
	CodeSlotFull
	CodeBootFailed
	CodePolicy
	CodeTimeout
	CodeUnsupported
	CodeUnauthorized
	CodeNotFound
	CodeConflict
	CodeInternal
	// CodeFailedBefore: the image failed on the device before (its
	// bootloader reverted it), so it is not downloaded again unless the
	// campaign retries failed images (UpdateNotice.Retry).
	CodeFailedBefore
	codeCount
)

var codeNames = [...]string{
	"none", "malformed", "signature", "untrusted-key", "vendor-mismatch", "class-mismatch",
	"device-mismatch", "rollback", "expired", "size", "digest", "chunk-table", "bad-chunk",
	"no-source", "slot-full", "boot-failed", "policy", "timeout", "unsupported",
	"unauthorized", "not-found", "conflict", "internal", "failed-before",
}

func (c ErrCode) String() string {
	if c < codeCount {
		return codeNames[c]
	}
	return "code(" + itoa(uint64(c)) + ")"
}

// ParseErrCode returns the code named s.
func ParseErrCode(s string) (ErrCode, bool) {
	for i, n := range codeNames {
		if n == s {
			return ErrCode(i), true
		}
	}
	return 0, false
}

// DeviceReport is what a device publishes (Topics.Report) on every state
// change and every few percent of progress. Reports are ordered by
// Counter, a per-device monotonic counter persisted by the agent; Time
// (Unix milliseconds, the device's clock) is informative only, because
// device clocks skew.
//
//	device-report = { 0: 1, 1: id, ? 2: id, 3: state, ? 4: uint, ? 5: uint,
//	                  6: uint, ? 7: err-code, ? 8: tstr, 9: uint, 10: int,
//	                  ? 11: id, ? 12: id, ? 13: true, ? 15: 2..255 }
type DeviceReport struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Device is the reporting device's id.
	Device string `cbor:"1,keyasint"`
	// Campaign is the campaign being applied, if any.
	Campaign string `cbor:"2,keyasint,omitempty"`
	// State is the agent's state.
	State State `cbor:"3,keyasint"`
	// BytesDone and BytesTotal give download progress; BytesDone <=
	// BytesTotal unless BytesTotal is 0 (unknown).
	BytesDone  uint64 `cbor:"4,keyasint,omitempty"`
	BytesTotal uint64 `cbor:"5,keyasint,omitempty"`
	// ActiveVersion is the sequence number of the running firmware.
	ActiveVersion uint64 `cbor:"6,keyasint"`
	// Code and Text say why an update failed, was rejected or deferred;
	// Text is at most MaxTextLen bytes.
	Code ErrCode `cbor:"7,keyasint,omitempty"`
	Text string  `cbor:"8,keyasint,omitempty"`
	// Counter is the per-device monotonic report counter.
	Counter uint64 `cbor:"9,keyasint"`
	// Time is the device's clock, Unix milliseconds.
	Time int64 `cbor:"10,keyasint"`
	// Source is the fetch source in use (SourceBroker, SourceHTTP, ...).
	Source string `cbor:"11,keyasint,omitempty"`
	// Class is the device's class id, so the backend can reconcile.
	Class string `cbor:"12,keyasint,omitempty"`
	// Security marks a security event: a message the device refused
	// because it could not authenticate it or it was not for this device
	// (a forged, replayed or misrouted notice). It is not an update state
	// change: it names no campaign, carries a Code, and State is the
	// device's state, unchanged.
	Security bool `cbor:"13,keyasint,omitempty"`
	// ActiveDigest is the SHA-256 of the running firmware image, as its
	// header in the bootloader's slot names it; empty when the device
	// does not know it. The publisher makes delta updates from it.
	ActiveDigest []byte `cbor:"14,keyasint,omitempty"`
	// Protocol is the delivery protocol the device speaks, as in
	// ChunkRequest.Protocol; absent (0) means ProtocolPlain.
	Protocol uint8 `cbor:"15,keyasint,omitempty"`
}

// DeliveryProtocol returns the delivery protocol of the reporting device
// (ProtocolPlain when it names none).
func (r *DeviceReport) DeliveryProtocol() int { return protocolOf(r.Protocol) }

// CampaignSpec describes a campaign to create. It targets at least one of
// Devices, Groups, Class or Tags.
//
//	campaign-spec = { 0: digest, ? 1: bstr, ? 2: [+ id], ? 3: [+ id], ? 4: id,
//	                  ? 5: [+ id], ? 6: uint, ? 7: [+ uint], ? 8: uint,
//	                  ? 9: uint, ? 10: uint, ? 11: true, ? 12: tstr,
//	                  ? 13: true, ? 14: true, ? 15: id }
type CampaignSpec struct {
	// Image is the SHA-256 of an image already in the store.
	Image []byte `cbor:"0,keyasint"`
	// Envelope is an already signed SUIT envelope; empty = the server signs.
	Envelope []byte `cbor:"1,keyasint,omitempty"`
	// Devices, Groups, Class and Tags select the targets (identifiers).
	Devices []string `cbor:"2,keyasint,omitempty"`
	Groups  []string `cbor:"3,keyasint,omitempty"`
	Class   string   `cbor:"4,keyasint,omitempty"`
	Tags    []string `cbor:"5,keyasint,omitempty"`
	// OnVersion targets devices currently on this version, when set.
	OnVersion *uint64 `cbor:"6,keyasint,omitempty"`
	// Phases are cumulative percentages of the targets, strictly
	// increasing in 1..100 and ending at 100; empty = one phase. On the
	// wire it is a byte string (one byte per phase), as for any []uint8.
	Phases []uint8 `cbor:"7,keyasint,omitempty"`
	// SuccessPermille of a phase's devices confirmed opens the next phase
	// (0..1000; 0 = the server's default).
	SuccessPermille uint16 `cbor:"8,keyasint,omitempty"`
	// FailPermille of failures among targets notified so far aborts
	// (0..1000; 0 = the server's default).
	FailPermille uint16 `cbor:"9,keyasint,omitempty"`
	// Deadline, Unix seconds; 0 = none.
	Deadline int64 `cbor:"10,keyasint,omitempty"`
	// Start starts the campaign at once.
	Start bool `cbor:"11,keyasint,omitempty"`
	// Name is a display name, at most MaxNameLen bytes.
	Name string `cbor:"12,keyasint,omitempty"`
	// AllowDowngrade lets the campaign install an image older (by its
	// version or security version) than what some targets run; without
	// it such a campaign is refused. Audited.
	AllowDowngrade bool `cbor:"13,keyasint,omitempty"`
	// RetryFailed lets devices on which the image failed before (their
	// bootloader reverted it) install it again; without it they report
	// CodeFailedBefore and download nothing.
	RetryFailed bool `cbor:"14,keyasint,omitempty"`
	// Component is the SUIT component the server-signed manifest updates
	// (an identifier, such as "bootloader" for a device's upgradable
	// bootloader stage); empty: the application.
	Component string `cbor:"15,keyasint,omitempty"`
}

// CampaignCommand is a request on the campaign API (Topics.API).
//
//	campaign-command = { 0: 1, 1: op, ? 2: tstr, ? 3: id, ? 4: campaign-spec }
type CampaignCommand struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// Op is one of OpCreate, OpStart, OpPause, OpResume, OpAbort, OpStatus,
	// OpList.
	Op string `cbor:"1,keyasint"`
	// Key is the caller's API key (at most MaxKeyLen bytes); the server
	// answers CodeUnauthorized when it is missing or wrong.
	Key string `cbor:"2,keyasint,omitempty"`
	// Campaign is required for every op but create (optional: the server
	// picks an id) and list (must be empty).
	Campaign string `cbor:"3,keyasint,omitempty"`
	// Spec is required for create and must be nil otherwise.
	Spec *CampaignSpec `cbor:"4,keyasint,omitempty"`
}

// CampaignStatus is the state of one campaign.
//
//	campaign-status = { 0: id, 1: tstr, ? 2: uint, ? 3: { * tstr => uint },
//	                    ? 4: digest, ? 5: tstr }
type CampaignStatus struct {
	// ID is the campaign id.
	ID string `cbor:"0,keyasint"`
	// State is the campaign state name (1..MaxNameLen bytes).
	State string `cbor:"1,keyasint"`
	// Phase is the current phase, counted from 0.
	Phase uint32 `cbor:"2,keyasint,omitempty"`
	// Counts maps device state names to device counts (at most MaxMapPairs).
	Counts map[string]uint64 `cbor:"3,keyasint,omitempty"`
	// Image is the SHA-256 of the campaign's image.
	Image []byte `cbor:"4,keyasint,omitempty"`
	// Reason says why a campaign paused or aborted (at most MaxTextLen).
	Reason string `cbor:"5,keyasint,omitempty"`
}

// CampaignReply answers a CampaignCommand. OK replies carry CodeNone;
// failed ones carry another code and may carry Error text.
//
//	campaign-reply = { 0: 1, ? 1: true, ? 2: err-code, ? 3: tstr,
//	                   ? 4: campaign-status, ? 5: [+ campaign-status] }
type CampaignReply struct {
	// V is the format version; Encode and Decode require Version.
	V uint `cbor:"0,keyasint"`
	// OK is true when the command succeeded.
	OK bool `cbor:"1,keyasint,omitempty"`
	// Code says why it failed (never CodeNone on failure).
	Code ErrCode `cbor:"2,keyasint,omitempty"`
	// Error is a human-readable reason, at most MaxTextLen bytes.
	Error string `cbor:"3,keyasint,omitempty"`
	// Status is the campaign's status (create, start, ..., status ops).
	Status *CampaignStatus `cbor:"4,keyasint,omitempty"`
	// List holds the campaigns (list op).
	List []CampaignStatus `cbor:"5,keyasint,omitempty"`
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
