package schemas

// Version is the format version written into every message's field 0.
const Version = 1

// Sizes and limits of the wire contract.
const (
	// DigestSize is the size of every digest on the wire (SHA-256).
	DigestSize = 32
	// MinChunkSize and MaxChunkSize bound the chunk size of an image.
	MinChunkSize = 256
	MaxChunkSize = 1 << 20
	// MaxChunks bounds the number of chunks of one image.
	MaxChunks = 1 << 17
	// MaxEnvelopeSize bounds the signed SUIT envelope carried in a notice.
	MaxEnvelopeSize = 64 << 10
)

// SourceHint names a place an image can be fetched from, with its cost.
//
//	source-hint = { 0: tstr, 1: tstr, ? 2: uint }
type SourceHint struct {
	// Kind is one of "broker", "objstore", "http", "file".
	Kind string `cbor:"0,keyasint"`
	// URI locates the image for that kind (empty for "broker").
	URI string `cbor:"1,keyasint"`
	// Cost is the publisher's price hint in milli-units per MiB; 0 = free.
	Cost uint32 `cbor:"2,keyasint,omitempty"`
}

// UpdateNotice tells a device (or a class) that an update is pending.
// It is published retained on the device's notice topic.
type UpdateNotice struct {
	V        uint   `cbor:"0,keyasint"`
	Campaign string `cbor:"1,keyasint"`
	// Target is the device id (per-device notice) or class id (announcement).
	Target string `cbor:"2,keyasint"`
	// Envelope is the signed SUIT envelope, opaque to this package.
	Envelope []byte       `cbor:"3,keyasint"`
	Sources  []SourceHint `cbor:"4,keyasint,omitempty"`
	// Deadline is the campaign deadline, Unix seconds; 0 = none.
	Deadline int64 `cbor:"5,keyasint,omitempty"`
	// StartWindowMS is the random start delay window in milliseconds: the
	// device waits a uniformly random time in [0, window) before it asks.
	StartWindowMS uint32 `cbor:"6,keyasint,omitempty"`
	// Image is the SHA-256 of the image, naming its chunk topics.
	Image []byte `cbor:"7,keyasint"`
	// ChunkSize is the chunk size in bytes used by the broker source.
	ChunkSize uint32 `cbor:"8,keyasint"`
}

// Range is a run of chunk indexes [First, First+Count).
//
//	range = [first: uint, count: uint]
type Range struct {
	_     struct{} `cbor:",toarray"`
	First uint32
	Count uint32
}

// ChunkRequest asks the publisher for chunks of an image. Wanted chunks are
// given either as Ranges or as a Bitmap (bit i, least significant bit of
// byte i/8 first, set = chunk i wanted); not both.
type ChunkRequest struct {
	V         uint    `cbor:"0,keyasint"`
	Image     []byte  `cbor:"1,keyasint"`
	ChunkSize uint32  `cbor:"2,keyasint"`
	Ranges    []Range `cbor:"3,keyasint,omitempty"`
	Bitmap    []byte  `cbor:"4,keyasint,omitempty"`
	// ReplyTo is the topic or subject to send the chunks to.
	ReplyTo   string `cbor:"5,keyasint"`
	Requester string `cbor:"6,keyasint"`
	Campaign  string `cbor:"7,keyasint,omitempty"`
	// WantTable asks for the chunk table as well.
	WantTable bool `cbor:"8,keyasint,omitempty"`
}

// Chunk carries one chunk of an image.
type Chunk struct {
	V     uint   `cbor:"0,keyasint"`
	Image []byte `cbor:"1,keyasint"`
	Index uint32 `cbor:"2,keyasint"`
	Data  []byte `cbor:"3,keyasint"`
}

// ChunkTable lists the SHA-256 of every chunk of an image, so that a device
// can check each chunk on arrival. Its own SHA-256 (over the deterministic
// encoding) is signed in the manifest.
type ChunkTable struct {
	V         uint     `cbor:"0,keyasint"`
	Image     []byte   `cbor:"1,keyasint"`
	ImageSize uint64   `cbor:"2,keyasint"`
	ChunkSize uint32   `cbor:"3,keyasint"`
	Hashes    [][]byte `cbor:"4,keyasint"`
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
	codeCount
)

var codeNames = [...]string{
	"none", "malformed", "signature", "untrusted-key", "vendor-mismatch", "class-mismatch",
	"device-mismatch", "rollback", "expired", "size", "digest", "chunk-table", "bad-chunk",
	"no-source", "slot-full", "boot-failed", "policy", "timeout", "unsupported",
	"unauthorized", "not-found", "conflict", "internal",
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

// DeviceReport is what a device publishes on every state change and every
// few percent of progress. Reports are ordered by Counter, a per-device
// monotonic counter persisted by the agent; Time (Unix milliseconds, the
// device's clock) is informative only, because device clocks skew.
type DeviceReport struct {
	V             uint    `cbor:"0,keyasint"`
	Device        string  `cbor:"1,keyasint"`
	Campaign      string  `cbor:"2,keyasint,omitempty"`
	State         State   `cbor:"3,keyasint"`
	BytesDone     uint64  `cbor:"4,keyasint,omitempty"`
	BytesTotal    uint64  `cbor:"5,keyasint,omitempty"`
	ActiveVersion uint64  `cbor:"6,keyasint"`
	Code          ErrCode `cbor:"7,keyasint,omitempty"`
	Text          string  `cbor:"8,keyasint,omitempty"`
	Counter       uint64  `cbor:"9,keyasint"`
	Time          int64   `cbor:"10,keyasint"`
	// Source is the fetch source in use ("broker", "http", ...).
	Source string `cbor:"11,keyasint,omitempty"`
	// Class is the device's class id, so the backend can reconcile.
	Class string `cbor:"12,keyasint,omitempty"`
}

// CampaignSpec describes a campaign to create.
type CampaignSpec struct {
	// Image is the SHA-256 of an image already in the store.
	Image []byte `cbor:"0,keyasint"`
	// Envelope is an already signed SUIT envelope; empty = the server signs.
	Envelope []byte   `cbor:"1,keyasint,omitempty"`
	Devices  []string `cbor:"2,keyasint,omitempty"`
	Groups   []string `cbor:"3,keyasint,omitempty"`
	Class    string   `cbor:"4,keyasint,omitempty"`
	Tags     []string `cbor:"5,keyasint,omitempty"`
	// OnVersion targets devices currently on this version, when set.
	OnVersion *uint64 `cbor:"6,keyasint,omitempty"`
	// Phases are cumulative percentages of the targets, ending at 100.
	Phases []uint8 `cbor:"7,keyasint,omitempty"`
	// SuccessPermille of a phase's devices confirmed opens the next phase.
	SuccessPermille uint16 `cbor:"8,keyasint,omitempty"`
	// FailPermille of failures among targets notified so far aborts.
	FailPermille uint16 `cbor:"9,keyasint,omitempty"`
	// Deadline, Unix seconds; 0 = none.
	Deadline int64  `cbor:"10,keyasint,omitempty"`
	Start    bool   `cbor:"11,keyasint,omitempty"`
	Name     string `cbor:"12,keyasint,omitempty"`
}

// CampaignCommand is a request on the NATS campaign API.
type CampaignCommand struct {
	V uint `cbor:"0,keyasint"`
	// Op is one of create, start, pause, resume, abort, status, list.
	Op string `cbor:"1,keyasint"`
	// Key is the caller's API key.
	Key      string        `cbor:"2,keyasint"`
	Campaign string        `cbor:"3,keyasint,omitempty"`
	Spec     *CampaignSpec `cbor:"4,keyasint,omitempty"`
}

// CampaignStatus is the state of one campaign.
type CampaignStatus struct {
	ID     string            `cbor:"0,keyasint"`
	State  string            `cbor:"1,keyasint"`
	Phase  uint32            `cbor:"2,keyasint"`
	Counts map[string]uint64 `cbor:"3,keyasint,omitempty"`
	Image  []byte            `cbor:"4,keyasint,omitempty"`
	// Reason says why a campaign paused or aborted.
	Reason string `cbor:"5,keyasint,omitempty"`
}

// CampaignReply answers a CampaignCommand.
type CampaignReply struct {
	V      uint             `cbor:"0,keyasint"`
	OK     bool             `cbor:"1,keyasint"`
	Code   ErrCode          `cbor:"2,keyasint,omitempty"`
	Error  string           `cbor:"3,keyasint,omitempty"`
	Status *CampaignStatus  `cbor:"4,keyasint,omitempty"`
	List   []CampaignStatus `cbor:"5,keyasint,omitempty"`
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
