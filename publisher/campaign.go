package publisher

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// Campaign states.
const (
	CampaignCreated   = "created"
	CampaignRunning   = "running"
	CampaignPaused    = "paused"
	CampaignAborted   = "aborted"
	CampaignCompleted = "completed"
	CampaignExpired   = "expired"
)

// MaxTargets bounds the devices of one campaign (the target list is one KV
// value, under the default 1 MiB NATS payload limit).
const MaxTargets = 20000

// Campaign is a stored campaign.
type Campaign struct {
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	Image       string `json:"image"`
	ImageSize   int64  `json:"image_size"`
	ChunkSize   uint32 `json:"chunk_size"`
	TableDigest string `json:"table_digest"`
	Envelope    []byte `json:"envelope"`
	// Encrypted: the image is encrypted, and each notice carries the
	// content key wrapped for its device (see encrypt.go).
	Encrypted bool `json:"encrypted,omitempty"`
	// Deltas are the hex digests of the deltas the manifest offers.
	Deltas []string `json:"deltas,omitempty"`
	// RetryFailed: devices install the image even if it failed on them
	// before (schemas.CampaignSpec.RetryFailed).
	RetryFailed bool `json:"retry_failed,omitempty"`
	// Targets are the target devices in rollout order (shuffled once at
	// creation); phase i covers Targets[PhaseEnds[i-1]:PhaseEnds[i]].
	Targets         []string   `json:"targets"`
	Phases          []uint8    `json:"phases"`
	PhaseEnds       []int      `json:"phase_ends"`
	SuccessPermille uint16     `json:"success_permille"`
	FailPermille    uint16     `json:"fail_permille"`
	FailAction      FailAction `json:"fail_action"`
	// Deadline, Unix seconds; 0 = none.
	Deadline int64  `json:"deadline,omitempty"`
	State    string `json:"state"`
	// Phase is the index of the newest open phase; -1 before start.
	Phase  int    `json:"phase"`
	Reason string `json:"reason,omitempty"`
	// Resumed is when the campaign last (re)started running; no-progress
	// timeouts count from it at the earliest, so a pause does not time
	// devices out.
	Resumed   time.Time `json:"resumed,omitzero"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	CreatedBy string    `json:"created_by,omitempty"`
}

func (c *Campaign) ended() bool {
	return c.State == CampaignAborted || c.State == CampaignCompleted || c.State == CampaignExpired
}

// phaseOf returns the phase of the target at position i.
func (c *Campaign) phaseOf(i int) int {
	for k, e := range c.PhaseEnds {
		if i < e {
			return k
		}
	}
	return len(c.PhaseEnds) - 1
}

func (c *Campaign) phaseRange(k int) (int, int) {
	lo := 0
	if k > 0 {
		lo = c.PhaseEnds[k-1]
	}
	return lo, c.PhaseEnds[k]
}

// Status is a campaign with its live counters, as the APIs return it.
type Status struct {
	ID       string            `json:"id"`
	Name     string            `json:"name,omitempty"`
	State    string            `json:"state"`
	Phase    int               `json:"phase"`
	Phases   Percents          `json:"phases"`
	Image    string            `json:"image"`
	Targets  int               `json:"targets"`
	Opened   int               `json:"opened"`
	Counts   map[string]uint64 `json:"counts"`
	Ignored  uint64            `json:"ignored"`
	Reason   string            `json:"reason,omitempty"`
	Deadline int64             `json:"deadline,omitempty"`
	Created  time.Time         `json:"created"`
	Updated  time.Time         `json:"updated"`
}

// Wire converts a Status to the schemas form used on the NATS API.
func (s Status) Wire() schemas.CampaignStatus {
	img, _ := hex.DecodeString(s.Image)
	return schemas.CampaignStatus{ID: s.ID, State: s.State, Phase: uint32(max(s.Phase, 0)), Counts: s.Counts, Image: img, Reason: s.Reason}
}

// phaseEnds turns cumulative percentages into cumulative device counts; a
// phase adds at least minDev devices (or all that are left).
func phaseEnds(n int, phases []uint8, minDev int) []int {
	ends := make([]int, len(phases))
	prev := 0
	for i, pct := range phases {
		e := (n*int(pct) + 99) / 100
		e = max(e, min(n, prev+minDev))
		if i == len(phases)-1 {
			e = n
		}
		ends[i] = e
		prev = e
	}
	return ends
}

func checkPhases(ph []uint8) error {
	if len(ph) == 0 || len(ph) > 20 {
		return fmt.Errorf("%w: want 1..20 phases, got %d", ErrInvalid, len(ph))
	}
	for i, v := range ph {
		if v == 0 || v > 100 || (i > 0 && v <= ph[i-1]) {
			return fmt.Errorf("%w: phases %v must be increasing cumulative percentages in 1..100", ErrInvalid, ph)
		}
	}
	if ph[len(ph)-1] != 100 {
		return fmt.Errorf("%w: phases %v must end at 100", ErrInvalid, ph)
	}
	return nil
}

// expandTargets returns the devices a spec names, sorted by id.
func (p *Publisher) expandTargets(ctx context.Context, spec *schemas.CampaignSpec) ([]string, error) {
	for _, id := range spec.Devices {
		if err := checkName("device id", id); err != nil {
			return nil, err
		}
	}
	for _, g := range spec.Groups {
		if err := checkName("group", g); err != nil {
			return nil, err
		}
	}
	for _, t := range spec.Tags {
		if err := checkName("tag", t); err != nil {
			return nil, err
		}
	}
	if spec.Class != "" {
		if err := checkName("class", spec.Class); err != nil {
			return nil, err
		}
	}
	if len(spec.Devices)+len(spec.Groups)+len(spec.Tags) == 0 && spec.Class == "" && spec.OnVersion == nil {
		return nil, fmt.Errorf("%w: campaign names no targets (devices, groups, class, tags or on-version)", ErrInvalid)
	}
	all, err := p.Devices(ctx)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]Device, len(all))
	for _, d := range all {
		byID[d.ID] = d
	}
	set := map[string]bool{}
	for _, id := range spec.Devices {
		if _, ok := byID[id]; !ok {
			return nil, fmt.Errorf("%w: target device %q is not registered", ErrInvalid, id)
		}
		set[id] = true
	}
	selectors := len(spec.Groups)+len(spec.Tags) > 0 || spec.Class != "" || spec.OnVersion != nil
	if selectors {
		for _, d := range all {
			if spec.Class != "" && d.Class != spec.Class {
				continue
			}
			if len(spec.Groups) > 0 && !slices.ContainsFunc(spec.Groups, func(g string) bool { return slices.Contains(d.Groups, g) }) {
				continue
			}
			if len(spec.Tags) > 0 && !slices.ContainsFunc(spec.Tags, func(t string) bool { return slices.Contains(d.Tags, t) }) {
				continue
			}
			if spec.OnVersion != nil && d.ActiveVersion != *spec.OnVersion {
				continue
			}
			set[d.ID] = true
		}
	}
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: campaign targets match no registered device", ErrInvalid)
	}
	if len(out) > MaxTargets {
		return nil, fmt.Errorf("%w: campaign targets %d devices, max %d", ErrInvalid, len(out), MaxTargets)
	}
	return out, nil
}

// CreateCampaign validates spec, expands its targets, signs a manifest
// (unless spec.Envelope is given), stores the campaign and, with
// spec.Start, starts it. Errors: ErrInvalid, ErrNotFound (image),
// ErrNoSigner.
func (p *Publisher) CreateCampaign(ctx context.Context, who Principal, spec schemas.CampaignSpec) (Campaign, error) {
	return p.createCampaign(ctx, who, spec, nil)
}

// CreatePhasedCampaign is CreateCampaign with explicit phases: phase i
// opens the devices of phaseDevices[i] (registered device ids, each in one
// phase only), in that order. The spec names no other targets or
// percentages. Errors: as CreateCampaign.
func (p *Publisher) CreatePhasedCampaign(ctx context.Context, who Principal, spec schemas.CampaignSpec, phaseDevices [][]string) (Campaign, error) {
	if len(phaseDevices) == 0 {
		return Campaign{}, fmt.Errorf("%w: no phase device lists", ErrInvalid)
	}
	if len(spec.Devices)+len(spec.Groups)+len(spec.Tags)+len(spec.Phases) > 0 || spec.Class != "" || spec.OnVersion != nil {
		return Campaign{}, fmt.Errorf("%w: explicit phase device lists exclude other targets and phase percentages", ErrInvalid)
	}
	return p.createCampaign(ctx, who, spec, phaseDevices)
}

// explicitPhases checks phase device lists and returns the targets in
// rollout order, the cumulative percentages and phase ends.
func (p *Publisher) explicitPhases(ctx context.Context, lists [][]string) ([]string, []uint8, []int, error) {
	if len(lists) > 20 {
		return nil, nil, nil, fmt.Errorf("%w: %d phases, max 20", ErrInvalid, len(lists))
	}
	seen := map[string]bool{}
	var targets []string
	var ends []int
	for i, l := range lists {
		if len(l) == 0 {
			return nil, nil, nil, fmt.Errorf("%w: phase %d has no devices", ErrInvalid, i)
		}
		for _, id := range l {
			if _, err := p.Device(ctx, id); err != nil {
				if errors.Is(err, ErrNotFound) {
					return nil, nil, nil, fmt.Errorf("%w: phase %d device %q is not registered", ErrInvalid, i, id)
				}
				return nil, nil, nil, err
			}
			if seen[id] {
				return nil, nil, nil, fmt.Errorf("%w: device %q is in more than one phase", ErrInvalid, id)
			}
			seen[id] = true
			targets = append(targets, id)
		}
		ends = append(ends, len(targets))
	}
	if len(targets) > MaxTargets {
		return nil, nil, nil, fmt.Errorf("%w: campaign targets %d devices, max %d", ErrInvalid, len(targets), MaxTargets)
	}
	pcts := make([]uint8, len(ends))
	for i, e := range ends {
		pcts[i] = uint8(max(1, e*100/len(targets)))
	}
	return targets, pcts, ends, nil
}

func (p *Publisher) createCampaign(ctx context.Context, who Principal, spec schemas.CampaignSpec, phaseDevices [][]string) (Campaign, error) {
	if len(spec.Image) != schemas.DigestSize {
		return Campaign{}, fmt.Errorf("%w: image digest is %d bytes, want %d", ErrInvalid, len(spec.Image), schemas.DigestSize)
	}
	if len(spec.Name) > 128 {
		return Campaign{}, fmt.Errorf("%w: campaign name is %d bytes, max 128", ErrInvalid, len(spec.Name))
	}
	img, err := p.Image(ctx, hex.EncodeToString(spec.Image))
	if err != nil {
		return Campaign{}, err
	}
	phases := spec.Phases
	if len(phases) == 0 {
		phases = []uint8{100}
	}
	if phaseDevices == nil {
		if err := checkPhases(phases); err != nil {
			return Campaign{}, err
		}
	}
	if spec.SuccessPermille > 1000 || spec.FailPermille > 1000 {
		return Campaign{}, fmt.Errorf("%w: thresholds are permille, max 1000", ErrInvalid)
	}
	now := p.cfg.Clock.Now()
	if spec.Deadline != 0 && spec.Deadline <= now.Unix() {
		return Campaign{}, fmt.Errorf("%w: deadline %d is in the past", ErrInvalid, spec.Deadline)
	}
	var targets []string
	var ends []int
	if phaseDevices != nil {
		targets, phases, ends, err = p.explicitPhases(ctx, phaseDevices)
	} else {
		targets, err = p.expandTargets(ctx, &spec)
	}
	if err != nil {
		return Campaign{}, err
	}
	if len(p.cfg.NoticeSigners) == 0 {
		return Campaign{}, fmt.Errorf("%w: notices must be signed: configure a notice signing key (Config.NoticeSigners, or a SUITSigner)", ErrNoSigner)
	}
	id := randomID("c")
	enc, err := p.encryptionFor(ctx, img, targets)
	if err != nil {
		return Campaign{}, err
	}
	env := spec.Envelope
	var deltas []string
	if len(env) == 0 {
		if p.cfg.Signer == nil {
			return Campaign{}, fmt.Errorf("%w: upload a signed envelope or configure a signing key", ErrNoSigner)
		}
		tdig, cdig, err := p.manifestTables(ctx, img)
		if err != nil {
			return Campaign{}, err
		}
		req := ManifestRequest{
			ImageDigest: spec.Image, ImageSize: uint64(img.Size), ChunkSize: img.ChunkSize, ChunkTableDigest: tdig, CodedTableDigest: cdig,
			Sequence: uint64(now.UnixMilli()), VendorID: p.cfg.VendorID, ClassID: p.cfg.ClassID, Deadline: spec.Deadline,
			SecurityVersion: img.SecurityVersion, Encryption: enc, Component: spec.Component,
		}
		if p.cfg.PublicURL != "" {
			req.URIs = []string{p.imageURL(img.Digest)}
		}
		if spec.Component == "" { // devices report the application's image only
			if req.Deltas, deltas, err = p.campaignDeltas(ctx, who, targets, img); err != nil {
				return Campaign{}, err
			}
		}
		env, err = p.cfg.Signer.SignManifest(ctx, req)
		if err != nil {
			return Campaign{}, fmt.Errorf("publisher: sign manifest: %w", err)
		}
	}
	if len(env) > schemas.MaxEnvelopeSize {
		return Campaign{}, fmt.Errorf("%w: envelope is %d bytes, max %d", ErrInvalid, len(env), schemas.MaxEnvelopeSize)
	}
	if err := checkEnvelope(env, spec.Image); err != nil {
		return Campaign{}, err
	}
	if err := checkEncryptedEnvelope(env, img); err != nil {
		return Campaign{}, err
	}
	if len(spec.Envelope) > 0 {
		if deltas, err = p.envelopeDeltas(ctx, env); err != nil {
			return Campaign{}, err
		}
	}
	down, err := p.downgrades(ctx, targets, img, env)
	if err != nil {
		return Campaign{}, err
	}
	if len(down) > 0 && !spec.AllowDowngrade {
		return Campaign{}, fmt.Errorf("%w: the campaign would downgrade %d target(s): %s; allow it on purpose (--allow-downgrade, allow_downgrade)",
			ErrInvalid, len(down), summarize(down, 3))
	}
	// Rollout order: a shuffle seeded by the campaign id, so phases sample
	// the fleet rather than its alphabetical head.
	seed := hashSeed(id)
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	if ends == nil {
		rng.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
		ends = phaseEnds(len(targets), phases, p.cfg.MinPhaseDevices)
	}
	c := Campaign{
		ID: id, Name: spec.Name, Image: img.Digest, ImageSize: img.Size, ChunkSize: img.ChunkSize, TableDigest: img.TableDigest,
		Envelope: env, Encrypted: img.Encrypted, Deltas: deltas, RetryFailed: spec.RetryFailed, Targets: targets, Phases: phases, PhaseEnds: ends,
		SuccessPermille: orDefault(spec.SuccessPermille, p.cfg.DefaultSuccessPermille),
		FailPermille:    orDefault(spec.FailPermille, p.cfg.DefaultFailPermille),
		FailAction:      p.cfg.FailAction, Deadline: spec.Deadline, State: CampaignCreated, Phase: -1,
		Created: now.UTC(), Updated: now.UTC(), CreatedBy: who.Name,
	}
	rev, err := createJSON(ctx, p.st.campaigns, "campaign", c.ID, c)
	if err != nil {
		return Campaign{}, err
	}
	p.idx.putCampaign(c, rev)
	p.audit(ctx, who, "campaign.create", c.ID, fmt.Sprintf("image=%s targets=%d phases=%v", c.Image, len(targets), phases))
	if len(down) > 0 {
		p.audit(ctx, who, "campaign.downgrade", c.ID, fmt.Sprintf("allowed for %d target(s): %s", len(down), summarize(down, 20)))
	}
	if spec.Start {
		// Start from the revision just written rather than reading it back:
		// on a replicated bucket a read may be answered by a replica that
		// has not seen the create yet.
		started := c
		started.State, started.Phase, started.Resumed, started.Updated = CampaignRunning, 0, now.UTC(), now.UTC()
		nrev, err := updateJSON(ctx, p.st.campaigns, "campaign", c.ID, started, rev)
		if isConflict(err) {
			return p.StartCampaign(ctx, who, c.ID)
		}
		if err != nil {
			return Campaign{}, err
		}
		p.idx.putCampaign(started, nrev)
		p.audit(ctx, who, "campaign.start", c.ID, "")
		p.kick()
		return started, nil
	}
	return c, nil
}

func orDefault(v, d uint16) uint16 {
	if v == 0 {
		return d
	}
	return v
}

func hashSeed(s string) uint64 {
	var h uint64 = 14695981039346656037
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func (p *Publisher) imageURL(digest string) string { return p.cfg.PublicURL + "/images/" + digest }

// Campaign returns a stored campaign (ErrNotFound).
func (p *Publisher) Campaign(ctx context.Context, id string) (Campaign, error) {
	if err := checkName("campaign id", id); err != nil {
		return Campaign{}, err
	}
	var c Campaign
	_, err := getJSON(ctx, p.st.campaigns, "campaign", id, &c)
	return c, err
}

// transition moves campaign id from one of the states in from to state to
// with compare-and-set, and returns the campaign as written. ErrState when
// the campaign is in none of from.
func (p *Publisher) transition(ctx context.Context, id string, from []string, to, reason string, edit func(*Campaign)) (Campaign, error) {
	if err := checkName("campaign id", id); err != nil {
		return Campaign{}, err
	}
	c, rev, err := mutateJSON(ctx, p.st.campaigns, "campaign", id, func(c *Campaign) error {
		if !slices.Contains(from, c.State) {
			return fmt.Errorf("%w: campaign %s is %s, cannot become %s", ErrState, id, c.State, to)
		}
		c.State, c.Reason, c.Updated = to, reason, p.cfg.Clock.Now().UTC()
		if edit != nil {
			edit(c)
		}
		return nil
	})
	if err != nil {
		return Campaign{}, err
	}
	p.idx.putCampaign(*c, rev)
	return *c, nil
}

// StartCampaign opens the first phase of a created campaign. Errors:
// ErrNotFound, ErrState.
func (p *Publisher) StartCampaign(ctx context.Context, who Principal, id string) (Campaign, error) {
	c, err := p.transition(ctx, id, []string{CampaignCreated}, CampaignRunning, "", func(c *Campaign) {
		c.Phase, c.Resumed = 0, p.cfg.Clock.Now().UTC()
	})
	if err != nil {
		return Campaign{}, err
	}
	p.audit(ctx, who, "campaign.start", id, "")
	p.kick()
	return c, nil
}

// PauseCampaign pauses a running campaign and clears its pending notices;
// devices keep their state. Errors: ErrNotFound, ErrState.
func (p *Publisher) PauseCampaign(ctx context.Context, who Principal, id string) (Campaign, error) {
	return p.stop(ctx, who, id, []string{CampaignRunning}, CampaignPaused, "paused by "+who.Name)
}

// AbortCampaign ends a campaign for good and clears its notices.
func (p *Publisher) AbortCampaign(ctx context.Context, who Principal, id string) (Campaign, error) {
	return p.stop(ctx, who, id, []string{CampaignCreated, CampaignRunning, CampaignPaused}, CampaignAborted, "aborted by "+who.Name)
}

func (p *Publisher) stop(ctx context.Context, who Principal, id string, from []string, to, reason string) (Campaign, error) {
	c, err := p.transition(ctx, id, from, to, reason, nil)
	if err != nil {
		return Campaign{}, err
	}
	p.audit(ctx, who, "campaign."+map[string]string{CampaignPaused: "pause", CampaignAborted: "abort"}[to], id, reason)
	p.clearNotices(ctx, &c)
	return c, nil
}

// ResumeCampaign resumes a paused campaign and re-sends the notices of its
// devices still in progress. Errors: ErrNotFound, ErrState.
func (p *Publisher) ResumeCampaign(ctx context.Context, who Principal, id string) (Campaign, error) {
	c, err := p.transition(ctx, id, []string{CampaignPaused}, CampaignRunning, "", func(c *Campaign) { c.Resumed = p.cfg.Clock.Now().UTC() })
	if err != nil {
		return Campaign{}, err
	}
	p.audit(ctx, who, "campaign.resume", id, "")
	p.republish(ctx, &c, nil)
	p.kick()
	return c, nil
}

// CampaignStatus returns a campaign with its live counters.
func (p *Publisher) CampaignStatus(ctx context.Context, id string) (Status, error) {
	c, err := p.Campaign(ctx, id)
	if err != nil {
		return Status{}, err
	}
	return p.status(&c), nil
}

func (p *Publisher) status(c *Campaign) Status {
	s := Status{
		ID: c.ID, Name: c.Name, State: c.State, Phase: c.Phase, Phases: c.Phases, Image: c.Image,
		Targets: len(c.Targets), Reason: c.Reason, Deadline: c.Deadline, Created: c.Created, Updated: c.Updated,
	}
	if c.Phase >= 0 {
		s.Opened = c.PhaseEnds[c.Phase]
	}
	s.Counts, s.Ignored = p.idx.counts(c.ID)
	return s
}

// Campaigns lists every campaign with its counters, newest first.
func (p *Publisher) Campaigns(ctx context.Context) ([]Status, error) {
	cs, err := allValues[Campaign](ctx, p.st.campaigns)
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(cs))
	for i := range cs {
		out = append(out, p.status(&cs[i]))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}
