package bootctl

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// powerScenario is a flash state just before the boot under test, and
// what that boot must end in.
type powerScenario struct {
	name       string
	trialBoots int
	// setup returns the flash before the boot under test.
	setup func(t *testing.T, r rig) *Flash
	// old and want are the versions before and after the operation.
	old, want uint64
	// action is what the clean boot does.
	action Action
	// confirm makes the simulated agent confirm trial images.
	confirm bool
}

func powerScenarios() []powerScenario {
	return []powerScenario{
		{
			name: "install", trialBoots: 3, old: 1, want: 2, action: ActionInstalled, confirm: true,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				stage(t, r.open(t, f), 2, 2)
				return f
			},
		},
		{
			// An encrypted slot: the install decrypts as it copies.
			name: "install-encrypted", trialBoots: 3, old: 1, want: 2, action: ActionInstalled, confirm: true,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				stageEncrypted(t, r.open(t, f), 2, 2)
				return f
			},
		},
		{
			// Revert to a previous image kept encrypted in its slot.
			name: "revert-encrypted", trialBoots: 1, old: 3, want: 2, action: ActionReverted,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				d := r.open(t, f)
				stageEncrypted(t, d, 2, 2)
				mustBoot(t, d)
				if err := d.Confirm(); err != nil {
					t.Fatal(err)
				}
				stageEncrypted(t, d, 3, 3)
				if dec := mustBoot(t, d); dec.Action != ActionInstalled || dec.Version != 3 {
					t.Fatalf("setup: %+v", dec)
				}
				return f
			},
		},
		{
			// An authentic encrypted slot whose key does not decrypt it to
			// the signed plaintext: the install drops it and recovers v1.
			name: "install-undecryptable", trialBoots: 3, old: 1, want: 1, action: ActionRecovered,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				stageUndecryptable(t, r.open(t, f), 0, 2)
				return f
			},
		},
		{
			name: "revert", trialBoots: 1, old: 2, want: 1, action: ActionReverted,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				d := r.open(t, f)
				stage(t, d, 2, 2)
				if dec := mustBoot(t, d); dec.Action != ActionInstalled {
					t.Fatalf("setup: %+v", dec)
				}
				return f
			},
		},
		{
			name: "recover", trialBoots: 3, old: 2, want: 2, action: ActionRecovered, confirm: true,
			setup: func(t *testing.T, r rig) *Flash {
				f := r.factory(t, 1, 1)
				d := r.open(t, f)
				stage(t, d, 2, 2)
				mustBoot(t, d)
				if err := d.Confirm(); err != nil {
					t.Fatal(err)
				}
				// Damage the active image: the floor (2) forbids v1.
				if err := f.FlipBit(d.imageOff(r.l.Active)+1000, 3); err != nil {
					t.Fatal(err)
				}
				return f
			},
		},
	}
}

// TestPowerCutExhaustive cuts power at every flash operation of an
// install, a revert and a recovery (plain cut, torn program, interrupted
// erase), reboots, and checks that the device boots a valid image, old or
// new, at once reaches a stable state, and finishes the operation.
func TestPowerCutExhaustive(t *testing.T) {
	for _, align := range []int{1, 4, 16} {
		for _, sc := range powerScenarios() {
			t.Run(fmt.Sprintf("%s/align%d", sc.name, align), func(t *testing.T) {
				r := newRig(align, 2, WithTrialBoots(sc.trialBoots))
				if n := (rigImageSize + r.g.SectorSize - 1) / r.g.SectorSize; n < 8 {
					t.Fatalf("image spans %d sectors, want >= 8", n)
				}
				snap := snapshot(sc.setup(t, r))

				// The clean run gives the number of operations.
				f := clone(r.g, snap)
				dec := mustBoot(t, r.open(t, f))
				if dec.Action != sc.action || dec.Version != sc.want {
					t.Fatalf("clean boot: %+v, want %s of v%d", dec, sc.action, sc.want)
				}
				ops := dec.Ops

				runs := map[FaultKind]int{}
				outcomes := map[string]int{}
				for k := uint64(0); k < ops; k++ {
					for _, kind := range []FaultKind{FaultCut, FaultTorn, FaultInterruptErase} {
						f := clone(r.g, snap)
						f.Arm(Fault{After: k, Kind: kind})
						_, err := r.open(t, f).Boot(context.Background())
						if !errors.Is(err, ErrPowerLost) {
							t.Fatalf("op %d %s: boot returned %v, want a power loss", k, kind, err)
						}
						if (kind == FaultTorn && f.lastHit != "program") || (kind == FaultInterruptErase && f.lastHit != "erase") {
							continue // same as a plain cut
						}
						runs[kind]++
						f.PowerOn()
						outcomes[afterCut(t, r, f, sc, fmt.Sprintf("op %d %s", k, kind))]++
					}
				}
				t.Logf("%s align %d: clean run %d ops; tried %d cuts, %d torn programs, %d interrupted erases; first boot after the cut: %s",
					sc.name, align, ops, runs[FaultCut], runs[FaultTorn], runs[FaultInterruptErase], fmtCounts(outcomes))
			})
		}
	}
}

// afterCut reboots a flash after a cut and checks the invariants. It
// returns the first boot's outcome.
func afterCut(t *testing.T, r rig, f *Flash, sc powerScenario, what string) string {
	t.Helper()
	d := r.open(t, f)
	dec, err := d.Boot(context.Background())
	if err != nil {
		t.Fatalf("%s: first boot after the cut: %v", what, err)
	}
	if !dec.Booted || (dec.Version != sc.old && dec.Version != sc.want) {
		t.Fatalf("%s: first boot after the cut: %+v, want v%d or v%d", what, dec, sc.old, sc.want)
	}
	if err := r.checkActive(f, dec.Version); err != nil {
		t.Fatalf("%s: booted v%d: %v", what, dec.Version, err)
	}
	// No boot loop: the next boot keeps the same image and does nothing.
	dec2 := mustBoot(t, d)
	if dec2.Action != ActionNone || dec2.Version != dec.Version {
		t.Fatalf("%s: second boot %+v after %+v: not stable", what, dec2, dec)
	}
	if dec.Version != sc.want {
		t.Fatalf("%s: operation did not complete: v%d running, want v%d", what, dec.Version, sc.want)
	}
	return fmt.Sprintf("%s v%d", dec.Action, dec.Version)
}

// TestPowerCutRandomSequences applies 5 random faults in a row (each
// during a boot or the agent's confirm), then lets the device run.
func TestPowerCutRandomSequences(t *testing.T) {
	const seeds = 40
	for _, align := range []int{1, 4, 16} {
		for _, sc := range powerScenarios() {
			t.Run(fmt.Sprintf("%s/align%d", sc.name, align), func(t *testing.T) {
				k := sc.trialBoots
				if sc.confirm {
					k = 8 // cuts landing in Confirm must not expire the trial
				}
				r := newRig(align, 2, WithTrialBoots(k))
				snap := snapshot(sc.setup(t, r))
				hit, settled := 0, 0
				for seed := range uint64(seeds) {
					rng := rand.New(rand.NewPCG(seed, uint64(align)))
					f := clone(r.g, snap)
					for c := range 5 {
						// A dry run on a copy counts this cycle's operations,
						// so the cut always lands inside the cycle.
						n := cycleOps(t, r, clone(r.g, snapshot(f)), sc.confirm)
						if n == 0 {
							settled++
							break
						}
						f.Arm(Fault{After: rng.Uint64N(n), Kind: FaultKind(rng.IntN(3))})
						d := r.open(t, f)
						dec, err := d.Boot(context.Background())
						switch {
						case err == nil:
							if dec.Version != sc.old && dec.Version != sc.want {
								t.Fatalf("seed %d cut %d: booted v%d", seed, c, dec.Version)
							}
							if err := r.checkActive(f, dec.Version); err != nil {
								t.Fatalf("seed %d cut %d: %v", seed, c, err)
							}
							if sc.confirm && dec.Trial {
								err = d.Confirm()
							}
						case !errors.Is(err, ErrPowerLost):
							t.Fatalf("seed %d cut %d: %v", seed, c, err)
						}
						if err != nil && !errors.Is(err, ErrPowerLost) {
							t.Fatalf("seed %d cut %d: confirm: %v", seed, c, err)
						}
						if f.PoweredOff() {
							hit++
						}
						f.PowerOn()
					}
					// Power stays on now: the device must settle on the new state.
					d := r.open(t, f)
					dec := mustBoot(t, d)
					if sc.confirm && dec.Trial {
						if err := d.Confirm(); err != nil {
							t.Fatal(err)
						}
					}
					dec = mustBoot(t, d)
					if dec.Version != sc.want || dec.Action != ActionNone || (sc.confirm && dec.Trial) {
						t.Fatalf("seed %d: settled on %+v, want v%d", seed, dec, sc.want)
					}
					if err := r.checkActive(f, dec.Version); err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
				}
				if hit < seeds*3 {
					t.Fatalf("only %d faults hit an operation", hit)
				}
				t.Logf("%s align %d: %d sequences of up to 5 random faults: %d faults injected (%d sequences ran out of operations early); all settled on v%d",
					sc.name, align, seeds, hit, settled, sc.want)
			})
		}
	}
}

func fmtCounts(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// cycleOps runs one power cycle (boot, and confirm if asked) without
// faults and returns its flash operations.
func cycleOps(t *testing.T, r rig, f *Flash, confirm bool) uint64 {
	t.Helper()
	d := r.open(t, f)
	dec := mustBoot(t, d)
	if confirm && dec.Trial {
		if err := d.Confirm(); err != nil {
			t.Fatal(err)
		}
	}
	return f.Stats().Ops()
}

// TestPowerCutWhileStaging cuts power at every operation of the agent
// staging a candidate (open, chunked writes, commit), plain and into an
// encrypted slot: the device keeps booting v1, and a later complete
// staging installs v2.
func TestPowerCutWhileStaging(t *testing.T) {
	for _, sc := range []struct {
		align     int
		encrypted bool
	}{{1, false}, {4, false}, {16, false}, {1, true}, {16, true}} {
		align := sc.align
		r := newRig(align, 2)
		snap := snapshot(r.factory(t, 1, 1))
		img, info := testImage(2), infoFor(2, 1)
		if sc.encrypted {
			img, info.Encryption = encFor(t, 2)
		}
		stageChunks := func(d *Device) error {
			ctx := context.Background()
			c, err := d.OpenCandidate(ctx, 0, uint64(len(img)))
			if err != nil {
				return err
			}
			for off := len(img) / 512 * 512; off >= 0; off -= 512 { // backwards
				if _, err := c.WriteAt(img[off:min(off+512, len(img))], int64(off)); err != nil {
					return err
				}
			}
			return c.Commit(ctx, info)
		}
		f := clone(r.g, snap)
		if err := stageChunks(r.open(t, f)); err != nil {
			t.Fatal(err)
		}
		ops := f.Stats().Ops()
		runs := 0
		for k := uint64(0); k < ops; k++ {
			for _, kind := range []FaultKind{FaultCut, FaultTorn, FaultInterruptErase} {
				f := clone(r.g, snap)
				f.Arm(Fault{After: k, Kind: kind})
				if err := stageChunks(r.open(t, f)); !errors.Is(err, ErrPowerLost) {
					t.Fatalf("op %d %s: %v", k, kind, err)
				}
				if (kind == FaultTorn && f.lastHit != "program") || (kind == FaultInterruptErase && f.lastHit != "erase") {
					continue
				}
				runs++
				f.PowerOn()
				d := r.open(t, f)
				if dec := mustBoot(t, d); dec.Version != 1 || dec.Action != ActionNone {
					t.Fatalf("op %d %s: %+v", k, kind, dec)
				}
				if err := stageChunks(d); err != nil {
					t.Fatalf("op %d %s: staging again: %v", k, kind, err)
				}
				if dec := mustBoot(t, d); dec.Version != 2 || dec.Action != ActionInstalled {
					t.Fatalf("op %d %s: after staging again: %+v", k, kind, dec)
				}
			}
		}
		t.Logf("staging align %d encrypted %v: %d operations, %d faults tried; every one left v1 booting and v2 installable", align, sc.encrypted, ops, runs)
	}
}
