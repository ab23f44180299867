package deviceagent

import (
	"context"
	"fmt"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Stage is an upgradable boot stage of the device (the seed's
// multi-stage boot: a boot selector, then a bootloader, then the
// application): a bootctl device of its own, with its own slots, status
// and versions, selected and rolled back by the stage before it.
type Stage struct {
	// Component is the SUIT component name a manifest updates this stage
	// with (`firmcast manifest create --component bootloader`, a
	// campaign's component). Required, unique, not empty.
	Component string
	// Boot is the stage's bootloader view. Required.
	Boot *bootctl.Device
}

// newChain checks cfg.Stages and returns the boot chain of the stages and
// the application (nil without stages).
func newChain(cfg Config) (*bootctl.Chain, error) {
	if len(cfg.Stages) == 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	var devs []*bootctl.Device
	for i, s := range cfg.Stages {
		switch {
		case s.Component == "" || seen[s.Component]:
			return nil, fmt.Errorf("%w: stage %d: component name empty or repeated", ErrConfig, i)
		case s.Boot == nil || s.Boot == cfg.Boot:
			return nil, fmt.Errorf("%w: stage %s: no bootctl device of its own", ErrConfig, s.Component)
		}
		seen[s.Component] = true
		devs = append(devs, s.Boot)
	}
	c, err := bootctl.NewChain(append(devs, cfg.Boot)...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return c, nil
}

// stage returns the index in Config.Stages of the stage named component,
// or -1 (the application).
func (a *Agent) stage(component string) int {
	for i, s := range a.cfg.Stages {
		if component != "" && s.Component == component {
			return i
		}
	}
	return -1
}

// dev is the bootctl device the update in progress installs into: the
// stage its manifest's component names, or the application's.
func (a *Agent) dev() *bootctl.Device {
	a.mu.Lock()
	c := a.st.Component
	a.mu.Unlock()
	if i := a.stage(c); i >= 0 {
		return a.cfg.Stages[i].Boot
	}
	return a.cfg.Boot
}

// targetActive is the running image of the update's stage (the
// application's when it updates the application).
func (a *Agent) targetActive() bootctl.ImageInfo {
	a.mu.Lock()
	c := a.st.Component
	active := a.active
	a.mu.Unlock()
	if i := a.stage(c); i >= 0 {
		st, err := a.cfg.Stages[i].Boot.Status()
		if err != nil {
			return bootctl.ImageInfo{Error: err.Error()}
		}
		return st.Active
	}
	return active
}

// bootAll reboots the device: the whole chain of stages when it has
// some (each stage selects the next, reverting a trial that ran out,
// depth first), else the application's bootloader. It returns the
// decision for the update's stage.
func (a *Agent) bootAll(ctx context.Context) (bootctl.Decision, error) {
	if g := a.cfg.BootGate; g != nil {
		release, err := g(ctx)
		if err != nil {
			return bootctl.Decision{Slot: -1}, err
		}
		defer release()
	}
	if a.chain == nil {
		return a.cfg.Boot.Boot(ctx)
	}
	decs, err := a.chain.Boot(ctx)
	a.mu.Lock()
	i := a.stage(a.st.Component)
	a.mu.Unlock()
	if i < 0 {
		i = len(a.cfg.Stages) // the application, last
	}
	if i < len(decs) {
		return decs[i], err
	}
	return bootctl.Decision{Slot: -1}, err
}

// selectStage records which stage a verified manifest updates, from its
// (single) component: a stage of Config.Stages by name, else the
// application. A manifest of several components is not supported.
func (a *Agent) selectStage(m *suit.Manifest) error {
	if len(m.Components) != 1 {
		return permanent(schemas.CodeUnsupported, fmt.Errorf("manifest of %d components (this agent installs one per update)", len(m.Components)))
	}
	name := ""
	if id := m.Components[0]; len(id) == 1 {
		name = string(id[0])
	}
	if a.stage(name) < 0 {
		name = ""
	}
	a.mu.Lock()
	a.st.Component = name
	a.mu.Unlock()
	return nil
}
