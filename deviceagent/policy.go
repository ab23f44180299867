package deviceagent

import (
	"context"
	"fmt"
	"time"
)

// Update describes a pending update to a policy hook.
type Update struct {
	Campaign string
	Seq      uint64
	Size     uint64
	// Phase is "download" or "install".
	Phase string
}

// Window is a daily maintenance window [Start, End) in the clock's
// location, as offsets from midnight; End < Start wraps past midnight.
type Window struct {
	Start, End time.Duration
}

// Contains reports whether t falls inside the window.
func (w Window) Contains(t time.Time) bool {
	y, m, d := t.Date()
	off := t.Sub(time.Date(y, m, d, 0, 0, 0, 0, t.Location()))
	if w.Start <= w.End {
		return off >= w.Start && off < w.End
	}
	return off >= w.Start || off < w.End
}

// Policy is the device's download and install authorization, like the
// seed's update client: limits that defer an update (reported as deferred
// with the reason) until they allow it.
type Policy struct {
	// MaxMeteredBytes limits downloads from priced (metered) sources to
	// images of at most this size; larger ones wait for a free source.
	// 0 = no limit.
	MaxMeteredBytes uint64
	// FreeSourceOnly defers the download until a source with price 0 can
	// serve the image.
	FreeSourceOnly bool
	// Window, when set, allows installs (the reboot into the new image)
	// only inside this daily maintenance window.
	Window *Window
	// Consent, when set, is asked before download and before install; it
	// returns nil to allow or an error whose text is the deferral reason.
	Consent func(ctx context.Context, u Update) error
	// Recheck is how often a deferred update is reconsidered. Default 1m.
	Recheck time.Duration
}

func (p Policy) consent(ctx context.Context, u Update) error {
	if p.Consent == nil {
		return nil
	}
	if err := p.Consent(ctx, u); err != nil {
		return fmt.Errorf("%w: application declined %s: %v", ErrDeferred, u.Phase, err)
	}
	return nil
}

// installAllowed checks the maintenance window and consent.
func (p Policy) installAllowed(ctx context.Context, now time.Time, u Update) error {
	if p.Window != nil && !p.Window.Contains(now) {
		return fmt.Errorf("%w: outside the maintenance window %v-%v", ErrDeferred, p.Window.Start, p.Window.End)
	}
	return p.consent(ctx, u)
}
