package fleet

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// Sim is a running simulated fleet as a campaign run (RunCampaign) sees
// it: a Fleet in this process, or Procs, whose child processes each run
// a share of one fleet.
type Sim interface {
	// Tally counts the devices by state, now. Safe to call while the
	// devices run and after Stop.
	Tally() Tally
	// Stop stops every device's agent and waits for them. Safe to call
	// more than once.
	Stop()
	// Outcome reads, after Stop, what every device holds: which image it
	// runs (the factory image is v1, v2 the image of digest v2) and its
	// agent's final state.
	Outcome(v2 [32]byte) (Outcome, error)
}

// maxExamples bounds the devices a Tally or an error names.
const maxExamples = 10

// Tally counts a fleet's devices at one moment. The tallies of the
// shares of one fleet add up (Add).
type Tally struct {
	Devices int `json:"devices"`
	// States counts devices by their agent's state.
	States map[string]int `json:"states"`
	// RxBytes are payload bytes received by all devices so far.
	RxBytes int64 `json:"rx_bytes"`
	// Busy counts devices mid-update (neither idle nor in a final state).
	Busy int `json:"busy"`
	// Unfinished counts devices not in a final state, or down; Examples
	// names at most 10 of them, "ID (state)" or "ID (state: why down)".
	Unfinished int      `json:"unfinished"`
	Examples   []string `json:"examples,omitempty"`
	// Failed, when set, says why a share of the fleet stopped (Procs): its
	// devices are gone and the tally no longer counts them as they are.
	Failed string `json:"failed,omitempty"`
}

// Add adds u's counts to t.
func (t *Tally) Add(u Tally) {
	t.Devices += u.Devices
	if t.States == nil {
		t.States = map[string]int{}
	}
	for k, v := range u.States {
		t.States[k] += v
	}
	t.RxBytes += u.RxBytes
	t.Busy += u.Busy
	t.Unfinished += u.Unfinished
	for _, e := range u.Examples {
		if len(t.Examples) < maxExamples {
			t.Examples = append(t.Examples, e)
		}
	}
	if u.Failed != "" {
		if t.Failed != "" {
			t.Failed += "; "
		}
		t.Failed += u.Failed
	}
}

// unfinished says which devices are not finished, for errors.
func (t Tally) unfinished() string {
	if t.Unfinished == 0 {
		return "every device finished"
	}
	more := ""
	if t.Unfinished > len(t.Examples) {
		more = fmt.Sprintf(", and %d more", t.Unfinished-len(t.Examples))
	}
	return fmt.Sprintf("%d devices not finished: %s%s", t.Unfinished, strings.Join(t.Examples, "; "), more)
}

// Tally counts the fleet's devices by state. Safe to call while the
// fleet runs.
func (f *Fleet) Tally() Tally {
	t := Tally{Devices: len(f.Devices), States: map[string]int{}}
	for _, d := range f.Devices {
		s := schemas.State(d.state.Load())
		t.States[s.String()]++
		t.RxBytes += d.rx.Load()
		if busyState(s) {
			t.Busy++
		}
		down := d.Down()
		if final(s) && down == nil {
			continue
		}
		t.Unfinished++
		if len(t.Examples) < maxExamples {
			if down != nil {
				t.Examples = append(t.Examples, fmt.Sprintf("%s (%s: %v)", d.ID, s, down))
			} else {
				t.Examples = append(t.Examples, fmt.Sprintf("%s (%s)", d.ID, s))
			}
		}
	}
	return t
}

// Snapshot counts the devices by their agent's state and sums the bytes
// they received. Safe to call while the fleet runs.
func (f *Fleet) Snapshot() Progress {
	t := f.Tally()
	return Progress{Devices: t.Devices, States: t.States, RxBytes: t.RxBytes}
}

// unfinished names the devices not in a final state (at most 10), with
// their state and, for a device that is down, why.
func (f *Fleet) unfinished() string { return f.Tally().unfinished() }

// Outcome is what a fleet's devices hold after a campaign, read from the
// devices themselves (bootctl status and agent state). The outcomes of
// the shares of one fleet add up (Add).
type Outcome struct {
	Devices     int            `json:"devices"`
	ConfirmedV2 int            `json:"confirmed_v2"`
	ViaDelta    int            `json:"via_delta,omitempty"` // of ConfirmedV2, by a delta
	OnV1        int            `json:"on_v1"`
	RolledBack  int            `json:"rolled_back"`
	Failed      int            `json:"failed"`
	FailedBy    map[string]int `json:"failed_by_reason,omitempty"`
	InProgress  int            `json:"in_progress"`
	NotNotified int            `json:"not_notified"`
	DeviceBytes int64          `json:"device_bytes"`
	// Problems lists the devices that did not end confirmed on v2 (and
	// were notified).
	Problems []DeviceOutcome `json:"problems,omitempty"`
	// LastStaged and LastDone are when the last device held a staged
	// candidate and reached a final state (unix nanoseconds, 0: none).
	LastStaged int64 `json:"last_staged_ns,omitempty"`
	LastDone   int64 `json:"last_done_ns,omitempty"`
	// FirstFlash is the flash file of the fleet's first device.
	FirstFlash string `json:"first_flash,omitempty"`
}

// Add adds u to o. o's FirstFlash stays unless it is empty.
func (o *Outcome) Add(u Outcome) {
	o.Devices += u.Devices
	o.ConfirmedV2 += u.ConfirmedV2
	o.ViaDelta += u.ViaDelta
	o.OnV1 += u.OnV1
	o.RolledBack += u.RolledBack
	o.Failed += u.Failed
	o.InProgress += u.InProgress
	o.NotNotified += u.NotNotified
	o.DeviceBytes += u.DeviceBytes
	if o.FailedBy == nil {
		o.FailedBy = map[string]int{}
	}
	for k, v := range u.FailedBy {
		o.FailedBy[k] += v
	}
	o.Problems = append(o.Problems, u.Problems...)
	sort.Slice(o.Problems, func(i, j int) bool { return o.Problems[i].Device < o.Problems[j].Device })
	o.LastStaged = max(o.LastStaged, u.LastStaged)
	o.LastDone = max(o.LastDone, u.LastDone)
	if o.FirstFlash == "" {
		o.FirstFlash = u.FirstFlash
	}
}

// Outcome reads every device's image and final state; call it after
// Stop. v1 is the factory image. The error is always nil.
func (f *Fleet) Outcome(v2 [32]byte) (Outcome, error) {
	return f.outcome(f.fdigest, v2), nil
}

func (f *Fleet) outcome(d1, d2 [32]byte) Outcome {
	o := Outcome{Devices: len(f.Devices), FailedBy: map[string]int{}}
	if len(f.Devices) > 0 {
		o.FirstFlash = f.Devices[0].FlashPath()
	}
	for _, d := range f.Devices {
		o.DeviceBytes += d.rx.Load()
		o.LastStaged = max(o.LastStaged, d.staged.Load())
		o.LastDone = max(o.LastDone, d.done.Load())
		bs, err := d.boot.Status()
		running := "?"
		if err == nil && bs.Active.Valid {
			switch [32]byte(bs.Active.Digest) {
			case d1:
				running = "v1"
			case d2:
				running = "v2"
			}
		}
		rec := d.agent.State()
		switch {
		case running == "v2" && err == nil && !bs.Trial:
			o.ConfirmedV2++
			if len(rec.Delta) > 0 {
				o.ViaDelta++
			}
			continue
		case running == "v1":
			o.OnV1++
		}
		do := DeviceOutcome{Device: d.ID, State: rec.State.String(), Running: running, Planned: d.FailHealth}
		if rec.Code != schemas.CodeNone {
			do.Code = rec.Code.String()
		}
		do.Reason = rec.Text
		switch rec.State {
		case schemas.StateRolledBack:
			o.RolledBack++
			o.FailedBy[do.Code]++
		case schemas.StateFailed:
			o.Failed++
			o.FailedBy[do.Code]++
		case schemas.StateIdle:
			o.NotNotified++
			continue
		default:
			o.InProgress++
		}
		o.Problems = append(o.Problems, do)
	}
	sort.Slice(o.Problems, func(i, j int) bool { return o.Problems[i].Device < o.Problems[j].Device })
	return o
}

// apply fills the device-side fields of s from o; t1 is when the
// campaign started.
func (s *Summary) apply(o Outcome, t1 time.Time) {
	s.ConfirmedV2, s.OnV1, s.RolledBack, s.Failed = o.ConfirmedV2, o.OnV1, o.RolledBack, o.Failed
	s.ViaDelta = o.ViaDelta
	s.InProgress, s.NotNotified, s.DeviceBytes = o.InProgress, o.NotNotified, o.DeviceBytes
	s.FailedBy, s.Problems = o.FailedBy, o.Problems
	if s.FailedBy == nil {
		s.FailedBy = map[string]int{}
	}
	if !t1.IsZero() {
		if o.LastStaged != 0 {
			s.StagedSeconds = max(s.StagedSeconds, time.Unix(0, o.LastStaged).Sub(t1).Seconds())
		}
		if o.LastDone != 0 {
			s.DoneSeconds = max(s.DoneSeconds, time.Unix(0, o.LastDone).Sub(t1).Seconds())
		}
	}
	s.Outcome = s.CampaignState
}

// fill fills s from the fleet's devices (v1 of digest d1, v2 of d2).
func (s *Summary) fill(fl *Fleet, d1, d2 [32]byte) {
	s.apply(fl.outcome(d1, d2), time.Time{})
}
