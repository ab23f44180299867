package publisher

import (
	"slices"
	"sync"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// Per-device states kept by the publisher beyond the device's own
// (schemas.State names): queued (in an open phase, waiting for a download
// slot, no notice yet) and timed-out (no progress for Config.NoProgress,
// or not finished within Config.DeviceDeadline of its notice).
const (
	StateQueued   = "queued"
	StateTimedOut = "timed-out"
)

// DeviceState is one device's state in one campaign, stored under
// "<campaign>.<device>". State is the name of a schemas.State, or
// StateQueued or StateTimedOut.
type DeviceState struct {
	Campaign      string    `json:"campaign"`
	Device        string    `json:"device"`
	Phase         int       `json:"phase"`
	State         string    `json:"state"`
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

// agentState returns the device state named s; ok is false for the
// publisher's own states (queued, timed-out) and unknown names.
func agentState(s string) (st schemas.State, ok bool) { return schemas.ParseState(s) }

// outcome reports whether s ends a device's part in a campaign on the
// device's side: confirmed, failed, rolled back or skipped.
func outcome(s schemas.State) bool {
	switch s {
	case schemas.StateConfirmed, schemas.StateFailed, schemas.StateRolledBack, schemas.StateSkipped:
		return true
	}
	return false
}

// bucket is the counter a state is counted under.
func bucket(state string) string {
	switch state {
	case StateQueued:
		return "queued"
	case StateTimedOut:
		return "failed"
	}
	s, ok := agentState(state)
	if !ok {
		return state
	}
	switch s {
	case schemas.StateNotified, schemas.StateIdle:
		return "pending"
	case schemas.StateManifestVerified, schemas.StateDownloading:
		return "downloading"
	case schemas.StateCandidateVerified, schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial:
		return "staged"
	}
	return state // confirmed, failed, rolled-back, deferred, skipped
}

// terminal states end a device's part in a campaign: an outcome, or timed
// out.
func terminal(state string) bool {
	if state == StateTimedOut {
		return true
	}
	s, ok := agentState(state)
	return ok && outcome(s)
}

// active states hold a download slot.
func active(state string) bool {
	b := bucket(state)
	return b == "pending" || b == "downloading"
}

// succeeded states count towards a phase's success threshold.
func succeeded(state string) bool {
	s, ok := agentState(state)
	return ok && (s == schemas.StateConfirmed || s == schemas.StateSkipped)
}

// failedState counts against the failure threshold.
func failedState(state string) bool {
	if state == StateTimedOut {
		return true
	}
	s, ok := agentState(state)
	return ok && (s == schemas.StateFailed || s == schemas.StateRolledBack)
}

// mainRank orders the agent's main line; -1 for states off it.
func mainRank(s schemas.State) int { return slices.Index(mainLine, s) }

var mainLine = []schemas.State{
	schemas.StateNotified, schemas.StateManifestVerified, schemas.StateDownloading, schemas.StateCandidateVerified,
	schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial, schemas.StateConfirmed,
}

// judge decides whether a device whose stored state is cur may take a
// report of state next (with a newer counter). It returns "" when allowed,
// or why not: "not-notified", "impossible" (no transition of the agent's
// state machine leads there), "final" (the device is timed out: only an
// outcome moves it), "repeated" (the same outcome again: nothing to
// change).
//
// A terminal state moves only on a newer outcome: a timed-out device that
// reports an outcome after all, or a failure the bootloader then reverted
// (rolled back). Nothing else moves a device out of a terminal state.
func judge(cur string, next schemas.State) string {
	switch {
	case cur == StateQueued:
		return "not-notified"
	case next == schemas.StateIdle:
		return "impossible"
	case terminal(cur):
		return judgeTerminal(cur, next)
	}
	c, ok := agentState(cur)
	switch {
	case !ok:
		return "impossible"
	case c == next:
		return "" // progress within a state
	case outcome(next):
		return ""
	case next == schemas.StateDeferred:
		if r := mainRank(c); r >= 0 && r <= mainRank(schemas.StateDownloading) {
			return ""
		}
		return "impossible"
	case c == schemas.StateDeferred:
		if mainRank(next) >= 0 {
			return ""
		}
		return "impossible"
	}
	if mainRank(next) >= mainRank(c) && mainRank(c) >= 0 {
		return ""
	}
	return "impossible"
}

// judgeTerminal is judge for a device in a terminal state.
func judgeTerminal(cur string, next schemas.State) string {
	switch {
	case cur == StateTimedOut && outcome(next):
		return "" // late, but the device's own outcome
	case cur == StateTimedOut:
		return "final"
	case cur == next.String():
		return "repeated"
	case cur == schemas.StateFailed.String() && next == schemas.StateRolledBack:
		return "" // the failed update was reverted by the bootloader
	}
	return "impossible"
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
}

// index is the in-memory view of campaigns and per-device state, fed by KV
// watches (so every instance sees every write) and by this instance's own
// writes. Safe for concurrent use.
type index struct {
	mu    sync.Mutex
	camps map[string]*campIndex
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
		k = append(k, "failed."+st.Code)
	}
	return k
}

// putDev records st at revision rev unless a newer revision is known.
func (x *index) putDev(st DeviceState, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
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
	for k, v := range ci.counts {
		if v != 0 {
			out[k] = v
		}
	}
	return out, ci.ignored
}
