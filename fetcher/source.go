package fetcher

import (
	"context"
	"io"

	"github.com/firmcast/firmcast/schemas"
)

// Availability is what a source says it can do for an image.
type Availability uint8

const (
	// CannotServe: the source does not have the image; it is never tried.
	CannotServe Availability = iota
	// CanServe: the source can serve the image at its price.
	CanServe
	// HaveIt: the image is already local (cost 0), like the Pelion source
	// manager's "0 = already have it".
	HaveIt
)

func (a Availability) String() string {
	switch a {
	case CannotServe:
		return "cannot-serve"
	case CanServe:
		return "can-serve"
	case HaveIt:
		return "have-it"
	}
	return "availability(?)"
}

// Deliver is the callback through which a Source hands over one received
// chunk. It verifies the chunk against the chunk table and, if wanted,
// writes it to the sink before it returns; data is not retained after it
// returns, so a source may reuse its buffer. It returns:
//   - nil when the chunk was written, or was not wanted (already held);
//   - an error wrapping ErrBadChunk when the chunk was dropped (the source
//     goes on; the chunk stays wanted);
//   - an error wrapping ErrSink, which the source must return at once.
//
// Deliver must not be called concurrently.
type Deliver func(index int, data []byte) error

// Source is one place an image can be fetched from. Implementations are
// safe for use by one fetch at a time.
type Source interface {
	// Name identifies the source in rankings, logs and reports; it is
	// unique within one Fetcher ("http https://cdn.example/fw.bin").
	Name() string
	// Kind is the source kind: "broker", "objstore", "http" or "file".
	Kind() string
	// Price is the configured price per byte fetched (0 = free, e.g. a
	// LAN or a local file; high for metered cellular).
	Price() float64
	// Probe says whether the source can serve im. It may block on the
	// network until ctx ends.
	Probe(ctx context.Context, im Image) (Availability, error)
	// Table returns the encoded chunk table of im, read with a size bound.
	// The caller authenticates it; Table need not.
	Table(ctx context.Context, im Image) ([]byte, error)
	// Fetch streams the chunks of im in want to deliver, in any order, and
	// returns nil once every chunk in want was delivered without error.
	// It returns the ErrSink error from deliver unchanged, ctx's error when
	// ctx ends, and any other error (wrapping ErrStalled, ErrCannotServe or
	// a transport error) when it cannot go on; chunks delivered before the
	// error are kept by the caller.
	Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error
}

// Repair is what a source that takes erasure-coded repair needs from the
// fetch: the authenticated chunk table, coded (schemas.ChunkTable.Block >
// 0), that parity chunks are checked against, and the slot the verified
// chunks were written to (chunk i at Image.Offset(i)), from which a block
// being rebuilt is read back instead of being held in memory. Scratch,
// when not nil, is where the source keeps the parity chunks it holds
// until their block is rebuilt, instead of memory (Config.ParityInMemory).
type Repair struct {
	Table   *schemas.ChunkTable
	Slot    io.ReaderAt
	Scratch ParityScratch
}

// ParityScratch is storage for the parity chunks a coded fetch holds
// (blockcode.Scratch): a file in the fetch's state directory by default.
type ParityScratch interface {
	io.ReaderAt
	io.WriterAt
}

// RepairSource is a Source that can also rebuild lost chunks from parity
// chunks (internal/blockcode). FetchRepair is Fetch with r: chunks rebuilt
// from parity go through deliver like chunks received, so they are
// verified and written the same way. The fetcher calls it instead of Fetch
// when the image's table is coded and the sink implements io.ReaderAt.
type RepairSource interface {
	Source
	FetchRepair(ctx context.Context, im Image, want Chunks, deliver Deliver, r Repair) error
}

// Sink is where verified chunks are written: the candidate slot. It follows
// the io.WriterAt contract (bootctl's candidate slot writer implements it).
// A Sink may also implement io.ReaderAt (then resume checks chunks already
// written but not yet recorded, and the image digest can be finished by
// reading back) and Syncer (called before progress is persisted, so that
// the bitmap never claims a chunk the sink has not made durable).
type Sink interface {
	io.WriterAt
}

// Syncer is implemented by sinks that buffer writes.
type Syncer interface {
	Sync() error
}
