package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/sethvargo/go-retry"
)

// RetryPolicy is the per-source retry schedule: exponential backoff from
// Base, ±JitterPercent, each wait capped at Cap, at most MaxRetries retries
// before the picker moves on to the next source.
type RetryPolicy struct {
	// Base is the first wait. Default 200ms.
	Base time.Duration
	// Cap bounds each wait. Default 10s.
	Cap time.Duration
	// JitterPercent randomises each wait by ±this percent. Default 20.
	JitterPercent uint64
	// MaxRetries is the number of retries of one source per fetch, after
	// the first attempt. Default 3. Negative means none.
	MaxRetries int
}

// Config configures a Fetcher. It is taken by value.
type Config struct {
	// Sources are the candidate sources; names must be unique. Required.
	Sources []Source
	// StateDir is the directory holding the persisted progress. Required.
	StateDir string
	// PersistEvery is the persistence interval in chunks. Default 256.
	// Chunks written after the last save are not lost on a reset: the
	// resumed fetch finds them intact in the sink (when it implements
	// io.ReaderAt) and does not fetch them again; the interval bounds
	// that scan and the fsync rate.
	PersistEvery int
	// TimeValue is the cost of one second of expected fetch time, in the
	// units of Source.Price per byte. Default 0.001.
	TimeValue float64
	// FailurePenalty is added to a source's cost at each failure, then
	// decays with PenaltyHalfLife. Defaults 1.0 and 5 minutes.
	FailurePenalty  float64
	PenaltyHalfLife time.Duration
	// ProbeTimeout bounds each source's Probe. Default 5s.
	ProbeTimeout time.Duration
	// SkipImageDigest skips the whole-image SHA-256 check at the end. Every
	// chunk is still checked against the authenticated chunk table, which
	// names the image digest; set it only when the sink verifies the whole
	// image itself (as bootctl does when it stages a candidate), to avoid
	// hashing every byte twice. Default false.
	SkipImageDigest bool
	// NoSync writes progress with write and rename but no fsync, and
	// does not sync the sink: for simulators whose devices share one disk
	// and whose power cuts are process kills. Default false.
	NoSync bool
	// ParityInMemory keeps the parity chunks a coded fetch holds (from
	// their arrival to the rebuild of their block) in memory. By default
	// they go to a scratch file in StateDir (parityScratchFile), removed
	// when the fetch ends, and are read back a stripe at a time by the
	// rebuild (blockcode.DecodeMemory): a device then holds no parity in
	// RAM, which is what a device whose RAM is smaller than its flash
	// wants. Should the scratch not open or a write to it fail, the parity
	// is held in memory (and a warning logged).
	ParityInMemory bool
	// Retry is the per-source retry schedule.
	Retry RetryPolicy
	// Picker, when set, is a picker of an earlier Fetcher (Fetcher.Picker)
	// whose measurements and failure penalties carry over; TimeValue,
	// FailurePenalty, PenaltyHalfLife and Clock then come from it.
	Picker *Picker
	// Clock is the time source. Default: the system clock.
	Clock Clock
	// Logger receives decisions and failures. Default: slog.Default().
	Logger *slog.Logger
	// OnDecision, when set, is called with every source decision.
	OnDecision func(Decision)
	// OnProgress, when set, is called after each persisted batch of chunks
	// and at the end, from the fetching goroutine; with ProgressInterval,
	// also on time.
	OnProgress func(Progress)
	// ProgressInterval, when positive, also calls OnProgress (without
	// persisting, with Progress.Timed set) when a chunk is written
	// ProgressInterval or more, on Clock, after the previous timed call
	// (or the start of the fetch), whatever PersistEvery is: a slow
	// download shows it is progressing at least that often while chunks
	// arrive. Default 0: OnProgress follows persistence only.
	ProgressInterval time.Duration
}

// Progress is a snapshot of a running fetch.
type Progress struct {
	// BytesDone of BytesTotal are written and verified.
	BytesDone, BytesTotal uint64
	// Source is the source in use.
	Source string
	Kind   string
	// Timed is set on calls made because Config.ProgressInterval passed,
	// rather than after a persisted batch or at the end.
	Timed bool
}

// Result summarises a completed (or failed) fetch.
type Result struct {
	// Bytes is the number of verified bytes written, per source name.
	Bytes map[string]uint64
	// Resumed is the number of chunks already held when the fetch began
	// (from the persisted bitmap or found intact in the sink).
	Resumed int
	// Recovered is the part of Resumed found intact in the sink but not
	// yet recorded in the bitmap.
	Recovered int
	// BadChunks counts chunks dropped because they did not match the
	// table (persisted across resets).
	BadChunks uint64
	// Decisions lists the picker's decisions, in order.
	Decisions []Decision
	// Source is the source that delivered the last chunk.
	Source string
}

// Fetcher fetches images from ranked sources. Its Picker remembers source
// measurements across fetches. A Fetcher runs one Fetch at a time.
type Fetcher struct {
	cfg    Config
	picker *Picker
	log    *slog.Logger
}

// New checks cfg, applies defaults and returns a Fetcher. Errors wrap
// ErrConfig.
func New(cfg Config) (*Fetcher, error) {
	if len(cfg.Sources) == 0 {
		return nil, fmt.Errorf("%w: no sources", ErrConfig)
	}
	seen := map[string]bool{}
	for _, s := range cfg.Sources {
		if s == nil {
			return nil, fmt.Errorf("%w: nil source", ErrConfig)
		}
		if seen[s.Name()] {
			return nil, fmt.Errorf("%w: duplicate source name %q", ErrConfig, s.Name())
		}
		seen[s.Name()] = true
		if p := s.Price(); p < 0 || math.IsNaN(p) || math.IsInf(p, 0) {
			return nil, fmt.Errorf("%w: source %q has price %v", ErrConfig, s.Name(), p)
		}
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: no state directory", ErrConfig)
	}
	cfg.Sources = append([]Source(nil), cfg.Sources...)
	if cfg.PersistEvery <= 0 {
		cfg.PersistEvery = 256
	}
	if cfg.TimeValue <= 0 {
		cfg.TimeValue = 0.001
	}
	if cfg.FailurePenalty <= 0 {
		cfg.FailurePenalty = 1
	}
	if cfg.PenaltyHalfLife <= 0 {
		cfg.PenaltyHalfLife = 5 * time.Minute
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
	}
	if cfg.Retry.Base <= 0 {
		cfg.Retry.Base = 200 * time.Millisecond
	}
	if cfg.Retry.Cap <= 0 {
		cfg.Retry.Cap = 10 * time.Second
	}
	if cfg.Retry.JitterPercent == 0 {
		cfg.Retry.JitterPercent = 20
	}
	if cfg.Retry.MaxRetries == 0 {
		cfg.Retry.MaxRetries = 3
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: state directory: %v", ErrConfig, err)
	}
	pk := cfg.Picker
	if pk == nil {
		pk = newPicker(cfg.Clock, cfg.TimeValue, cfg.FailurePenalty, cfg.PenaltyHalfLife)
	}
	cfg.Picker = nil
	return &Fetcher{cfg: cfg, picker: pk, log: cfg.Logger.With("component", "fetcher")}, nil
}

// Picker returns the fetcher's picker, to inspect it or to hand it to the
// next Fetcher (Config.Picker).
func (f *Fetcher) Picker() *Picker { return f.picker }

// Fetch fetches im into sink, resuming from the progress persisted in
// Config.StateDir, and returns once every chunk is written, verified
// against the authenticated chunk table, and the whole image matches
// im.Digest. plan is the manifest's constraint on sources.
//
// It blocks until done or ctx ends. Errors: ErrBadImage, ErrNoSource (every
// candidate failed; progress is kept for the next call; the error also
// matches ErrUnreachable when every source tried could not be reached, a
// failure that says nothing about the sources or the image), ErrSink, ErrDigest
// (progress is discarded), or ctx's error. The Result is filled in either
// case. The progress files stay in StateDir after success; call Discard
// once the candidate is staged.
func (f *Fetcher) Fetch(ctx context.Context, im Image, plan Plan, sink Sink) (res Result, err error) {
	res = Result{Bytes: map[string]uint64{}}
	if err := im.Validate(); err != nil {
		return res, err
	}
	p, resumed, lerr := loadProgress(f.cfg.StateDir, im)
	if lerr != nil {
		f.log.Warn("discarding progress", "err", lerr)
	}
	p.noSync = f.cfg.NoSync
	res.Resumed = p.done.count()
	run := &fetchRun{f: f, im: im, p: p, sink: sink, res: &res, timedAt: f.cfg.Clock.Now()}
	defer func() { res.BadChunks = p.bad }()
	defer run.closeScratch()

	if !resumed {
		// Record the (empty) progress at once: from now on a reset finds a
		// progress file and scans the sink for chunks written after the
		// last save, so none is fetched again.
		if err := p.save(); err != nil {
			return res, fmt.Errorf("%w: save progress: %v", ErrSink, err)
		}
	}
	if resumed && p.table != nil {
		n, err := run.recover()
		if err != nil {
			return res, err
		}
		res.Recovered = n
		res.Resumed += n
	}
	if p.done.count() < p.done.n {
		if err := run.fetchMissing(ctx, plan); err != nil {
			if serr := p.save(); serr != nil {
				f.log.Warn("saving progress", "err", serr)
			}
			return res, err
		}
	} else {
		d := Decision{Time: f.cfg.Clock.Now(), Chosen: "", Why: "already have it: every chunk is verified in the sink"}
		run.decide(d)
	}
	if err := run.finish(); err != nil {
		return res, err
	}
	return res, nil
}

// fetchRun is the state of one Fetch call.
type fetchRun struct {
	f    *Fetcher
	im   Image
	p    *progress
	sink Sink
	res  *Result
	buf  []byte // a chunk's room for reading back, made on first use (chunkBuf)

	src     Source // in use
	got     int64  // bytes delivered by src in the current attempt
	firstAt time.Time
	bad     int // bad chunks in the current attempt
	sinkErr error
	timedAt time.Time // last timed OnProgress call (ProgressInterval)

	scratch   *scratchFile // the parity scratch, opened on first use
	noScratch bool         // it could not be opened
}

// chunkBuf returns room for one chunk read back from the sink: most
// fetches never read back (a fleet's devices would each hold one for
// nothing).
func (r *fetchRun) chunkBuf() []byte {
	if r.buf == nil {
		r.buf = make([]byte, r.im.ChunkSize)
	}
	return r.buf
}

// parityScratch returns the scratch a coded fetch keeps its parity chunks
// in (Config.ParityInMemory), opening it on first use: nil for none.
func (r *fetchRun) parityScratch() ParityScratch {
	if r.f.cfg.ParityInMemory || r.noScratch {
		return nil
	}
	if r.scratch == nil {
		f, err := os.OpenFile(filepath.Join(r.f.cfg.StateDir, parityScratchFile), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			r.f.log.Warn("parity scratch: holding parity in memory", "err", err)
			r.noScratch = true // not tried again
			return nil
		}
		r.scratch = &scratchFile{f: f, log: r.f.log}
	}
	return r.scratch
}

// closeScratch closes and removes the parity scratch, if one was opened.
func (r *fetchRun) closeScratch() {
	if r.scratch == nil {
		return
	}
	_ = r.scratch.f.Close()
	if err := os.Remove(r.scratch.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.f.log.Warn("parity scratch", "err", err)
	}
	r.scratch = nil
}

// scratchFile is the parity scratch of a fetch: a file, no fsync (nothing
// resumes from it). The first failed write is logged: the Collector then
// holds that parity chunk in memory.
type scratchFile struct {
	f      *os.File
	log    *slog.Logger
	warned atomic.Bool
}

func (s *scratchFile) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

func (s *scratchFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.f.WriteAt(p, off)
	if err != nil && !s.warned.Swap(true) {
		s.log.Warn("parity scratch write failed: holding parity in memory", "err", err)
	}
	return n, err
}

func (r *fetchRun) decide(d Decision) {
	r.res.Decisions = append(r.res.Decisions, d)
	r.f.log.Info("source decision", "image", r.im.Hex()[:16], "chosen", d.Chosen, "why", d.Why, "ranking", d.String())
	if r.f.cfg.OnDecision != nil {
		r.f.cfg.OnDecision(d)
	}
}

func (r *fetchRun) bytesDone() uint64 {
	var n uint64
	for i := r.p.done.next(0); i >= 0; i = r.p.done.next(i + 1) {
		n += uint64(r.im.ChunkLen(i))
	}
	return n
}

// recover marks as done the chunks the sink already holds intact but the
// bitmap does not record (written after the last save before a reset).
func (r *fetchRun) recover() (int, error) {
	ra, ok := r.sink.(io.ReaderAt)
	if !ok {
		return 0, nil
	}
	n := 0
	missing := r.p.done.complement()
	for i := missing.next(0); i >= 0; i = missing.next(i + 1) {
		b := r.chunkBuf()[:r.im.ChunkLen(i)]
		if _, err := ra.ReadAt(b, r.im.Offset(i)); err != nil {
			return n, fmt.Errorf("%w: read back chunk %d: %v", ErrSink, i, err)
		}
		if erased(b) {
			continue
		}
		if sha256.Sum256(b) == r.p.table.Hashes[i] {
			r.p.done.set(i)
			n++
		}
	}
	if n > 0 {
		if err := r.p.save(); err != nil {
			return n, err
		}
	}
	return n, nil
}

func erased(b []byte) bool {
	for _, c := range b {
		if c != 0xff {
			return false
		}
	}
	return true
}

// probeAll asks each source whether it can serve the image. A source
// whose probe failed is not tried in this fetch; when it could not be
// reached, its failure is added to errs (it may serve once connectivity
// returns, so the fetch failing for want of it says nothing bad about it).
func (r *fetchRun) probeAll(ctx context.Context, errs *[]error) map[string]Availability {
	avail := map[string]Availability{}
	for _, s := range r.f.cfg.Sources {
		pctx, cancel := context.WithTimeout(ctx, r.f.cfg.ProbeTimeout)
		a, err := s.Probe(pctx, r.im)
		cancel()
		if err != nil {
			r.f.log.Info("source probe failed", "source", s.Name(), "err", err)
			a = CannotServe
			if ctx.Err() == nil && unreachable(err) {
				*errs = append(*errs, fmt.Errorf("%s: probe: %w", s.Name(), err))
			}
		}
		avail[s.Name()] = a
	}
	return avail
}

func (r *fetchRun) sourceByName(n string) Source {
	for _, s := range r.f.cfg.Sources {
		if s.Name() == n {
			return s
		}
	}
	return nil
}

// fetchMissing runs the picker loop until every chunk is held.
func (r *fetchRun) fetchMissing(ctx context.Context, plan Plan) error {
	var errs []error
	avail := r.probeAll(ctx, &errs)
	skip := map[string]bool{}
	why := "cheapest expected cost"
	switch plan.Mode {
	case PlanPinned:
		why = "pinned by the manifest"
	case PlanOrdered:
		why = "first in the manifest's try-each order"
	}
	if r.p.table == nil {
		if err := r.getTable(ctx, plan, avail, skip, &errs); err != nil {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		remaining := r.im.Size - r.bytesDone()
		ranking := r.f.picker.rank(plan, r.f.cfg.Sources, avail, remaining, skip)
		if len(ranking) == 0 || math.IsInf(ranking[0].Cost, 1) {
			r.decide(Decision{Time: r.f.cfg.Clock.Now(), Why: "no source left", Ranking: ranking})
			return newNoSourceError(errs)
		}
		c := ranking[0]
		d := Decision{Time: r.f.cfg.Clock.Now(), Chosen: c.Source, Why: why, Ranking: ranking}
		if c.Availability == HaveIt {
			d.Why = "already have it"
		}
		r.decide(d)
		src := r.sourceByName(c.Source)
		err := r.useSource(ctx, src)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrSink) || ctx.Err() != nil {
			return err
		}
		r.f.picker.Fail(src.Name())
		skip[src.Name()] = true
		errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		why = fmt.Sprintf("failover after %s failed: %v", src.Name(), err)
		r.f.log.Warn("source failed, moving on", "source", src.Name(), "err", err)
	}
}

// useSource fetches the missing chunks from src, retrying with backoff.
func (r *fetchRun) useSource(ctx context.Context, src Source) error {
	b := r.backoff()
	r.src = src
	attempt := 0
	return retry.Do(ctx, b, func(ctx context.Context) error {
		attempt++
		missing := r.p.done.complement()
		if missing.count() == 0 {
			return nil
		}
		r.got, r.bad, r.sinkErr = 0, 0, nil
		start := r.f.cfg.Clock.Now()
		r.firstAt = time.Time{}
		var err error
		rs, repairs := src.(RepairSource)
		slot, readable := r.sink.(io.ReaderAt)
		if repairs && readable && r.p.table != nil && r.p.table.Coded() {
			err = rs.FetchRepair(ctx, r.im, Chunks{missing}, r.deliver, Repair{Table: r.p.table, Slot: slot, Scratch: r.parityScratch()})
		} else {
			err = src.Fetch(ctx, r.im, Chunks{missing}, r.deliver)
		}
		if r.got > 0 {
			first := r.firstAt.Sub(start)
			r.f.picker.Observe(src.Name(), r.got, r.f.cfg.Clock.Now().Sub(start), first)
		}
		if r.p.dirty > 0 {
			if serr := r.persist(); serr != nil {
				return serr
			}
		}
		switch {
		case r.sinkErr != nil:
			return r.sinkErr
		case err != nil && errors.Is(err, ErrSink):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			if r.bad > 0 && !errors.Is(err, ErrBadChunk) {
				err = fmt.Errorf("%w (%d chunks dropped: %w)", err, r.bad, ErrBadChunk)
			}
			r.f.log.Info("source attempt failed", "source", src.Name(), "attempt", attempt, "err", err)
			return retry.RetryableError(err)
		}
		if n := r.p.done.complement().count(); n > 0 {
			err := fmt.Errorf("%w: %d chunks still missing after a complete pass", ErrStalled, n)
			if r.bad > 0 {
				err = fmt.Errorf("%w (%d chunks dropped: %w)", err, r.bad, ErrBadChunk)
			}
			return retry.RetryableError(err)
		}
		return nil
	})
}

// getTable fetches the chunk table from the sources in ranked order,
// independently of which source then serves the chunks (a CDN may serve
// the image but not its table). A source whose table is rejected is
// penalised and skipped for chunks too.
func (r *fetchRun) getTable(ctx context.Context, plan Plan, avail map[string]Availability, skip map[string]bool, errs *[]error) error {
	ranking := r.f.picker.rank(plan, r.f.cfg.Sources, avail, r.im.Size, skip)
	for _, c := range ranking {
		if math.IsInf(c.Cost, 1) {
			break
		}
		src := r.sourceByName(c.Source)
		err := retry.Do(ctx, r.backoff(), func(ctx context.Context) error { return retryable(r.fetchTable(ctx, src)) })
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, ErrSink) {
			return err
		}
		r.f.log.Info("no chunk table from source", "source", src.Name(), "err", err)
		*errs = append(*errs, fmt.Errorf("%s: table: %w", src.Name(), err))
		if errors.Is(err, ErrChunkTable) {
			r.f.picker.Fail(src.Name())
			skip[src.Name()] = true
		}
	}
	r.decide(Decision{Time: r.f.cfg.Clock.Now(), Why: "no source served a valid chunk table", Ranking: ranking})
	return newNoSourceError(*errs)
}

func (r *fetchRun) backoff() retry.Backoff {
	rp := r.f.cfg.Retry
	var b retry.Backoff = retry.NewExponential(rp.Base)
	b = retry.WithJitterPercent(rp.JitterPercent, b)
	b = retry.WithCappedDuration(rp.Cap, b)
	return retry.WithMaxRetries(uint64(max(rp.MaxRetries, 0)), b)
}

func retryable(err error) error {
	if err == nil || errors.Is(err, ErrCannotServe) {
		return err
	}
	return retry.RetryableError(err)
}

// fetchTable fetches, authenticates and persists the chunk table.
func (r *fetchRun) fetchTable(ctx context.Context, src Source) error {
	b, err := src.Table(ctx, r.im)
	if err != nil {
		return err
	}
	t, err := DecodeTable(r.im, b)
	if err != nil {
		return err
	}
	if err := r.p.saveTable(b); err != nil {
		return fmt.Errorf("%w: save chunk table: %v", ErrSink, err)
	}
	r.p.table = t
	return nil
}

// deliver is the Deliver callback handed to sources.
func (r *fetchRun) deliver(i int, data []byte) error {
	if r.sinkErr != nil {
		return r.sinkErr
	}
	if i < 0 || i >= r.p.done.n {
		r.p.bad++
		r.bad++
		return fmt.Errorf("%w: index %d out of range [0, %d)", ErrBadChunk, i, r.p.done.n)
	}
	if r.p.done.has(i) {
		return nil
	}
	if len(data) != r.im.ChunkLen(i) {
		r.p.bad++
		r.bad++
		return fmt.Errorf("%w: chunk %d is %d bytes, want %d", ErrBadChunk, i, len(data), r.im.ChunkLen(i))
	}
	if err := r.p.table.VerifyChunk(uint32(i), data); err != nil {
		r.p.bad++
		r.bad++
		return fmt.Errorf("%w: %v", ErrBadChunk, err)
	}
	if _, err := r.sink.WriteAt(data, r.im.Offset(i)); err != nil {
		r.sinkErr = fmt.Errorf("%w: chunk %d: %v", ErrSink, i, err)
		return r.sinkErr
	}
	if r.firstAt.IsZero() {
		r.firstAt = r.f.cfg.Clock.Now()
	}
	r.got += int64(len(data))
	r.res.Bytes[r.src.Name()] += uint64(len(data))
	r.res.Source = r.src.Name()
	r.p.done.set(i)
	r.p.dirty++
	if i == r.p.hashed && !r.f.cfg.SkipImageDigest {
		r.p.hash.Write(data)
		r.p.hashed++
		r.catchUpHash()
	}
	if iv := r.f.cfg.ProgressInterval; iv > 0 && r.f.cfg.OnProgress != nil {
		if now := r.f.cfg.Clock.Now(); now.Sub(r.timedAt) >= iv {
			r.timedAt = now
			r.report(true)
		}
	}
	if r.p.dirty >= r.f.cfg.PersistEvery {
		if err := r.persist(); err != nil {
			r.sinkErr = err
			return err
		}
	}
	return nil
}

// catchUpHash extends the running hash over chunks already written after
// a gap, reading them back from the sink.
func (r *fetchRun) catchUpHash() {
	ra, ok := r.sink.(io.ReaderAt)
	if !ok {
		return
	}
	for r.p.hashed < r.p.done.n && r.p.done.has(r.p.hashed) {
		b := r.chunkBuf()[:r.im.ChunkLen(r.p.hashed)]
		if _, err := ra.ReadAt(b, r.im.Offset(r.p.hashed)); err != nil {
			return // finish() reports it
		}
		r.p.hash.Write(b)
		r.p.hashed++
	}
}

// persist syncs the sink and saves the progress, then reports it.
func (r *fetchRun) persist() error {
	if s, ok := r.sink.(Syncer); ok && !r.f.cfg.NoSync {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("%w: sync: %v", ErrSink, err)
		}
	}
	if err := r.p.save(); err != nil {
		return fmt.Errorf("%w: save progress: %v", ErrSink, err)
	}
	r.report(false)
	return nil
}

// report calls OnProgress, if set, with the bytes verified so far.
func (r *fetchRun) report(timed bool) {
	if r.f.cfg.OnProgress == nil {
		return
	}
	pr := Progress{BytesDone: r.bytesDone(), BytesTotal: r.im.Size, Timed: timed}
	if r.src != nil {
		pr.Source, pr.Kind = r.src.Name(), r.src.Kind()
	}
	r.f.cfg.OnProgress(pr)
}

// finish completes the running digest (reading back what was written out
// of order) and checks it against im.Digest.
func (r *fetchRun) finish() error {
	if r.f.cfg.SkipImageDigest {
		return r.done()
	}
	if r.p.hashed < r.p.done.n {
		ra, ok := r.sink.(io.ReaderAt)
		if !ok {
			return fmt.Errorf("%w: chunks arrived out of order and the sink cannot be read back", ErrSink)
		}
		r.catchUpHash()
		if r.p.hashed < r.p.done.n {
			b := r.chunkBuf()[:r.im.ChunkLen(r.p.hashed)]
			_, err := ra.ReadAt(b, r.im.Offset(r.p.hashed))
			return fmt.Errorf("%w: read back chunk %d: %v", ErrSink, r.p.hashed, err)
		}
	}
	if d := r.p.hash.Sum(nil); !bytes.Equal(d, r.im.Digest) {
		if err := Discard(r.f.cfg.StateDir); err != nil {
			r.f.log.Warn("discarding progress", "err", err)
		}
		return fmt.Errorf("%w: got %x, manifest says %x", ErrDigest, d[:8], r.im.Digest[:8])
	}
	return r.done()
}

// done persists the final progress and reports completion.
func (r *fetchRun) done() error {
	if err := r.p.save(); err != nil {
		return fmt.Errorf("%w: save progress: %v", ErrSink, err)
	}
	if r.f.cfg.OnProgress != nil {
		pr := Progress{BytesDone: r.im.Size, BytesTotal: r.im.Size}
		if r.src != nil {
			pr.Source, pr.Kind = r.src.Name(), r.src.Kind()
		}
		r.f.cfg.OnProgress(pr)
	}
	return nil
}
