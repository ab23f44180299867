package publisher

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// DevState is a device's state in a campaign as the publisher keeps it:
// one of the agent's states (DevState(s) for a schemas.State s) or one of
// the publisher's own, StateQueued and StateTimedOut. It is stored and
// shown by name (the schemas.State names, "queued", "timed-out").
type DevState uint8

// The publisher's own device states, beyond the agent's.
const (
	// StateQueued: in an open phase, waiting for a download slot; no
	// notice yet.
	StateQueued DevState = 0x80 + iota
	// StateTimedOut: no progress for Config.NoProgress, or not finished
	// within Config.DeviceDeadline of its notice.
	StateTimedOut
)

var ownStateNames = [...]string{StateQueued - 0x80: "queued", StateTimedOut - 0x80: "timed-out"}

// agent returns the agent state d is; ok is false for the publisher's own
// states.
func (d DevState) agent() (s schemas.State, ok bool) { return schemas.State(d), d < StateQueued }

func (d DevState) String() string {
	if s, ok := d.agent(); ok {
		return s.String()
	}
	if i := int(d - StateQueued); i < len(ownStateNames) {
		return ownStateNames[i]
	}
	return fmt.Sprintf("devstate(%d)", uint8(d))
}

// ParseDevState returns the device state named name.
func ParseDevState(name string) (DevState, bool) {
	if i := slices.Index(ownStateNames[:], name); i >= 0 {
		return StateQueued + DevState(i), true
	}
	s, ok := schemas.ParseState(name)
	return DevState(s), ok
}

// MarshalText encodes d by name.
func (d DevState) MarshalText() ([]byte, error) {
	if _, ok := ParseDevState(d.String()); !ok {
		return nil, fmt.Errorf("publisher: unknown device state %d", uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText decodes a state name.
func (d *DevState) UnmarshalText(b []byte) error {
	v, ok := ParseDevState(string(b))
	if !ok {
		return fmt.Errorf("publisher: unknown device state %q", b)
	}
	*d = v
	return nil
}

// DeviceState is one device's state in one campaign, stored under
// "<campaign>.<device>".
type DeviceState struct {
	Campaign      string    `json:"campaign"`
	Device        string    `json:"device"`
	Phase         int       `json:"phase"`
	State         DevState  `json:"state"`
	Counter       uint64    `json:"counter"`
	BytesDone     uint64    `json:"bytes_done,omitempty"`
	BytesTotal    uint64    `json:"bytes_total,omitempty"`
	ActiveVersion uint64    `json:"active_version,omitempty"`
	Code          string    `json:"code,omitempty"`
	Text          string    `json:"text,omitempty"`
	Notified      time.Time `json:"notified,omitzero"`
	Progress      time.Time `json:"progress,omitzero"`
	Updated       time.Time `json:"updated"`
}

func devKey(campaign, device string) string { return campaign + "." + device }

// outcome reports whether s ends a device's part in a campaign on the
// device's side: confirmed, failed, rolled back or skipped.
func outcome(s schemas.State) bool {
	switch s {
	case schemas.StateConfirmed, schemas.StateFailed, schemas.StateRolledBack, schemas.StateSkipped:
		return true
	}
	return false
}

// The counters of Status.Counts a device is counted under (bucket) that
// are not the name of its state.
const (
	countPending     = "pending"
	countDownloading = "downloading"
	countStaged      = "staged"
	countFailed      = "failed"
)

// bucket is the counter a state is counted under.
func bucket(d DevState) string {
	if d == StateTimedOut {
		return countFailed
	}
	s, ok := d.agent()
	if !ok {
		return d.String() // queued
	}
	switch s {
	case schemas.StateNotified, schemas.StateIdle:
		return countPending
	case schemas.StateManifestVerified, schemas.StateDownloading:
		return countDownloading
	case schemas.StateCandidateVerified, schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial:
		return countStaged
	}
	return s.String() // confirmed, failed, rolled-back, deferred, skipped
}

// terminal states end a device's part in a campaign: an outcome, or timed
// out.
func terminal(d DevState) bool {
	s, ok := d.agent()
	return d == StateTimedOut || ok && outcome(s)
}

// active states hold a download slot.
func active(d DevState) bool {
	b := bucket(d)
	return b == countPending || b == countDownloading
}

// succeeded states count towards a phase's success threshold.
func succeeded(d DevState) bool {
	return d == DevState(schemas.StateConfirmed) || d == DevState(schemas.StateSkipped)
}

// failedState counts against the failure threshold.
func failedState(d DevState) bool {
	return d == StateTimedOut || d == DevState(schemas.StateFailed) || d == DevState(schemas.StateRolledBack)
}

// mainRank orders the agent's main line; -1 for states off it.
func mainRank(s schemas.State) int { return slices.Index(mainLine, s) }

var mainLine = []schemas.State{
	schemas.StateNotified, schemas.StateManifestVerified, schemas.StateDownloading, schemas.StateCandidateVerified,
	schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial, schemas.StateConfirmed,
}

// judge decides whether a device whose stored state is cur may take a
// report of state next (with a newer counter). It returns resApplied when
// allowed, or why not: resNotNotified, resImpossible (no transition of the
// agent's state machine leads there), resFinal (the device is timed out:
// only an outcome moves it), resRepeated (the same outcome again: nothing
// to change).
//
// A terminal state moves only on a newer outcome: a timed-out device that
// reports an outcome after all, or a failure the bootloader then reverted
// (rolled back). Nothing else moves a device out of a terminal state.
func judge(cur DevState, next schemas.State) reportResult {
	switch {
	case cur == StateQueued:
		return resNotNotified
	case next == schemas.StateIdle:
		return resImpossible
	case terminal(cur):
		return judgeTerminal(cur, next)
	}
	c, ok := cur.agent()
	switch {
	case !ok:
		return resImpossible
	case c == next:
		return resApplied // progress within a state
	case outcome(next):
		return resApplied
	case next == schemas.StateDeferred:
		if r := mainRank(c); r >= 0 && r <= mainRank(schemas.StateDownloading) {
			return resApplied
		}
		return resImpossible
	case c == schemas.StateDeferred:
		if mainRank(next) >= 0 {
			return resApplied
		}
		return resImpossible
	}
	if mainRank(next) >= mainRank(c) && mainRank(c) >= 0 {
		return resApplied
	}
	return resImpossible
}

// judgeTerminal is judge for a device in a terminal state.
func judgeTerminal(cur DevState, next schemas.State) reportResult {
	switch {
	case cur == StateTimedOut && outcome(next):
		return resApplied // late, but the device's own outcome
	case cur == StateTimedOut:
		return resFinal
	case cur == DevState(next):
		return resRepeated
	case cur == DevState(schemas.StateFailed) && next == schemas.StateRolledBack:
		return resApplied // the failed update was reverted by the bootloader
	}
	return resImpossible
}

type devEntry struct {
	st  DeviceState
	rev uint64
}

type campIndex struct {
	c       Campaign
	rev     uint64
	devs    map[string]*devEntry
	counts  map[string]uint64
	ignored uint64
	// parts are the partitions' count records (owner.go), by partition;
	// kept only when the state is partitioned.
	parts map[int]partCount
}

// index is the in-memory view of campaigns and per-device state, fed by KV
// watches and by this instance's own writes. Safe for concurrent use.
//
// With one partition it holds every device (every instance sees every
// write). With n > 1 partitions it holds only the devices of the
// partitions this instance owns (hold), and a campaign's counts are the
// sum of its partitions' count records, which every instance follows.
type index struct {
	mu    sync.Mutex
	camps map[string]*campIndex
	n     int    // partitions; 0 or 1: unpartitioned
	hold  []bool // by partition, when n > 1: whether devices are kept
}

// holds reports whether the index keeps device's state. Called with mu
// held.
func (x *index) holds(device string) bool {
	return x.n <= 1 || x.hold[devicePartition(device, x.n)]
}

func (x *index) camp(id string) *campIndex {
	ci := x.camps[id]
	if ci == nil {
		ci = &campIndex{devs: map[string]*devEntry{}, counts: map[string]uint64{}}
		x.camps[id] = ci
	}
	return ci
}

func (x *index) putCampaign(c Campaign, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci := x.camp(c.ID)
	if rev != 0 && rev <= ci.rev {
		return
	}
	ci.c, ci.rev = c, rev
}

func (x *index) campaign(id string) (Campaign, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci, ok := x.camps[id]
	if !ok || ci.rev == 0 {
		return Campaign{}, false
	}
	return ci.c, true
}

func (x *index) campaignIDs() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]string, 0, len(x.camps))
	for id, ci := range x.camps {
		if ci.rev != 0 {
			out = append(out, id)
		}
	}
	return out
}

func countKeys(st DeviceState) []string {
	if st.Code == schemas.CodeFailedBefore.String() {
		// Not a failure of this campaign: the image failed on the device
		// before, and it was not downloaded again.
		return []string{schemas.CodeFailedBefore.String()}
	}
	k := []string{bucket(st.State)}
	if failedState(st.State) && st.Code != "" {
		k = append(k, countFailed+"."+st.Code)
	}
	return k
}

// putDev records st at revision rev unless a newer revision is known.
func (x *index) putDev(st DeviceState, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.holds(st.Device) {
		return // another instance's partition
	}
	ci := x.camp(st.Campaign)
	old := ci.devs[st.Device]
	if old != nil {
		if rev <= old.rev {
			return
		}
		for _, k := range countKeys(old.st) {
			ci.counts[k]--
		}
	}
	for _, k := range countKeys(st) {
		ci.counts[k]++
	}
	ci.devs[st.Device] = &devEntry{st: st, rev: rev}
}

// known reports whether the index holds device's state at revision rev
// or later.
func (x *index) known(campaign, device string, rev uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if ci, ok := x.camps[campaign]; ok {
		if e, ok := ci.devs[device]; ok {
			return e.rev >= rev
		}
	}
	return false
}

func (x *index) dev(campaign, device string) (DeviceState, uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci, ok := x.camps[campaign]
	if !ok {
		return DeviceState{}, 0, false
	}
	e, ok := ci.devs[device]
	if !ok {
		return DeviceState{}, 0, false
	}
	return e.st, e.rev, true
}

// devs returns copies of the campaign's device states, in no order.
func (x *index) devs(campaign string) []devEntry {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci, ok := x.camps[campaign]
	if !ok {
		return nil
	}
	out := make([]devEntry, 0, len(ci.devs))
	for _, e := range ci.devs {
		out = append(out, *e)
	}
	return out
}

func (x *index) addIgnored(campaign string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if ci, ok := x.camps[campaign]; ok {
		ci.ignored++
	}
}

func (x *index) counts(campaign string) (map[string]uint64, uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]uint64{}
	ci, ok := x.camps[campaign]
	if !ok {
		return out, 0
	}
	if x.n > 1 {
		for _, pc := range ci.parts {
			for k, v := range pc.Counts {
				if v != 0 {
					out[k] += v
				}
			}
		}
		return out, ci.ignored
	}
	for k, v := range ci.counts {
		if v != 0 {
			out[k] = v
		}
	}
	return out, ci.ignored
}

// setHold starts (on) or stops keeping partition i's devices; stopping
// drops the ones held.
func (x *index) setHold(i int, on bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.hold[i] = on
	if on {
		return
	}
	for _, ci := range x.camps {
		for dev, e := range ci.devs {
			if devicePartition(dev, x.n) != i {
				continue
			}
			for _, k := range countKeys(e.st) {
				ci.counts[k]--
			}
			delete(ci.devs, dev)
		}
	}
}

// putPart records partition i's count record of campaign.
func (x *index) putPart(campaign string, i int, pc partCount) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci := x.camp(campaign)
	if ci.parts == nil {
		ci.parts = map[int]partCount{}
	}
	ci.parts[i] = pc
}

// part returns partition i's count record of campaign as last seen.
func (x *index) part(campaign string, i int) (partCount, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ci, ok := x.camps[campaign]
	if !ok {
		return partCount{}, false
	}
	pc, ok := ci.parts[i]
	return pc, ok
}

// holdsDevice reports whether the index keeps device's state.
func (x *index) holdsDevice(device string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.holds(device)
}

// holdsPart reports whether the index keeps partition i's devices.
func (x *index) holdsPart(i int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.n <= 1 || x.hold[i]
}
