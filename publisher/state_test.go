package publisher

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// allAgentStates returns every schemas.State, in order.
func allAgentStates() []schemas.State {
	var out []schemas.State
	for s := schemas.State(0); ; s++ {
		if _, ok := schemas.ParseState(s.String()); !ok {
			return out
		}
		out = append(out, s)
	}
}

// allDevStates returns every DevState: the agent's, then the publisher's.
func allDevStates() []DevState {
	var out []DevState
	for _, s := range allAgentStates() {
		out = append(out, DevState(s))
	}
	return append(out, StateQueued, StateTimedOut)
}

// TestJudgeEveryPair pins judge for every stored state and every reported
// state: a renamed or added state fails here rather than silently moving
// a counter. Columns are the reported states in schemas order (idle,
// notified, manifest-verified, downloading, candidate-verified, staged,
// rebooting, trial, confirmed, rolled-back, failed, deferred, skipped);
// a = applied, x = impossible, n = not-notified, f = final, r = repeated.
func TestJudgeEveryPair(t *testing.T) {
	grid := map[string]string{
		"idle":               "xxxxxxxxaaaxa",
		"notified":           "xaaaaaaaaaaaa",
		"manifest-verified":  "xxaaaaaaaaaaa",
		"downloading":        "xxxaaaaaaaaaa",
		"candidate-verified": "xxxxaaaaaaaxa",
		"staged":             "xxxxxaaaaaaxa",
		"rebooting":          "xxxxxxaaaaaxa",
		"trial":              "xxxxxxxaaaaxa",
		"confirmed":          "xxxxxxxxrxxxx",
		"rolled-back":        "xxxxxxxxxrxxx",
		"failed":             "xxxxxxxxxarxx",
		"deferred":           "xaaaaaaaaaaaa",
		"skipped":            "xxxxxxxxxxxxr",
		"queued":             "nnnnnnnnnnnnn",
		"timed-out":          "xfffffffaaafa",
	}
	code := map[reportResult]byte{resApplied: 'a', resImpossible: 'x', resNotNotified: 'n', resFinal: 'f', resRepeated: 'r'}
	next := allAgentStates()
	if len(grid) != len(allDevStates()) {
		t.Fatalf("grid has %d rows, there are %d device states", len(grid), len(allDevStates()))
	}
	for _, cur := range allDevStates() {
		row, ok := grid[cur.String()]
		if !ok || len(row) != len(next) {
			t.Fatalf("no row of %d columns for %s", len(next), cur)
		}
		for i, n := range next {
			got := judge(cur, n)
			if c, ok := code[got]; !ok || c != row[i] {
				t.Errorf("judge(%s -> %s) = %q, want %c", cur, n, got, row[i])
			}
		}
	}
}

// TestDevStates: every device state has a distinct name that parses back
// and survives JSON (the stored form), falls in one of the counters
// Status.Counts shows, and is classified once.
func TestDevStates(t *testing.T) {
	buckets := map[DevState]string{
		DevState(schemas.StateIdle): "pending", DevState(schemas.StateNotified): "pending",
		DevState(schemas.StateManifestVerified): "downloading", DevState(schemas.StateDownloading): "downloading",
		DevState(schemas.StateCandidateVerified): "staged", DevState(schemas.StateStaged): "staged",
		DevState(schemas.StateRebooting): "staged", DevState(schemas.StateTrial): "staged",
		DevState(schemas.StateConfirmed): "confirmed", DevState(schemas.StateRolledBack): "rolled-back",
		DevState(schemas.StateFailed): "failed", DevState(schemas.StateDeferred): "deferred",
		DevState(schemas.StateSkipped): "skipped", StateQueued: "queued", StateTimedOut: "failed",
	}
	names := map[string]bool{}
	for _, d := range allDevStates() {
		name := d.String()
		if names[name] || strings.HasPrefix(name, "state(") || strings.HasPrefix(name, "devstate(") {
			t.Errorf("state %d: name %q is not a distinct name", uint8(d), name)
		}
		names[name] = true
		if got, ok := ParseDevState(name); !ok || got != d {
			t.Errorf("ParseDevState(%q) = %d, %v; want %d", name, got, ok, d)
		}
		b, err := json.Marshal(DeviceState{State: d})
		var back DeviceState
		if err != nil || json.Unmarshal(b, &back) != nil || back.State != d || !strings.Contains(string(b), `"state":"`+name+`"`) {
			t.Errorf("%s: JSON %s (%v) came back as %s", d, b, err, back.State)
		}
		if want, ok := buckets[d]; !ok || bucket(d) != want {
			t.Errorf("bucket(%s) = %q, want %q", d, bucket(d), want)
		}
		s, agent := d.agent()
		wantTerminal := d == StateTimedOut || agent && outcome(s)
		if terminal(d) != wantTerminal {
			t.Errorf("terminal(%s) = %v", d, terminal(d))
		}
		if active(d) != (bucket(d) == "pending" || bucket(d) == "downloading") {
			t.Errorf("active(%s) = %v", d, active(d))
		}
	}
	if len(buckets) != len(allDevStates()) {
		t.Errorf("%d buckets listed for %d states", len(buckets), len(allDevStates()))
	}
	var d DevState
	if err := json.Unmarshal([]byte(`"no-such-state"`), &d); err == nil {
		t.Error("unknown state name decoded")
	}
	if _, err := json.Marshal(DevState(200)); err == nil {
		t.Error("unknown state encoded")
	}
}
