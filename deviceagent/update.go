package deviceagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// advance runs the update in progress step by step until it ends, waits
// (backoff or deferral), or ctx ends.
func (a *Agent) advance(ctx context.Context) {
	for ctx.Err() == nil {
		a.mu.Lock()
		st := a.st
		a.mu.Unlock()
		if !st.busy() {
			return
		}
		if st.NextAttempt != 0 && a.cfg.Clock.Now().UnixMilli() < st.NextAttempt {
			return
		}
		var err error
		switch st.State {
		case schemas.StateNotified, schemas.StateManifestVerified, schemas.StateDownloading:
			err = a.install(ctx)
		case schemas.StateCandidateVerified:
			err = a.commit(ctx)
		case schemas.StateStaged:
			err = a.reboot(ctx)
		case schemas.StateRebooting:
			err = a.booted(ctx)
		case schemas.StateTrial:
			err = a.confirm(ctx)
		default:
			err = permanent(schemas.CodeInternal, fmt.Errorf("unexpected state %s", st.State))
		}
		if errors.Is(err, bootctl.ErrPowerLost) {
			// The simulated device lost power: it does nothing more
			// (nothing is persisted) until it is reset.
			a.mu.Lock()
			a.st.NextAttempt = a.cfg.Clock.Now().Add(a.cfg.RetryCap).UnixMilli()
			a.mu.Unlock()
			return
		}
		if err != nil {
			a.fail(ctx, err)
		}
	}
}

// verify authenticates the stored envelope and checks it against the
// notice and the active image. It returns the manifest, or skipped=true
// when the device already runs this image.
func (a *Agent) verify(ctx context.Context) (m *suit.Manifest, skipped bool, err error) {
	a.mu.Lock()
	env, img, deadline := a.st.Envelope, a.st.Image, a.st.Deadline
	a.mu.Unlock()
	if now := a.cfg.Clock.Now(); deadline != 0 && now.Unix() >= deadline {
		// The signed notice's deadline bounds how long it can be replayed.
		return nil, false, permanent(schemas.CodeExpired, fmt.Errorf("%w: the campaign's deadline %s has passed", suit.ErrExpired,
			time.Unix(deadline, 0).UTC().Format(time.RFC3339)))
	}
	m, err = suit.Verify(env, a.cfg.Trust)
	if err != nil {
		return nil, false, err
	}
	im, err := fetchImage(m)
	if err != nil {
		return nil, false, err
	}
	if err := a.selectStage(m); err != nil {
		return nil, false, err
	}
	active := a.targetActive()
	if !bytes.Equal(im.Digest, img) {
		return nil, false, permanent(schemas.CodeDigest, fmt.Errorf("notice names image %x, the manifest signs %x", img[:8], im.Digest[:8]))
	}
	if active.Valid && bytes.Equal(active.Digest[:], im.Digest) {
		return m, true, nil
	}
	if active.Valid && m.Seq <= active.Version {
		return nil, false, permanent(schemas.CodeRollback, fmt.Errorf("%w: manifest sequence %d, active version %d", suit.ErrRollback, m.Seq, active.Version))
	}
	if err := a.failedBefore(im.Digest); err != nil {
		return nil, false, err
	}
	// The candidate's security counter is the manifest's security version
	// (not its sequence number, which is a signing time); bootctl never
	// boots one below the anti-rollback floor. Without one, the floor is
	// kept (securityCounter).
	sv, svSet, err := m.SecurityVersion()
	if err != nil {
		return nil, false, permanent(schemas.CodeMalformed, err)
	}
	if st, err := a.dev().Status(); err == nil && svSet && sv < st.Floor {
		return nil, false, permanent(schemas.CodeRollback, fmt.Errorf("%w: security version %d below the anti-rollback floor %d", suit.ErrRollback, sv, st.Floor))
	}
	if capacity := uint64(a.dev().Layout().ImageCapacity(a.dev().Flash().Geometry())); im.Size > capacity {
		return nil, false, permanent(schemas.CodeSize, fmt.Errorf("image of %d bytes, a slot holds %d", im.Size, capacity))
	}
	a.mu.Lock()
	a.st.Seq, a.st.Size = m.Seq, im.Size
	a.mu.Unlock()
	return m, false, nil
}

// install verifies the manifest and runs its update procedure (the SUIT
// processor), which downloads the image into a candidate slot.
func (a *Agent) install(ctx context.Context) error {
	m, skipped, err := a.verify(ctx)
	if err != nil {
		return err
	}
	if skipped {
		a.finish(ctx, schemas.StateSkipped, schemas.CodeNone, "already running this image")
		return nil
	}
	a.mu.Lock()
	state := a.st.State
	a.mu.Unlock()
	if state == schemas.StateNotified {
		if err := a.setState(ctx, schemas.StateManifestVerified, schemas.CodeNone, ""); err != nil {
			return err
		}
	}
	// An encrypted image's content key is unwrapped before anything is
	// downloaded: a device without a key for it refuses it here.
	u, err := a.contentKey(ctx, m)
	if err != nil {
		return err
	}
	if u != nil {
		a.mu.Lock()
		a.st.Encrypted = true
		a.mu.Unlock()
	}
	t := &target{a: a, m: m}
	installed := a.targetActive().Version
	p := suit.Processor{Target: t, InstalledSeq: installed, Now: a.cfg.Clock.Now}
	if _, err := p.Update(ctx, m); err != nil {
		if t.err != nil {
			return t.err
		}
		return err
	}
	if !t.fetched {
		return permanent(schemas.CodeUnsupported, errors.New("the manifest's install sequence fetched nothing"))
	}
	a.mu.Lock()
	note := strings.TrimPrefix(a.dropped+"; "+t.deltaNote, "; ")
	a.mu.Unlock()
	return a.setState(ctx, schemas.StateCandidateVerified, schemas.CodeNone, strings.TrimSuffix(note, "; "))
}

// fetchImage is what the fetcher needs of a verified manifest: the signed
// image digest and size, chunk size and chunk-table digest, each present
// and SHA-256, or a permanent CodeUnsupported error naming what is
// missing. It is the one place the agent reads them (their bounds are the
// fetcher's: Image.Validate, at download).
func fetchImage(m *suit.Manifest) (fetcher.Image, error) {
	d, ok := m.ImageDigest()
	size, ok2 := m.ImageSize()
	if !ok || !ok2 || d.Alg != suit.AlgSHA256 {
		return fetcher.Image{}, permanent(schemas.CodeUnsupported, errors.New("manifest sets no SHA-256 image digest and size"))
	}
	ci, ok := m.ChunkInfo()
	if !ok {
		return fetcher.Image{}, permanent(schemas.CodeUnsupported, errors.New("manifest has no firmcast chunk parameter"))
	}
	if ci.TableDigest.Alg != suit.AlgSHA256 {
		return fetcher.Image{}, permanent(schemas.CodeUnsupported, fmt.Errorf("chunk-table digest algorithm %d, want SHA-256", ci.TableDigest.Alg))
	}
	return fetcher.Image{Digest: d.Bytes, Size: size, ChunkSize: ci.ChunkSize, TableDigest: ci.TableDigest.Bytes}, nil
}

// download fetches the image into the candidate slot (called by the
// processor through target.Fetch).
func (a *Agent) download(ctx context.Context, m *suit.Manifest) error {
	im, err := fetchImage(m)
	if err != nil {
		return err
	}
	if a.cfg.DeliveryProtocol >= schemas.ProtocolCoded {
		if cd, ok, err := m.CodedTableDigest(); err == nil && ok && cd.Alg == suit.AlgSHA256 {
			im.CodedTableDigest = cd.Bytes // else: the plain table and repair by chunks
		}
	}
	if err := im.Validate(); err != nil {
		return permanent(schemas.CodeUnsupported, err)
	}
	srcs, plan := a.sources(m)
	srcs, err = a.downloadAllowed(ctx, m, srcs)
	if err != nil {
		return err
	}
	a.mu.Lock()
	// A slot a delta was applied into holds neither image: erase it.
	slot, open := a.st.Slot, a.st.SlotOpen && len(a.st.Delta) == 0
	a.mu.Unlock()
	var cand *bootctl.Candidate
	if open {
		cand, err = a.dev().ResumeCandidate(ctx, slot, im.Size)
		if err != nil {
			return err
		}
	} else {
		if slot < 0 {
			if slot, err = a.dev().FreeSlot(); err != nil {
				return err
			}
		}
		a.mu.Lock()
		a.st.Slot, a.st.Bytes, a.st.Deferred, a.st.SlotOpen, a.st.Delta, a.st.DeltaSize = slot, 0, "", false, nil, 0
		a.st.CipherSlot = a.keepsCiphertextLocked()
		a.mu.Unlock()
		// Persist the slot before erasing it; fetch progress of an
		// earlier attempt is discarded, as the slot is erased again.
		if err := a.setState(ctx, schemas.StateDownloading, schemas.CodeNone, fmt.Sprintf("slot %d", slot)); err != nil {
			return err
		}
		if err := fetcher.Discard(a.fetchTo); err != nil {
			return transient(schemas.CodeInternal, err)
		}
		if cand, err = a.dev().OpenCandidate(ctx, slot, im.Size); err != nil {
			return err
		}
		a.mu.Lock()
		a.st.SlotOpen = true
		a.mu.Unlock()
		if err := a.save(); err != nil {
			return err
		}
	}
	// The fetcher checks each chunk against the signed table, which names
	// the image's digest and size, before it writes it: that is the
	// image's check before the header goes on (commit). The bootloader
	// hashes the slot before it installs it.
	u, err := a.encrypted(ctx)
	if err != nil {
		return err
	}
	return a.fetchInto(ctx, im, srcs, plan, a.fetchTo, a.candidateSink(cand, u), true)
}

// fetchInto runs the fetcher for im into sink, its progress kept in dir,
// reporting source decisions and progress. skipDigest leaves the
// whole-image digest to the caller (fetcher.Config.SkipImageDigest).
func (a *Agent) fetchInto(ctx context.Context, im fetcher.Image, srcs []fetcher.Source, plan fetcher.Plan, dir string, sink fetcher.Sink, skipDigest bool) error {
	step := uint64(a.cfg.ProgressStep)
	last := uint64(0)
	prog := a.startProgressReports(ctx)
	defer prog.stop()
	f, err := fetcher.New(fetcher.Config{
		SkipImageDigest: skipDigest,
		NoSync:          a.cfg.NoSync,
		ParityInMemory:  a.cfg.ParityInMemory,
		Picker:          a.picker, // measurements and penalties carry over between attempts
		Sources:         srcs, StateDir: dir, PersistEvery: a.cfg.PersistEvery, Retry: a.cfg.Fetch,
		// Progress is reported on time too, not only when it is persisted.
		ProgressInterval: a.cfg.ProgressInterval,
		Clock:            a.cfg.Clock, Logger: a.log,
		OnDecision: func(dc fetcher.Decision) {
			a.mu.Lock()
			for _, c := range dc.Ranking {
				if c.Source == dc.Chosen {
					a.st.Source = c.Kind // reports carry the kind
				}
			}
			a.mu.Unlock()
			// The decision and its reasons go into the report.
			_ = a.report(ctx, schemas.StateDownloading, schemas.CodeNone, "source decision: "+dc.String())
		},
		OnProgress: func(p fetcher.Progress) {
			pct := p.BytesDone * 100 / max(p.BytesTotal, 1)
			a.mu.Lock()
			if p.BytesDone > a.st.Bytes {
				a.st.Offline = 0 // connectivity is back: the backoff starts again
			}
			a.st.Bytes = p.BytesDone
			if p.Kind != "" {
				a.st.Source = p.Kind
			}
			a.mu.Unlock()
			if a.cfg.OnProgress != nil {
				a.cfg.OnProgress(p.BytesDone, p.BytesTotal)
			}
			if (p.Timed || pct >= last+step) && pct < 100 {
				last = max(last, pct-pct%step)
				prog.post(p.BytesDone, a.cfg.Clock.Now())
			}
		},
	})
	if err != nil {
		return permanent(schemas.CodeInternal, err)
	}
	a.picker = f.Picker()
	res, err := f.Fetch(ctx, im, plan, sink)
	a.log.Info("fetch", "bytes", res.Bytes, "resumed", res.Resumed, "bad_chunks", res.BadChunks, "err", err)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.st.Bytes = im.Size
	a.dropped = ""
	for _, s := range srcs {
		if bs, ok := s.(*fetcher.BrokerSource); ok && bs.Dropped > 0 {
			a.dropped = fmt.Sprintf("ignored %d messages on chunk topics: %d not a chunk, %d of another image, %d out of range",
				bs.Dropped, bs.Garbage, bs.Foreign, bs.OutOfRange)
		}
	}
	if res.BadChunks > 0 {
		a.dropped = strings.TrimPrefix(fmt.Sprintf("%s; dropped %d chunks that did not match the chunk table", a.dropped, res.BadChunks), "; ")
	}
	a.mu.Unlock()
	return nil
}

// slotSink is the candidate slot as the fetcher's sink: WriteAt, ReadAt
// (resume, digest read-back) and Sync (the flash file).
type slotSink struct {
	*bootctl.Candidate
	f *bootctl.Flash
}

func (s slotSink) Sync() error { return s.f.Sync() }

// sources builds the fetch sources for m, and the plan: the manifest's
// usable URIs in order (SUIT try-each), then the broker; without any,
// every source ranked by cost.
//
// Where to fetch from comes only from what the device trusts: the signed
// manifest's URIs, within Config.URLPrefixes (http, https) and
// Config.FileDirs (file://), and the device's own configuration (the
// broker, the object store, Config.Sources). The notice's source hints
// give only the price of a kind.
func (a *Agent) sources(m *suit.Manifest) ([]fetcher.Source, fetcher.Plan) {
	a.mu.Lock()
	campaign := a.st.Campaign
	a.mu.Unlock()
	price := a.priceOf()
	var out []fetcher.Source
	seen := map[string]bool{}
	add := func(s fetcher.Source) bool {
		if seen[s.Name()] {
			return false
		}
		seen[s.Name()] = true
		out = append(out, s)
		return true
	}
	if bs, err := fetcher.NewBrokerSource(fetcher.BrokerConfig{
		Transport: a.cfg.Transport, Topics: a.cfg.Topics, Device: a.cfg.DeviceID,
		Campaign: campaign, Price: price("broker"), Idle: a.cfg.ChunkIdle,
		ListenFirst: a.cfg.ChunkListen, Quiet: a.cfg.ChunkQuiet, Protocol: a.cfg.DeliveryProtocol,
		Tally: a.cfg.FetchTally, Logger: a.log,
	}); err == nil {
		add(bs)
	}
	var plan fetcher.Plan
	var uris []string
	if m != nil {
		uris = m.URIs()
	}
	for _, u := range uris {
		srcs, why := a.uriSources(u, price)
		if why != "" {
			a.log.Warn("manifest URI not used", "uri", u, "why", why)
		}
		for _, s := range srcs {
			if add(s) {
				plan.Names = append(plan.Names, s.Name())
			}
		}
	}
	if len(plan.Names) > 0 {
		plan.Mode = fetcher.PlanOrdered
		plan.Names = append(plan.Names, "broker")
	}
	if a.cfg.ObjectStore != nil {
		ob := fetcher.NewObjectStoreSource(a.cfg.ObjectStore, a.cfg.ObjectBucket, price("objstore"))
		if a.cfg.ObjectJS != nil {
			ob.WithJetStream(a.cfg.ObjectJS)
		}
		add(ob)
	}
	for _, s := range a.cfg.Sources {
		add(s)
	}
	return out, plan
}

// priceOf returns the price of a source kind: Config.Prices, else the
// notice's hint (milli-units per MiB).
func (a *Agent) priceOf() func(kind string) float64 {
	a.mu.Lock()
	hints := a.st.Sources
	a.mu.Unlock()
	hintCost := map[string]uint32{}
	for _, h := range hints {
		hintCost[h.Kind] = h.Cost
	}
	return func(kind string) float64 {
		if p, ok := a.cfg.Prices[kind]; ok {
			return p
		}
		return float64(hintCost[kind]) / 1000 / (1 << 20) // milli-units per MiB
	}
}

// uriSources returns the sources a signed manifest's URI u allows, or why
// none: an http(s) URI outside Config.URLPrefixes, a file:// URI outside
// Config.FileDirs, another scheme.
func (a *Agent) uriSources(u string, price func(kind string) float64) ([]fetcher.Source, string) {
	lower := strings.ToLower(u)
	switch {
	case strings.HasPrefix(lower, "http://"), strings.HasPrefix(lower, "https://"):
		if len(a.cfg.URLPrefixes) > 0 && !slices.ContainsFunc(a.cfg.URLPrefixes, func(p string) bool { return strings.HasPrefix(u, p) }) {
			return nil, "not under an allowed URL prefix"
		}
		return []fetcher.Source{a.httpSource(u, price("http"))}, ""
	case strings.HasPrefix(lower, "file://"):
		p := u[len("file://"):]
		var out []fetcher.Source
		for _, dir := range a.cfg.FileDirs {
			rel := p
			if filepath.IsAbs(p) {
				r, err := filepath.Rel(dir, p)
				if err != nil {
					continue
				}
				rel = r
			}
			if s, err := fetcher.NewFileSourceIn(dir, rel, price("file")); err == nil {
				out = append(out, s)
			}
		}
		if len(out) == 0 {
			return nil, "not inside a configured file source directory"
		}
		return out, ""
	}
	return nil, "unsupported scheme"
}

// downloadAllowed applies the download policy; it may narrow the sources
// to free ones, or defer.
func (a *Agent) downloadAllowed(ctx context.Context, m *suit.Manifest, srcs []fetcher.Source) ([]fetcher.Source, error) {
	size, _ := m.ImageSize()
	pol := a.cfg.Policy
	a.mu.Lock()
	campaign := a.st.Campaign
	a.mu.Unlock()
	if err := pol.consent(ctx, Update{Campaign: campaign, Seq: m.Seq, Size: size, Phase: "download"}); err != nil {
		return nil, err
	}
	var free []fetcher.Source
	for _, s := range srcs {
		if s.Price() == 0 {
			free = append(free, s)
		}
	}
	metered := pol.MaxMeteredBytes > 0 && size > pol.MaxMeteredBytes
	if pol.FreeSourceOnly || metered {
		if len(free) == 0 {
			why := "waiting for a free source"
			if metered {
				why = fmt.Sprintf("image of %d bytes is over the metered limit of %d bytes; waiting for a free source", size, pol.MaxMeteredBytes)
			}
			return nil, fmt.Errorf("%w: %s", ErrDeferred, why)
		}
		return free, nil
	}
	return srcs, nil
}

// commit seals the downloaded candidate: bootctl checks the signed digest
// (hashing the slot unless every chunk was checked as it was written) and
// writes the header with the per-device MAC.
func (a *Agent) commit(ctx context.Context) error {
	a.mu.Lock()
	st := a.st
	a.mu.Unlock()
	cand, err := a.dev().ResumeCandidate(ctx, st.Slot, st.Size)
	if err != nil {
		return err
	}
	counter, err := a.securityCounter(st.Envelope)
	if err != nil {
		return err
	}
	// An encrypted image is checked here against its signed plaintext
	// digest: nothing decrypted becomes bootable before it matches.
	digest, err := a.candidateDigest(ctx, st)
	if err != nil {
		return err
	}
	info := bootctl.CandidateInfo{Version: st.Seq, SecurityCounter: counter, Campaign: st.Campaign, Envelope: st.Envelope}
	copy(info.Digest[:], digest)
	// A full plain image reached the slot only through the fetcher, which
	// checked each chunk against the signed chunk table (bound to the
	// signed digest and size) before writing it: the slot need not be
	// hashed again before the header goes on (the bootloader hashes it
	// before it installs it). A delta's result and an encrypted image's
	// plaintext were not checked chunk by chunk: Commit hashes those.
	info.Verified = !st.Encrypted && len(st.Delta) == 0
	if info.Encryption, err = a.slotEncryption(ctx, st); err != nil {
		return err
	}
	if err := cand.Commit(ctx, info); err != nil {
		if errors.Is(err, bootctl.ErrNotErased) || errors.Is(err, bootctl.ErrConflict) {
			// A power cut tore the header's write: the slot is erased and
			// written again (a delta is applied again from its staged
			// copy; a full image is fetched again).
			a.mu.Lock()
			a.st.SlotOpen = false
			a.mu.Unlock()
			return a.setState(ctx, schemas.StateDownloading, schemas.CodeNone, "the candidate's header was torn by a power cut; writing the slot again: "+err.Error())
		}
		return scrubPlaintext(st, err)
	}
	if err := fetcher.Discard(a.fetchTo); err != nil {
		a.log.Warn("discarding fetch progress", "err", err)
	}
	return a.setState(ctx, schemas.StateStaged, schemas.CodeNone, fmt.Sprintf("slot %d", st.Slot))
}

// securityCounter is the anti-rollback counter of the candidate whose
// (verified, persisted) envelope is env: the manifest's security version,
// or, when it sets none, the current floor, so that confirming it leaves
// the floor where it is.
func (a *Agent) securityCounter(env []byte) (uint64, error) {
	var m *suit.Manifest
	var err error
	if len(env) > 0 {
		m, err = suit.Decode(env)
	}
	if err != nil {
		return 0, permanent(schemas.CodeMalformed, err)
	}
	if m != nil {
		sv, set, err := m.SecurityVersion()
		if err != nil {
			return 0, permanent(schemas.CodeMalformed, err)
		}
		if set {
			return sv, nil
		}
	}
	st, err := a.dev().Status()
	if err != nil {
		return 0, err
	}
	return st.Floor, nil
}

// reboot checks the install policy and hands over to the bootloader.
func (a *Agent) reboot(ctx context.Context) error {
	a.mu.Lock()
	u := Update{Campaign: a.st.Campaign, Seq: a.st.Seq, Size: a.st.Size, Phase: "install"}
	a.mu.Unlock()
	if err := a.cfg.Policy.installAllowed(ctx, a.cfg.Clock.Now(), u); err != nil {
		return err
	}
	// Point of no return: once Rebooting is persisted, the next step is
	// the bootloader's install; a reset resumes by booting.
	if err := a.setState(ctx, schemas.StateRebooting, schemas.CodeNone, ""); err != nil {
		return err
	}
	return a.booted(ctx)
}

// booted runs the bootloader (the simulated reboot) and checks that it
// started the new image in trial state.
func (a *Agent) booted(ctx context.Context) error {
	dec, err := a.bootAll(ctx)
	if errors.Is(err, bootctl.ErrPowerLost) {
		return err // the device is off: the next reset boots again
	}
	a.refreshActive()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if dec.Booted && a.isUpdateImage(dec.Digest, dec.Version, dec.Campaign) {
		return a.setState(ctx, schemas.StateTrial, schemas.CodeNone, fmt.Sprintf("bootloader: %s", dec.Action))
	}
	why := dec.Reason
	if err != nil {
		why = err.Error()
	}
	return permanent(schemas.CodeBootFailed, fmt.Errorf("bootloader did not start the new image (action %s, running version %d): %s", dec.Action, dec.Version, why))
}

// confirm runs the health check of the new image and confirms it, or
// lets the bootloader revert it.
func (a *Agent) confirm(ctx context.Context) error {
	st, err := a.dev().Status()
	if err != nil {
		return transient(schemas.CodeInternal, err)
	}
	a.refreshActive()
	running := st.Active.Valid && a.isUpdateImage(st.Active.Digest, st.Active.Version, st.Active.Campaign)
	switch {
	case !running:
		a.finish(ctx, schemas.StateRolledBack, schemas.CodeBootFailed, "bootloader reverted the new image: "+st.LastReason)
		return nil
	case !st.Trial:
		a.finish(ctx, schemas.StateConfirmed, schemas.CodeNone, "")
		return nil
	}
	if herr := a.health(ctx); herr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return a.revert(ctx, herr)
	}
	if err := a.dev().Confirm(); err != nil {
		return transient(schemas.CodeInternal, err)
	}
	a.refreshActive()
	a.finish(ctx, schemas.StateConfirmed, schemas.CodeNone, "")
	return nil
}

// healthTries bounds the tries to publish the health check's report.
const healthTries = 5

// health checks that the broker is reachable (a report is accepted, within
// healthTries tries with backoff: one slow reply does not revert an image)
// and runs the product's self-test.
func (a *Agent) health(ctx context.Context) error {
	backoff := retry.WithMaxRetries(healthTries-1, retry.WithCappedDuration(a.cfg.RetryCap, retry.NewExponential(a.cfg.RetryBase)))
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		if err := a.report(ctx, schemas.StateTrial, schemas.CodeNone, "health check"); err != nil {
			return retry.RetryableError(err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: broker unreachable after %d tries: %v", ErrHealth, healthTries, err)
	}
	if a.cfg.SelfTest != nil {
		if err := a.cfg.SelfTest(ctx); err != nil {
			return fmt.Errorf("%w: self-test: %v", ErrHealth, err)
		}
	}
	return nil
}

// revert does not confirm and reboots until the bootloader reverts the
// trial image (after its K trial boots).
func (a *Agent) revert(ctx context.Context, cause error) error {
	st, _ := a.dev().Status()
	var dec bootctl.Decision
	for i := 0; i <= st.TrialLimit+1; i++ {
		var err error
		dec, err = a.bootAll(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && dec.Action == bootctl.ActionReverted {
			break
		}
	}
	a.refreshActive()
	a.finish(ctx, schemas.StateRolledBack, schemas.CodeBootFailed, fmt.Sprintf("%v; bootloader %s: %s", cause, dec.Action, dec.Reason))
	return nil
}

// finish ends the update with a terminal state and remembers it.
func (a *Agent) finish(ctx context.Context, s schemas.State, code schemas.ErrCode, text string) {
	a.mu.Lock()
	a.st.markDone(key(a.st.Campaign, a.st.Image))
	a.st.NextAttempt, a.st.Deferred = 0, ""
	a.mu.Unlock()
	if err := fetcher.Discard(a.fetchTo); err != nil {
		a.log.Warn("discarding fetch progress", "err", err)
	}
	if err := a.setState(ctx, s, code, text); err != nil {
		a.log.Error("persisting final state", "err", err)
	}
}

// fail handles a failed step: a deferral waits, a transient failure is
// retried with backoff up to MaxAttempts, anything else ends the update.
func (a *Agent) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // stopped (or killed): the persisted state resumes
	}
	now := a.cfg.Clock.Now()
	if errors.Is(err, ErrDeferred) {
		a.mu.Lock()
		a.st.Deferred = err.Error()
		a.st.NextAttempt = now.Add(a.cfg.Policy.Recheck).UnixMilli()
		a.mu.Unlock()
		if serr := a.save(); serr != nil {
			a.log.Error("persisting deferral", "err", serr)
		}
		_ = a.report(ctx, schemas.StateDeferred, schemas.CodePolicy, err.Error())
		return
	}
	if a.runningNew() {
		// The new image runs: whatever failed, the device is in trial (or
		// beyond), never "failed" on the image it runs. Try again later.
		a.mu.Lock()
		a.st.NextAttempt = now.Add(a.cfg.RetryBase).UnixMilli()
		a.mu.Unlock()
		if serr := a.setState(ctx, schemas.StateTrial, schemas.CodeNone, "running the new image"); serr != nil {
			a.log.Error("persisting trial", "err", serr)
		}
		return
	}
	if errors.Is(err, fetcher.ErrUnreachable) {
		a.waitOnline(ctx, now, err)
		return
	}
	code, retry := classify(err)
	a.mu.Lock()
	a.st.Attempts++
	attempts := a.st.Attempts
	a.mu.Unlock()
	if retry && int(attempts) < a.cfg.MaxAttempts {
		wait := a.backoff(attempts)
		a.mu.Lock()
		a.st.NextAttempt = now.Add(wait).UnixMilli()
		a.st.Code, a.st.Text = code, a.scrubLocked(err.Error())
		state := a.st.State
		a.mu.Unlock()
		if serr := a.save(); serr != nil {
			a.log.Error("persisting retry", "err", serr)
		}
		_ = a.report(ctx, state, code, fmt.Sprintf("attempt %d of %d failed, retrying in %v: %v", attempts, a.cfg.MaxAttempts, wait, err))
		return
	}
	if retry {
		err = fmt.Errorf("given up after %d attempts: %w", attempts, err)
	}
	a.finish(ctx, schemas.StateFailed, code, err.Error())
}

// waitOnline handles a fetch that failed only because no source could be
// reached: the device has no connectivity, which says nothing about the
// update. It is not counted as an attempt; the next one waits with the
// backoff of the failures in a row (or until the transport reconnects)
// and resumes from the persisted progress.
func (a *Agent) waitOnline(ctx context.Context, now time.Time, err error) {
	a.mu.Lock()
	a.st.Offline++
	wait := a.backoff(a.st.Offline)
	a.st.NextAttempt = now.Add(wait).UnixMilli()
	a.st.Code, a.st.Text = schemas.CodeNoSource, err.Error()
	state, n := a.st.State, a.st.Offline
	a.mu.Unlock()
	a.log.Info("no source reachable; waiting for connectivity", "failures", n, "wait", wait, "err", err)
	if serr := a.save(); serr != nil {
		a.log.Error("persisting retry", "err", serr)
	}
	// Usually lost with the connection; the reconnection report follows.
	_ = a.report(ctx, state, schemas.CodeNoSource, fmt.Sprintf("no source reachable (%d in a row, not counted as an attempt), retrying in %v: %v", n, wait, err))
}

// backoff is the wait before the next try after n failures in a row:
// RetryBase doubled n-1 times, at most RetryCap.
func (a *Agent) backoff(n uint32) time.Duration {
	d := a.cfg.RetryBase
	for i := uint32(1); i < n && d < a.cfg.RetryCap; i++ {
		if d > a.cfg.RetryCap/2 {
			return a.cfg.RetryCap
		}
		d *= 2
	}
	return min(d, a.cfg.RetryCap)
}

// runningNew reports whether the active image is the update's image while
// the update is past staging.
func (a *Agent) runningNew() bool {
	a.mu.Lock()
	state := a.st.State
	a.mu.Unlock()
	if state != schemas.StateRebooting && state != schemas.StateTrial {
		return false
	}
	a.refreshActive()
	active := a.targetActive()
	return active.Valid && a.isUpdateImage(active.Digest, active.Version, active.Campaign)
}
