package bootctl

import (
	"context"
	"errors"
	"fmt"
)

// Chain is a multi-stage boot sequence, as the seed describes: a boot
// selector (stage 0: the code calling Chain.Boot, never replaced) and
// upgradable stages after it, typically a bootloader then the
// application. Each stage is a Device with its own regions (they may
// share one Flash) and its own stored versions; each stage selects and
// can roll back the next one.
//
// Successive faults walk the tree of stored versions depth first: a trial
// image of a later stage is reverted first (give it a smaller K); a stage
// whose trial runs out is reverted by the stage before it, and then the
// later stages are selected again under the restored one. A stage whose
// next stage has nothing bootable is abandoned at once if it is in trial.
//
// A Chain is NOT safe for concurrent use.
type Chain struct {
	stages []*Device
}

// NewChain returns a chain of stages in boot order (stage 1 first). It
// returns ErrInvalidOption if there are none.
func NewChain(stages ...*Device) (*Chain, error) {
	if len(stages) == 0 {
		return nil, fmt.Errorf("%w: a chain needs at least one stage", ErrInvalidOption)
	}
	return &Chain{stages: stages}, nil
}

// Boot runs every stage's boot selection in order and returns their
// decisions. If a stage has nothing to boot and the stage before it runs
// a trial image, that trial is abandoned and the chain restarts from
// stage 1 (bounded by the number of stored versions). Errors are those of
// Device.Boot, with the decisions made so far.
func (c *Chain) Boot(ctx context.Context) ([]Decision, error) {
	limit := 1
	for _, d := range c.stages {
		limit += len(d.l.Slots) + 1
	}
restart:
	for range limit {
		var decs []Decision
		for i, d := range c.stages {
			dec, err := d.Boot(ctx)
			decs = append(decs, dec)
			if errors.Is(err, ErrNoBootableImage) && i > 0 && decs[i-1].Trial {
				if err := c.stages[i-1].Abandon(); err != nil {
					return decs, err
				}
				continue restart
			}
			if err != nil {
				return decs, fmt.Errorf("stage %d: %w", i+1, err)
			}
		}
		return decs, nil
	}
	return nil, fmt.Errorf("%w: chain restarted %d times", ErrNoBootableImage, limit)
}

// Confirm confirms every stage's trial image, last stage first: a whole
// chain that runs is healthy.
func (c *Chain) Confirm() error {
	for i := len(c.stages) - 1; i >= 0; i-- {
		if err := c.stages[i].Confirm(); err != nil {
			return fmt.Errorf("stage %d: %w", i+1, err)
		}
	}
	return nil
}
