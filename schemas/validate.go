package schemas

import "fmt"

func invalid(msg, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, msg, fmt.Sprintf(format, args...))
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

func (*UpdateNotice) MessageName() string { return "update notice" }
func (*UpdateNotice) MaxSize() int        { return MaxEnvelopeSize + 8<<10 }
func (n *UpdateNotice) Validate() error {
	const m = "update notice"
	if err := CheckID("campaign id", n.Campaign); err != nil {
		return invalid(m, "%v", err)
	}
	if err := CheckID("target", n.Target); err != nil {
		return invalid(m, "%v", err)
	}
	if len(n.Envelope) == 0 || len(n.Envelope) > MaxEnvelopeSize {
		return invalid(m, "envelope is %d bytes, want 1..%d", len(n.Envelope), MaxEnvelopeSize)
	}
	if len(n.Sources) > 16 {
		return invalid(m, "%d source hints, max 16", len(n.Sources))
	}
	for i, s := range n.Sources {
		switch s.Kind {
		case "broker", "objstore", "http", "file":
		default:
			return invalid(m, "source %d has unknown kind %q", i, s.Kind)
		}
	}
	if err := checkDigest(m, "image digest", n.Image); err != nil {
		return err
	}
	return checkChunkSize(m, n.ChunkSize)
}

func (*ChunkRequest) MessageName() string { return "chunk request" }
func (*ChunkRequest) MaxSize() int        { return MaxChunks/8 + 4<<10 }
func (r *ChunkRequest) Validate() error {
	const m = "chunk request"
	if err := checkDigest(m, "image digest", r.Image); err != nil {
		return err
	}
	if err := checkChunkSize(m, r.ChunkSize); err != nil {
		return err
	}
	if len(r.Ranges) > 0 && len(r.Bitmap) > 0 {
		return invalid(m, "both ranges and bitmap given")
	}
	if len(r.Ranges) > 1024 {
		return invalid(m, "%d ranges, max 1024", len(r.Ranges))
	}
	if len(r.Bitmap) > MaxChunks/8 {
		return invalid(m, "bitmap is %d bytes, max %d", len(r.Bitmap), MaxChunks/8)
	}
	for i, rg := range r.Ranges {
		if rg.Count == 0 || uint64(rg.First)+uint64(rg.Count) > MaxChunks {
			return invalid(m, "range %d [%d,+%d) empty or beyond %d chunks", i, rg.First, rg.Count, MaxChunks)
		}
	}
	if r.ReplyTo == "" || len(r.ReplyTo) > 256 {
		return invalid(m, "reply address is %d bytes, want 1..256", len(r.ReplyTo))
	}
	if err := CheckID("requester", r.Requester); err != nil {
		return invalid(m, "%v", err)
	}
	return nil
}

func (*Chunk) MessageName() string { return "chunk" }
func (*Chunk) MaxSize() int        { return MaxChunkSize + 128 }
func (c *Chunk) Validate() error {
	const m = "chunk"
	if err := checkDigest(m, "image digest", c.Image); err != nil {
		return err
	}
	if c.Index >= MaxChunks {
		return invalid(m, "index %d beyond %d chunks", c.Index, MaxChunks)
	}
	if len(c.Data) == 0 || len(c.Data) > MaxChunkSize {
		return invalid(m, "data is %d bytes, want 1..%d", len(c.Data), MaxChunkSize)
	}
	return nil
}

func (*ChunkTable) MessageName() string { return "chunk table" }
func (*ChunkTable) MaxSize() int        { return MaxChunks*(DigestSize+2) + 256 }
func (t *ChunkTable) Validate() error {
	const m = "chunk table"
	if err := checkDigest(m, "image digest", t.Image); err != nil {
		return err
	}
	if err := checkChunkSize(m, t.ChunkSize); err != nil {
		return err
	}
	want := (t.ImageSize + uint64(t.ChunkSize) - 1) / uint64(t.ChunkSize)
	if t.ImageSize == 0 || want > MaxChunks {
		return invalid(m, "image size %d gives %d chunks, want 1..%d", t.ImageSize, want, MaxChunks)
	}
	if uint64(len(t.Hashes)) != want {
		return invalid(m, "%d hashes for %d chunks", len(t.Hashes), want)
	}
	for i, h := range t.Hashes {
		if len(h) != DigestSize {
			return invalid(m, "hash %d is %d bytes, want %d", i, len(h), DigestSize)
		}
	}
	return nil
}

func (*DeviceReport) MessageName() string { return "device report" }
func (*DeviceReport) MaxSize() int        { return 2 << 10 }
func (r *DeviceReport) Validate() error {
	const m = "device report"
	if err := CheckID("device id", r.Device); err != nil {
		return invalid(m, "%v", err)
	}
	if r.Campaign != "" {
		if err := CheckID("campaign id", r.Campaign); err != nil {
			return invalid(m, "%v", err)
		}
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
	if len(r.Text) > 512 {
		return invalid(m, "error text is %d bytes, max 512", len(r.Text))
	}
	return nil
}

func (*CampaignCommand) MessageName() string { return "campaign command" }
func (*CampaignCommand) MaxSize() int        { return MaxEnvelopeSize + 64<<10 }
func (c *CampaignCommand) Validate() error {
	const m = "campaign command"
	switch c.Op {
	case "create":
		if c.Spec == nil {
			return invalid(m, "create without spec")
		}
		if err := checkDigest(m, "image digest", c.Spec.Image); err != nil {
			return err
		}
	case "start", "pause", "resume", "abort", "status":
		if err := CheckID("campaign id", c.Campaign); err != nil {
			return invalid(m, "%v", err)
		}
	case "list":
	default:
		return invalid(m, "unknown op %q", c.Op)
	}
	return nil
}

func (*CampaignReply) MessageName() string { return "campaign reply" }
func (*CampaignReply) MaxSize() int        { return 1 << 20 }
func (r *CampaignReply) Validate() error {
	if r.Code >= codeCount {
		return invalid("campaign reply", "unknown error code %d", r.Code)
	}
	return nil
}
