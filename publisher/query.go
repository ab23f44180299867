package publisher

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The questions an operator asks during a rollout (issue 18): which
// devices of a campaign are where, which failed and why, what a device
// reported, what the fleet runs. Campaign devices and failures are read
// from the in-memory index (fed by the campdev KV watch, so every
// instance answers alike); a device's history from the event stream
// (events.go); the fleet from the registry and the index.

// DeviceFilter selects and pages a campaign's devices. Zero fields select
// everything.
type DeviceFilter struct {
	// State is a device state (schemas.State name, queued, timed-out) or
	// a counter bucket (pending, downloading, staged, failed...): a device
	// matches either.
	State string
	// Phase, when not nil, is the phase index (0-based).
	Phase *int
	// Reason is a failure code (schemas.ErrCode name); it selects failed
	// devices with that code. "timed-out" selects timed-out devices.
	Reason string
	// After is the paging cursor: the last device id of the previous page.
	After string
	// Limit is the page size, 1..MaxDevicePage; 0 means DefaultDevicePage.
	Limit int
}

// Page sizes of CampaignDevices.
const (
	DefaultDevicePage = 100
	MaxDevicePage     = 1000
)

// DevicePage is one page of a campaign's devices, by device id.
type DevicePage struct {
	Devices []DeviceState `json:"devices"`
	// Total is the number of devices the filter matches (all pages).
	Total int `json:"total"`
	// Next is the cursor of the next page (DeviceFilter.After); empty on
	// the last page.
	Next string `json:"next,omitempty"`
}

// ParseDeviceFilter reads a DeviceFilter from query parameters state,
// phase, reason, after and limit. Errors wrap ErrInvalid.
func ParseDeviceFilter(get func(string) string) (DeviceFilter, error) {
	f := DeviceFilter{State: get("state"), Reason: get("reason"), After: get("after")}
	for name, v := range map[string]string{"state": f.State, "reason": f.Reason, "after": f.After} {
		if v != "" && !kvSafe(v) {
			return f, fmt.Errorf("%w: %s %q must be 1..64 letters, digits, '-' or '_'", ErrInvalid, name, v)
		}
	}
	if s := get("phase"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 20 {
			return f, fmt.Errorf("%w: phase %q, want 0..20", ErrInvalid, s)
		}
		f.Phase = &n
	}
	if s := get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxDevicePage {
			return f, fmt.Errorf("%w: limit %q, want 1..%d", ErrInvalid, s, MaxDevicePage)
		}
		f.Limit = n
	}
	return f, nil
}

func (f *DeviceFilter) match(st *DeviceState) bool {
	if f.State != "" && st.State.String() != f.State && bucket(st.State) != f.State {
		return false
	}
	if f.Phase != nil && st.Phase != *f.Phase {
		return false
	}
	if f.Reason != "" && failReason(st) != f.Reason {
		return false
	}
	return true
}

// failReason is why a failed device failed: its code, or its state when
// it reported none (timed-out, rolled-back); "" for a device that did not
// fail.
func failReason(st *DeviceState) string {
	if !failedState(st.State) {
		return ""
	}
	if st.Code != "" {
		return st.Code
	}
	return st.State.String()
}

// CampaignDevices returns one page of the campaign's devices that match
// f, ordered by device id. Errors: ErrNotFound, ErrInvalid.
func (p *Publisher) CampaignDevices(ctx context.Context, id string, f DeviceFilter) (DevicePage, error) {
	if _, err := p.Campaign(ctx, id); err != nil {
		return DevicePage{}, err
	}
	if f.Limit == 0 {
		f.Limit = DefaultDevicePage
	}
	if f.Limit < 1 || f.Limit > MaxDevicePage {
		return DevicePage{}, fmt.Errorf("%w: limit %d, want 1..%d", ErrInvalid, f.Limit, MaxDevicePage)
	}
	all, err := p.campaignDevs(ctx, id)
	if err != nil {
		return DevicePage{}, err
	}
	out := DevicePage{Devices: []DeviceState{}}
	sel := make([]*DeviceState, 0, len(all))
	for i := range all {
		if f.match(&all[i].st) {
			sel = append(sel, &all[i].st)
		}
	}
	out.Total = len(sel)
	slices.SortFunc(sel, func(a, b *DeviceState) int { return cmp.Compare(a.Device, b.Device) })
	start := 0
	if f.After != "" {
		start, _ = slices.BinarySearchFunc(sel, f.After, func(a *DeviceState, t string) int {
			if a.Device <= t {
				return -1
			}
			return 1
		})
	}
	for _, st := range sel[start:] {
		if len(out.Devices) == f.Limit {
			out.Next = out.Devices[len(out.Devices)-1].Device
			break
		}
		out.Devices = append(out.Devices, *st)
	}
	return out, nil
}

// FailureGroup is the failed devices of a campaign that share a reason.
type FailureGroup struct {
	// Reason is the failure code the devices reported, or their state
	// (timed-out, rolled-back) when they reported none.
	Reason string `json:"reason"`
	Count  int    `json:"count"`
	// Devices are the first (by id) up to MaxFailureSample devices.
	Devices []string `json:"devices"`
	// Text is the message of one of them.
	Text string `json:"text,omitempty"`
}

// MaxFailureSample bounds FailureGroup.Devices.
const MaxFailureSample = 20

// CampaignFailures groups the campaign's failed devices by reason, the
// largest group first. Errors: ErrNotFound, ErrInvalid.
func (p *Publisher) CampaignFailures(ctx context.Context, id string) ([]FailureGroup, error) {
	if _, err := p.Campaign(ctx, id); err != nil {
		return nil, err
	}
	groups := map[string]*FailureGroup{}
	devs, err := p.campaignDevs(ctx, id)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(devs, func(a, b devEntry) int { return cmp.Compare(a.st.Device, b.st.Device) })
	for i := range devs {
		st := &devs[i].st
		r := failReason(st)
		if r == "" {
			continue
		}
		g := groups[r]
		if g == nil {
			g = &FailureGroup{Reason: r, Text: st.Text, Devices: []string{}}
			groups[r] = g
		}
		g.Count++
		if len(g.Devices) < MaxFailureSample {
			g.Devices = append(g.Devices, st.Device)
		}
	}
	out := make([]FailureGroup, 0, len(groups))
	for _, g := range groups {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b FailureGroup) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})
	return out, nil
}

// FleetSummary counts the registered devices by what they run and when
// they were last heard of.
type FleetSummary struct {
	Devices   int            `json:"devices"`
	ByVersion map[string]int `json:"by_version"`
	ByClass   map[string]int `json:"by_class"`
	ByGroup   map[string]int `json:"by_group"`
	// LastSeen counts devices by the age of their newest report:
	// "1h" (within the hour), "24h", "older", "never".
	LastSeen map[string]int `json:"last_seen"`
	// Campaigns counts campaigns by state.
	Campaigns map[string]int `json:"campaigns"`
}

// Fleet summarizes the registry: devices by active version, class, group
// and last report (the registry's last report, or a newer campaign report
// in the index).
func (p *Publisher) Fleet(ctx context.Context) (FleetSummary, error) {
	devs, err := p.Devices(ctx)
	if err != nil {
		return FleetSummary{}, err
	}
	seen := map[string]time.Time{}
	for _, id := range p.idx.campaignIDs() {
		cdevs, err := p.campaignDevs(ctx, id)
		if err != nil {
			return FleetSummary{}, err
		}
		for _, e := range cdevs {
			if !e.st.Progress.IsZero() && e.st.Progress.After(seen[e.st.Device]) {
				seen[e.st.Device] = e.st.Progress
			}
		}
	}
	now := p.cfg.Clock.Now()
	s := FleetSummary{
		Devices: len(devs), ByVersion: map[string]int{}, ByClass: map[string]int{}, ByGroup: map[string]int{},
		LastSeen: map[string]int{}, Campaigns: map[string]int{},
	}
	for _, d := range devs {
		s.ByVersion[strconv.FormatUint(d.ActiveVersion, 10)]++
		s.ByClass[d.Class]++
		for _, g := range d.Groups {
			s.ByGroup[g]++
		}
		last := seen[d.ID]
		if d.LastReport != nil && d.LastReport.Received.After(last) {
			last = d.LastReport.Received
		}
		switch age := now.Sub(last); {
		case last.IsZero():
			s.LastSeen["never"]++
		case age <= time.Hour:
			s.LastSeen["1h"]++
		case age <= 24*time.Hour:
			s.LastSeen["24h"]++
		default:
			s.LastSeen["older"]++
		}
	}
	for _, id := range p.idx.campaignIDs() {
		if c, ok := p.idx.campaign(id); ok {
			s.Campaigns[c.State]++
		}
	}
	return s, nil
}

// CampaignRef names a campaign that uses an image.
type CampaignRef struct {
	ID    string `json:"id"`
	Name  string `json:"name,omitempty"`
	State string `json:"state"`
}

// ImageUse is an image with the campaigns that deliver it.
type ImageUse struct {
	Image
	Campaigns []CampaignRef `json:"campaigns"`
}

// imageCampaigns returns, by image digest, the campaigns that deliver it,
// newest first.
func (p *Publisher) imageCampaigns() map[string][]CampaignRef {
	out := map[string][]CampaignRef{}
	var cs []Campaign
	for _, id := range p.idx.campaignIDs() {
		if c, ok := p.idx.campaign(id); ok {
			cs = append(cs, c)
		}
	}
	slices.SortFunc(cs, func(a, b Campaign) int { return b.Created.Compare(a.Created) })
	for _, c := range cs {
		out[c.Image] = append(out[c.Image], CampaignRef{ID: c.ID, Name: c.Name, State: c.State})
	}
	return out
}

// ImageUses lists the stored images, newest first, each with the
// campaigns that deliver it.
func (p *Publisher) ImageUses(ctx context.Context) ([]ImageUse, error) {
	imgs, err := p.Images(ctx)
	if err != nil {
		return nil, err
	}
	uses := p.imageCampaigns()
	out := make([]ImageUse, len(imgs))
	for i, img := range imgs {
		out[i] = ImageUse{Image: img, Campaigns: nonNil(uses[img.Digest])}
	}
	return out, nil
}

// ImageUseOf returns one image with the campaigns that deliver it
// (ErrNotFound, ErrInvalid).
func (p *Publisher) ImageUseOf(ctx context.Context, digest string) (ImageUse, error) {
	img, err := p.Image(ctx, digest)
	if err != nil {
		return ImageUse{}, err
	}
	return ImageUse{Image: img, Campaigns: nonNil(p.imageCampaigns()[img.Digest])}, nil
}

// DeleteImage removes an image that no campaign in progress (created,
// running or paused) delivers: its record first, so that it is invisible
// at once, then its chunks and chunk table. Campaigns that ended keep
// naming it in their history. An image a stored delta is based on (its
// source or target, found through the delta index) is refused until the
// delta is deleted; deleting a delta takes it out of the index. Errors:
// ErrNotFound, ErrInvalid, ErrState (a campaign in progress or a delta
// uses it; the error names it).
func (p *Publisher) DeleteImage(ctx context.Context, who Principal, digest string) error {
	img, err := p.Image(ctx, digest)
	if err != nil {
		return err
	}
	for _, c := range p.imageCampaigns()[img.Digest] {
		if c.State == CampaignCreated || c.State == CampaignRunning || c.State == CampaignPaused {
			return fmt.Errorf("%w: image %s is delivered by campaign %s (%s); end it first", ErrState, img.Digest, c.ID, c.State)
		}
	}
	// A delta based on the image (its source or its target) would be left
	// unusable: delete the delta first. The delta index names them.
	deltas, err := p.deltasOf(ctx, img.Digest)
	if err != nil {
		return err
	}
	for _, d := range deltas {
		if d.Digest != img.Digest {
			return fmt.Errorf("%w: image %s is the source or target of delta %s; delete the delta first", ErrState, img.Digest, d.Digest)
		}
	}
	if err := withRetry(ctx, func(ctx context.Context, _ bool) error { return p.st.imageMeta.Delete(ctx, img.Digest) }); err != nil {
		return fmt.Errorf("publisher: delete image %s: %w", img.Digest, err)
	}
	if img.DeltaFrom != "" {
		p.unindexDelta(ctx, img)
	}
	p.audit(ctx, who, "image.delete", img.Digest, img.Name)
	p.cache.drop(img.Digest)
	p.dl.forget(img.Digest)
	err = withRetry(ctx, func(ctx context.Context, _ bool) error {
		return p.st.images.stream.Purge(ctx, jetstream.WithPurgeSubject(p.st.images.prefix+"."+img.Digest+".>"))
	})
	if err != nil {
		p.log.Warn("image record deleted, but its bytes were not purged", "image", img.Digest, "err", err)
	}
	return nil
}

// drop forgets a cached image (a deleted one).
func (c *imageCache) drop(digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.byKey[digest]
	if !ok {
		return
	}
	c.used -= int64(len(d.tableBytes))
	delete(c.byKey, digest)
	c.order = slices.DeleteFunc(c.order, func(k string) bool { return k == digest })
}
