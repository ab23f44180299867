package schemas

import (
	"fmt"
	"strings"
)

// Message names used in errors.
const (
	nameNotice   = "update notice"
	nameRequest  = "chunk request"
	nameChunk    = "chunk"
	nameTable    = "chunk table"
	nameWaveEnd  = "wave end"
	nameParity   = "parity chunk"
	nameAnnounce = "repair announcement"
	nameReport   = "device report"
	nameCommand  = "campaign command"
	nameReply    = "campaign reply"
	nameSpec     = "campaign command: spec"
)

func invalid(msg, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, msg, fmt.Sprintf(format, args...))
}

func tooLarge(msg, field string, n, limit int) error {
	return fmt.Errorf("%w: %s: %s is %d bytes, max %d", ErrTooLarge, msg, field, n, limit)
}

// badID wraps both ErrInvalid and the ErrBadIdentifier from CheckID.
func badID(msg string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrInvalid, msg, err)
}

func checkID(msg, what, id string) error {
	if err := CheckID(what, id); err != nil {
		return badID(msg, err)
	}
	return nil
}

func checkOptionalID(msg, what, id string) error {
	if id == "" {
		return nil
	}
	return checkID(msg, what, id)
}

func checkIDs(msg, what string, ids []string) error {
	for i, id := range ids {
		if err := checkID(msg, fmt.Sprintf("%s %d", what, i), id); err != nil {
			return err
		}
	}
	return nil
}

func checkDigest(msg, field string, d []byte) error {
	if len(d) != DigestSize {
		return invalid(msg, "%s is %d bytes, want %d", field, len(d), DigestSize)
	}
	return nil
}

func checkChunkSize(msg string, n uint32) error {
	if n < MinChunkSize || n > MaxChunkSize {
		return invalid(msg, "chunk size %d outside [%d, %d]", n, MinChunkSize, MaxChunkSize)
	}
	return nil
}

func checkText(msg, field, s string, limit int) error {
	if len(s) > limit {
		return tooLarge(msg, field, len(s), limit)
	}
	return nil
}

// MessageName implements Message.
func (*UpdateNotice) MessageName() string { return nameNotice }

// MaxSize implements Message: the envelope plus room for MaxSources hints.
func (*UpdateNotice) MaxSize() int { return MaxEnvelopeSize + 24<<10 }

// Validate implements Message.
func (n *UpdateNotice) Validate() error {
	const m = nameNotice
	if err := checkID(m, "campaign id", n.Campaign); err != nil {
		return err
	}
	if err := checkID(m, "target", n.Target); err != nil {
		return err
	}
	if len(n.Envelope) == 0 {
		return invalid(m, "envelope is empty")
	}
	if len(n.Envelope) > MaxEnvelopeSize {
		return tooLarge(m, "envelope", len(n.Envelope), MaxEnvelopeSize)
	}
	if len(n.Sources) > MaxSources {
		return invalid(m, "%d source hints, max %d", len(n.Sources), MaxSources)
	}
	for i, s := range n.Sources {
		switch s.Kind {
		case SourceBroker:
			if s.URI != "" {
				return invalid(m, "source %d (%s) has a URI", i, s.Kind)
			}
		case SourceObjStore, SourceHTTP, SourceFile:
			if s.URI == "" {
				return invalid(m, "source %d (%s) has no URI", i, s.Kind)
			}
			if err := checkText(m, fmt.Sprintf("source %d URI", i), s.URI, MaxURILen); err != nil {
				return err
			}
		default:
			return invalid(m, "source %d has unknown kind %q", i, s.Kind)
		}
	}
	if n.Deadline < 0 {
		return invalid(m, "negative deadline %d", n.Deadline)
	}
	if err := checkDigest(m, "image digest", n.Image); err != nil {
		return err
	}
	if err := checkChunkSize(m, n.ChunkSize); err != nil {
		return err
	}
	if len(n.Auth) == 0 {
		return invalid(m, "no authentication (notices are signed)")
	}
	if len(n.Auth) > MaxNoticeAuthSize {
		return tooLarge(m, "authentication", len(n.Auth), MaxNoticeAuthSize)
	}
	if len(n.Key) > MaxNoticeKeySize {
		return tooLarge(m, "wrapped content key", len(n.Key), MaxNoticeKeySize)
	}
	if n.Key != nil && len(n.Key) == 0 {
		return invalid(m, "wrapped content key is empty")
	}
	if n.Key != nil && n.ClassTarget {
		return invalid(m, "a class announcement carries a wrapped content key (keys are per device)")
	}
	return nil
}

// MessageName implements Message.
func (*ChunkRequest) MessageName() string { return nameRequest }

// MaxSize implements Message: a full bitmap plus the addresses.
func (*ChunkRequest) MaxSize() int { return MaxBitmapSize + 4<<10 }

// Validate implements Message.
func (r *ChunkRequest) Validate() error {
	const m = nameRequest
	if err := checkDigest(m, "image digest", r.Image); err != nil {
		return err
	}
	if err := checkChunkSize(m, r.ChunkSize); err != nil {
		return err
	}
	if len(r.Ranges) > 0 && len(r.Bitmap) > 0 {
		return invalid(m, "both ranges and bitmap given")
	}
	if len(r.Ranges) > MaxRanges {
		return invalid(m, "%d ranges, max %d", len(r.Ranges), MaxRanges)
	}
	if len(r.Bitmap) > MaxBitmapSize {
		return tooLarge(m, "bitmap", len(r.Bitmap), MaxBitmapSize)
	}
	var end uint64
	for i, rg := range r.Ranges {
		if rg.Count == 0 || uint64(rg.First)+uint64(rg.Count) > MaxChunks {
			return invalid(m, "range %d [%d,+%d) empty or beyond %d chunks", i, rg.First, rg.Count, MaxChunks)
		}
		if i > 0 && uint64(rg.First) < end {
			return invalid(m, "range %d starts at %d, inside or before range %d (ranges must be sorted and disjoint)", i, rg.First, i-1)
		}
		end = uint64(rg.First) + uint64(rg.Count)
	}
	if len(r.Ranges) == 0 && Bitmap(r.Bitmap).Count() == 0 && !r.WantTable {
		return invalid(m, "wants no chunk and no table")
	}
	if r.ReplyTo == "" {
		return invalid(m, "reply address is empty")
	}
	if err := checkText(m, "reply address", r.ReplyTo, MaxReplyToLen); err != nil {
		return err
	}
	if i := strings.IndexFunc(r.ReplyTo, func(c rune) bool {
		return c == '+' || c == '#' || c == '*' || c == '>' || c <= ' ' || c == 0x7f
	}); i >= 0 {
		return invalid(m, "reply address %q has a wildcard, space or control character at byte %d", r.ReplyTo, i)
	}
	if err := checkID(m, "requester", r.Requester); err != nil {
		return err
	}
	if err := checkProtocol(m, r.Protocol); err != nil {
		return err
	}
	return checkOptionalID(m, "campaign id", r.Campaign)
}

// MessageName implements Message.
func (*Chunk) MessageName() string { return nameChunk }

// MaxSize implements Message: a full chunk plus framing.
func (*Chunk) MaxSize() int { return MaxChunkSize + 128 }

// Validate implements Message.
func (c *Chunk) Validate() error {
	const m = nameChunk
	if err := checkDigest(m, "image digest", c.Image); err != nil {
		return err
	}
	if c.Index >= MaxChunks {
		return invalid(m, "index %d beyond %d chunks", c.Index, MaxChunks)
	}
	if len(c.Data) == 0 {
		return invalid(m, "data is empty")
	}
	if len(c.Data) > MaxChunkSize {
		return tooLarge(m, "data", len(c.Data), MaxChunkSize)
	}
	return nil
}

// MessageName implements Message.
func (*ChunkTable) MessageName() string { return nameTable }

// MaxSize implements Message: MaxChunks chunk digests and
// MaxParityChunks parity digests plus framing.
func (*ChunkTable) MaxSize() int { return (MaxChunks+MaxParityChunks)*(DigestSize+2) + 256 }

// Validate implements Message.
func (t *ChunkTable) Validate() error {
	const m = nameTable
	if err := checkDigest(m, "image digest", t.Image); err != nil {
		return err
	}
	if err := checkChunkSize(m, t.ChunkSize); err != nil {
		return err
	}
	if t.ImageSize == 0 {
		return invalid(m, "image size is 0")
	}
	want := ChunkCount(t.ImageSize, t.ChunkSize)
	if want > MaxChunks {
		return fmt.Errorf("%w: %s: image size %d gives %d chunks, max %d", ErrTooLarge, m, t.ImageSize, want, MaxChunks)
	}
	if uint64(len(t.Hashes)) != want {
		return invalid(m, "%d hashes for %d chunks", len(t.Hashes), want)
	}
	return t.validateCode()
}

// validateCode checks the erasure-code keys of t (5 to 7): all absent, or
// a block size, a parity count the code can make and one digest per
// parity chunk of every block.
func (t *ChunkTable) validateCode() error {
	const m = nameTable
	if t.Block == 0 {
		if t.ParityPerBlock != 0 || len(t.Parity) != 0 {
			return invalid(m, "parity without a block size")
		}
		return nil
	}
	if t.ParityPerBlock == 0 {
		return invalid(m, "block size %d without parity", t.Block)
	}
	if uint64(t.Block)+uint64(t.ParityPerBlock) > MaxCodeShards {
		return invalid(m, "block of %d chunks and %d parity chunks, over %d shards", t.Block, t.ParityPerBlock, MaxCodeShards)
	}
	want := uint64(t.NumBlocks()) * uint64(t.ParityPerBlock)
	if want > MaxParityChunks {
		return fmt.Errorf("%w: %s: %d blocks of %d parity chunks, max %d", ErrTooLarge, m, t.NumBlocks(), t.ParityPerBlock, MaxParityChunks)
	}
	if uint64(len(t.Parity)) != want {
		return invalid(m, "%d parity hashes for %d blocks of %d", len(t.Parity), t.NumBlocks(), t.ParityPerBlock)
	}
	return nil
}

// MessageName implements Message.
func (*ParityChunk) MessageName() string { return nameParity }

// MaxSize implements Message: as a chunk.
func (*ParityChunk) MaxSize() int { return MaxChunkSize + 128 }

// Validate implements Message. Whether Block and Index exist in the image
// is the chunk table's to say (VerifyParity).
func (c *ParityChunk) Validate() error {
	const m = nameParity
	if err := checkDigest(m, "image digest", c.Image); err != nil {
		return err
	}
	if c.Block >= MaxChunks {
		return invalid(m, "block %d beyond %d chunks", c.Block, MaxChunks)
	}
	if c.Index >= MaxCodeShards-1 {
		return invalid(m, "parity index %d beyond %d", c.Index, MaxCodeShards-2)
	}
	if len(c.Data) == 0 {
		return invalid(m, "data is empty")
	}
	if len(c.Data) > MaxChunkSize {
		return tooLarge(m, "data", len(c.Data), MaxChunkSize)
	}
	return nil
}

// MessageName implements Message.
func (*DeviceReport) MessageName() string { return nameReport }

// MaxSize implements Message.
func (*DeviceReport) MaxSize() int { return 2 << 10 }

// Validate implements Message.
func (r *DeviceReport) Validate() error {
	const m = nameReport
	if err := checkID(m, "device id", r.Device); err != nil {
		return err
	}
	if err := checkOptionalID(m, "campaign id", r.Campaign); err != nil {
		return err
	}
	if r.State >= stateCount {
		return invalid(m, "unknown state %d", r.State)
	}
	if r.Code >= codeCount {
		return invalid(m, "unknown error code %d", r.Code)
	}
	if r.BytesTotal != 0 && r.BytesDone > r.BytesTotal {
		return invalid(m, "bytes done %d beyond total %d", r.BytesDone, r.BytesTotal)
	}
	if err := checkText(m, "error text", r.Text, MaxTextLen); err != nil {
		return err
	}
	if err := checkOptionalID(m, "source", r.Source); err != nil {
		return err
	}
	if r.Security && (r.Campaign != "" || r.Code == CodeNone) {
		return invalid(m, "a security event names no campaign and carries an error code")
	}
	if len(r.ActiveDigest) != 0 && len(r.ActiveDigest) != DigestSize {
		return invalid(m, "active image digest is %d bytes, want %d", len(r.ActiveDigest), DigestSize)
	}
	if err := checkProtocol(m, r.Protocol); err != nil {
		return err
	}
	return checkOptionalID(m, "class id", r.Class)
}

// MessageName implements Message.
func (*CampaignCommand) MessageName() string { return nameCommand }

// MaxSize implements Message: an envelope plus room for target lists.
func (*CampaignCommand) MaxSize() int { return MaxEnvelopeSize + 64<<10 }

// Validate implements Message.
func (c *CampaignCommand) Validate() error {
	const m = nameCommand
	if err := checkText(m, "API key", c.Key, MaxKeyLen); err != nil {
		return err
	}
	switch c.Op {
	case OpCreate:
		if c.Spec == nil {
			return invalid(m, "create without spec")
		}
		if err := checkOptionalID(m, "campaign id", c.Campaign); err != nil {
			return err
		}
		return c.Spec.validate()
	case OpStart, OpPause, OpResume, OpAbort, OpStatus:
		if err := checkID(m, "campaign id", c.Campaign); err != nil {
			return err
		}
	case OpList:
		if c.Campaign != "" {
			return invalid(m, "list with a campaign id")
		}
	default:
		return invalid(m, "unknown op %q", c.Op)
	}
	if c.Spec != nil {
		return invalid(m, "spec given for op %s", c.Op)
	}
	return nil
}

func (s *CampaignSpec) validate() error {
	const m = nameSpec
	if err := checkDigest(m, "image digest", s.Image); err != nil {
		return err
	}
	if len(s.Envelope) > MaxEnvelopeSize {
		return tooLarge(m, "envelope", len(s.Envelope), MaxEnvelopeSize)
	}
	if len(s.Devices) == 0 && len(s.Groups) == 0 && s.Class == "" && len(s.Tags) == 0 {
		return invalid(m, "no target (devices, groups, class or tags)")
	}
	if err := checkIDs(m, "device", s.Devices); err != nil {
		return err
	}
	if err := checkIDs(m, "group", s.Groups); err != nil {
		return err
	}
	if err := checkOptionalID(m, "class id", s.Class); err != nil {
		return err
	}
	if err := checkIDs(m, "tag", s.Tags); err != nil {
		return err
	}
	prev := 0
	for i, p := range s.Phases {
		if int(p) <= prev || p > 100 {
			return invalid(m, "phase %d is %d%%, want increasing in 1..100", i, p)
		}
		prev = int(p)
	}
	if len(s.Phases) > 0 && prev != 100 {
		return invalid(m, "last phase is %d%%, want 100", prev)
	}
	if s.SuccessPermille > 1000 || s.FailPermille > 1000 {
		return invalid(m, "thresholds %d/%d permille, max 1000", s.SuccessPermille, s.FailPermille)
	}
	if s.Deadline < 0 {
		return invalid(m, "negative deadline %d", s.Deadline)
	}
	if err := checkOptionalID(m, "component", s.Component); err != nil {
		return err
	}
	return checkText(m, "name", s.Name, MaxNameLen)
}

// MessageName implements Message.
func (*CampaignReply) MessageName() string { return nameReply }

// MaxSize implements Message.
func (*CampaignReply) MaxSize() int { return 1 << 20 }

// Validate implements Message.
func (r *CampaignReply) Validate() error {
	const m = nameReply
	if r.Code >= codeCount {
		return invalid(m, "unknown error code %d", r.Code)
	}
	if r.OK && r.Code != CodeNone {
		return invalid(m, "ok reply with error code %s", r.Code)
	}
	if !r.OK && r.Code == CodeNone {
		return invalid(m, "failed reply without error code")
	}
	if err := checkText(m, "error text", r.Error, MaxTextLen); err != nil {
		return err
	}
	if r.Status != nil {
		if err := r.Status.validate("status"); err != nil {
			return err
		}
	}
	for i := range r.List {
		if err := r.List[i].validate(fmt.Sprintf("list entry %d", i)); err != nil {
			return err
		}
	}
	return nil
}

func (s *CampaignStatus) validate(where string) error {
	m := nameReply + ": " + where
	if err := checkID(m, "campaign id", s.ID); err != nil {
		return err
	}
	if s.State == "" {
		return invalid(m, "state is empty")
	}
	if err := checkText(m, "state", s.State, MaxNameLen); err != nil {
		return err
	}
	for k := range s.Counts {
		if k == "" || len(k) > MaxNameLen {
			return invalid(m, "count key %q is empty or over %d bytes", k, MaxNameLen)
		}
	}
	if len(s.Image) != 0 {
		if err := checkDigest(m, "image digest", s.Image); err != nil {
			return err
		}
	}
	return checkText(m, "reason", s.Reason, MaxTextLen)
}

// MessageName implements Message.
func (*WaveEnd) MessageName() string { return nameWaveEnd }

// MessageName implements Message.
func (*RepairAnnounce) MessageName() string { return nameAnnounce }

// MaxSize implements Message: MaxChunks block entries plus framing.
func (*RepairAnnounce) MaxSize() int { return 64 + MaxChunks*9 }

// Validate implements Message.
func (a *RepairAnnounce) Validate() error {
	const m = nameAnnounce
	if err := checkDigest(m, "image digest", a.Image); err != nil {
		return err
	}
	if a.Wave == 0 {
		return invalid(m, "wave number 0")
	}
	if len(a.Need) == 0 || len(a.Need) > MaxChunks {
		return invalid(m, "%d block entries, want 1..%d", len(a.Need), MaxChunks)
	}
	for i, n := range a.Need {
		if n.Block >= MaxChunks {
			return invalid(m, "entry %d: block %d beyond %d", i, n.Block, MaxChunks)
		}
		if i > 0 && n.Block <= a.Need[i-1].Block {
			return invalid(m, "entry %d: block %d after block %d (blocks must increase)", i, n.Block, a.Need[i-1].Block)
		}
		if n.Parity == 0 || n.Parity >= MaxCodeShards {
			return invalid(m, "entry %d: %d parity chunks for block %d, want 1..%d", i, n.Parity, n.Block, MaxCodeShards-1)
		}
	}
	return nil
}

// MaxSize implements Message: MaxRanges ranges plus framing.
func (*WaveEnd) MaxSize() int { return 64 + MaxRanges*12 }

// Validate implements Message.
func (w *WaveEnd) Validate() error {
	const m = nameWaveEnd
	if err := checkDigest(m, "image digest", w.Image); err != nil {
		return err
	}
	if w.Wave == 0 {
		return invalid(m, "wave number 0")
	}
	if len(w.Sent) == 0 {
		return invalid(m, "no range sent")
	}
	if len(w.Sent) > MaxRanges {
		return invalid(m, "%d ranges, max %d", len(w.Sent), MaxRanges)
	}
	var end uint64
	for i, rg := range w.Sent {
		if rg.Count == 0 || uint64(rg.First)+uint64(rg.Count) > MaxChunks {
			return invalid(m, "range %d [%d,+%d) empty or beyond %d chunks", i, rg.First, rg.Count, MaxChunks)
		}
		if i > 0 && uint64(rg.First) < end {
			return invalid(m, "range %d starts at %d, inside or before range %d (ranges must be sorted and disjoint)", i, rg.First, i-1)
		}
		end = uint64(rg.First) + uint64(rg.Count)
	}
	return nil
}

// checkProtocol checks an optional delivery protocol field: absent, or a
// version above ProtocolPlain (which is written as absent, so that one
// value has one encoding). Versions above MaxProtocol are accepted: a
// newer device is answered by the newest protocol the receiver knows.
func checkProtocol(m string, p uint8) error {
	if p == ProtocolPlain {
		return invalid(m, "delivery protocol %d is written as an absent field", p)
	}
	return nil
}
