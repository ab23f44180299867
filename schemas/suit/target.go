package suit

import (
	"context"
	"io"
)

// Target is the device a Processor runs a manifest against: the device
// agent's slots, sources and boot hand-off. The Processor does every
// security-relevant comparison itself (identifiers, digests, sizes, expiry,
// rollback); a Target only reports facts and moves bytes.
//
// Component indexes are positions in the manifest's component list; the
// Target maps them to its storage (the agent: its staging slot). Methods
// are called from the goroutine running the Processor, one at a time.
type Target interface {
	// Identity returns the device's identifiers, compared by the
	// vendor-, class- and device-identifier conditions.
	Identity(ctx context.Context) (Identity, error)
	// Fetch opens the payload for component idx named by p.URI (nil URI:
	// the Target's default source, e.g. firmcast's chunk broadcast). The
	// Processor reads it to EOF, bounded by p.ImageSize, into Write.
	Fetch(ctx context.Context, idx int, p *Params) (io.ReadCloser, error)
	// Open opens the current content of component idx for reading (the
	// source of a copy, and image-match / check-content). The Processor
	// reads at most the image size.
	Open(ctx context.Context, idx int) (io.ReadCloser, error)
	// Write starts replacing the content of component idx. The Processor
	// writes the new content then calls Commit, or Abort on any failure;
	// content must not become the component's before Commit.
	Write(ctx context.Context, idx int, p *Params) (ComponentWriter, error)
	// Invoke hands control to component idx (directive-invoke), with
	// p.InvokeArgs. On a device it may not return.
	Invoke(ctx context.Context, idx int, p *Params) error
}

// ComponentWriter receives new component content (see Target.Write).
type ComponentWriter interface {
	io.Writer
	// Commit makes the written bytes the component's content.
	Commit() error
	// Abort discards them. It is safe to call after a failed Commit.
	Abort() error
}

// Identity holds the identifiers of a device. Class may hold several
// classes (a device matches a manifest for any of them).
type Identity struct {
	VendorID []byte
	ClassIDs [][]byte
	DeviceID []byte
}

// ImageMatcher is optionally implemented by a Target that can check a
// component's digest itself (a bootloader with a cached, already verified
// digest). When implemented, image-match uses it instead of reading the
// component through Open.
type ImageMatcher interface {
	MatchImage(ctx context.Context, idx int, d Digest, size *uint64) (bool, error)
}

// SlotReporter is optionally implemented by a Target that has component
// slots, for condition-component-slot.
type SlotReporter interface {
	Slot(ctx context.Context, idx int) (uint64, error)
}

// Extension is optionally implemented by a Target to run commands the
// Processor does not implement itself: swap, wait, minimum-battery,
// update-authorized, version, and custom (negative) commands. It returns
// an error wrapping ErrUnknownCommand to decline, ErrConditionFailed when a
// condition does not hold.
type Extension interface {
	Command(ctx context.Context, idx int, c Command, p *Params) error
}
