package deviceagent

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// heldChunks reads the candidate slot recorded in the device's state and
// returns the chunks of img it holds intact.
func (d *device) heldChunks(img []byte) map[uint32]bool {
	t := d.w.t
	t.Helper()
	st, err := LoadState(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]bool{}
	if st.Slot < 0 || !st.SlotOpen {
		return out
	}
	r := testLayout.Slots[st.Slot]
	base := int64(r.Start+testLayout.HeaderSectors) * int64(testGeom.SectorSize)
	buf := make([]byte, testChunk)
	for off := 0; off < len(img); off += testChunk {
		n := min(testChunk, len(img)-off)
		if _, err := d.flash.ReadAt(buf[:n], base+int64(off)); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(buf[:n], img[off:off+n]) {
			out[uint32(off/testChunk)] = true
		}
	}
	return out
}

// TestResumeAfterKill kills the agent right after it persists each state
// (before the state's effect) and at chunk positions of the download, then
// restarts it from the same flash and state directory: it finishes on the
// new version without fetching any chunk it already held again, counted
// at the chunk server.
func TestResumeAfterKill(t *testing.T) {
	v2 := testImage(3, 40*testChunk+100)
	nChunks := (len(v2) + testChunk - 1) / testChunk
	type killAt struct {
		name  string
		state schemas.State
		chunk int // -1: kill on state
	}
	var cases []killAt
	for _, s := range []schemas.State{schemas.StateNotified, schemas.StateManifestVerified, schemas.StateDownloading,
		schemas.StateCandidateVerified, schemas.StateStaged, schemas.StateRebooting, schemas.StateTrial, schemas.StateConfirmed} {
		cases = append(cases, killAt{name: "state-" + s.String(), state: s, chunk: -1})
	}
	r := rand.New(rand.NewPCG(5, 5))
	for _, c := range []int{0, 1, nChunks - 1, 1 + r.IntN(nChunks-2), 1 + r.IntN(nChunks-2), 1 + r.IntN(nChunks-2)} {
		cases = append(cases, killAt{name: fmt.Sprintf("chunk-%02d", c), chunk: c})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resumeCase(t, memWorld(t), v2, tc.state, tc.chunk)
		})
	}
}

// TestResumeOverBroker runs kills at chunk positions and in trial over the
// embedded MQTT v5 broker and nats-server.
func TestResumeOverBroker(t *testing.T) {
	v2 := testImage(8, 30*testChunk+9)
	for _, b := range []string{"mochi", "nats"} {
		for _, k := range []struct {
			name  string
			state schemas.State
			chunk int
		}{{"chunk-11", 0, 11}, {"state-trial", schemas.StateTrial, -1}} {
			t.Run(b+"/"+k.name, func(t *testing.T) {
				resumeCase(t, brokerWorld(t, b), v2, k.state, k.chunk)
			})
		}
	}
}

// resumeCase kills the agent at state (chunk < 0) or once chunk chunks
// are verified, restarts it, and checks that it completes without
// fetching a chunk it held again.
func resumeCase(t *testing.T, w *world, v2 []byte, state schemas.State, chunk int) {
	nChunks := uint32((len(v2) + testChunk - 1) / testChunk)
	d := w.newDevice("dev-r", nil)
	var once sync.Once
	kill := func() { once.Do(func() { d.cancel() }) }
	cs := w.serve(v2, nil)
	if chunk >= 0 {
		d.tune = func(c *Config) {
			c.OnProgress = func(done, total uint64) {
				if done >= uint64(chunk)*testChunk {
					kill()
				}
			}
		}
	} else {
		d.tune = func(c *Config) {
			c.OnState = func(r Record) {
				if r.State == state {
					kill()
				}
			}
		}
	}
	d.start()
	w.notice("camp-r", "dev-r", false, v2, w.envelope(v2, 2, nil, nil))
	select {
	case <-d.done:
		d.done <- nil // let stop() see it
	case <-time.After(20 * time.Second):
		t.Fatal("agent was not killed")
	}
	d.stop()
	held := d.heldChunks(v2)
	before := cs.Served()
	t.Logf("killed: %d chunks held in the slot, %d served so far", len(held), len(before))
	d.tune = nil
	d.start()
	w.waitReport("dev-r", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	d.stop()
	after := cs.Served()
	for i := uint32(0); i < nChunks; i++ {
		if held[i] && after[i] != before[i] {
			t.Errorf("chunk %d was held at the kill but served again (%d -> %d)", i, before[i], after[i])
		}
		if after[i] == 0 {
			t.Errorf("chunk %d never served", i)
		}
	}
	if a := d.active(); a.Version != 2 {
		t.Errorf("active version %d, want 2", a.Version)
	}
	for _, r := range w.reportsOf("dev-r") {
		if r.State == schemas.StateFailed {
			t.Errorf("failed report: %s %s", r.Code, r.Text)
		}
	}
}
