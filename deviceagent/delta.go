package deviceagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Delta updates. A manifest may offer deltas before the full image (see
// suit.DeltaInfo); the agent takes one when its precursor condition holds:
// the running image is the delta's source and is confirmed (a trial image
// may still be reverted, so nothing is built on it), and the delta did
// not fail on this device during this update. Then:
//
//  1. the candidate slot is chosen and Record.Delta persisted before the
//     slot is erased (OpenCandidate), as for a full download;
//  2. the delta is fetched like any image (its own signed digest, size
//     and chunk table; broadcast, repair and resume) into a staging file
//     in the delta directory, its progress kept there too;
//  3. the staged delta is applied frame by frame, reading the source from
//     the active slot and writing the result into the candidate slot; a
//     checkpoint is persisted after each frame, so a reset resumes from
//     the last frame done (the slot is reopened, not erased again);
//  4. the result's digest is checked (the delta's own check, then
//     bootctl's Commit hashes the slot against the signed digest).
//
// A delta to an encrypted image is encrypted too (suit.DeltaInfo
// Encryption, its own content key wrapped with the image's DeltaKEK):
// its key is unwrapped before anything is fetched (deltaKeys), the
// staged delta stays ciphertext at rest and is decrypted as it is read
// (cipherReaderAt), the result is checked against the image's signed
// plaintext digest, and with encrypted slots it goes into the slot
// encrypted again with the image's key. A plain delta to an encrypted
// image, or an encrypted one to a plain image, is refused.
//
// A delta that fails (corrupt, another source, a flash conflict) is
// recorded in Record.DeltaFailed, its slot is given up (the full image
// erases it again) and the processor's next try-each branch takes the
// full image. A power loss or a stop leaves everything as persisted.

// deltaFiles are the delta directory's files: the staged delta, the
// apply checkpoint, and the fetch progress directory.
const (
	deltaStaged     = "delta.bin"
	deltaCheckpoint = "checkpoint"
	deltaFetch      = "fetch"
)

// maxDeltaFailed bounds Record.DeltaFailed.
const maxDeltaFailed = 8

func (a *Agent) deltaDir() string { return filepath.Join(a.cfg.StateDir, "delta") }

// Command implements suit.Extension: condition-firmcast-precursor.
func (t *target) Command(ctx context.Context, idx int, c suit.Command, p *suit.Params) error {
	if c.Label != suit.CondPrecursor {
		return fmt.Errorf("%w: %s", suit.ErrUnknownCommand, c.Name())
	}
	info, ok, err := suit.DeltaOf(p)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s without a delta parameter", suit.ErrParameter, c.Name())
	}
	if idx != 0 {
		return fmt.Errorf("%w: component %d (this device has one)", suit.ErrConditionFailed, idx)
	}
	if why := t.a.precursor(info); why != "" {
		t.a.log.Info("delta not used", "delta", schemas.DigestHex(info.Digest), "why", why)
		t.deltaNote = "delta not used: " + why
		return fmt.Errorf("%w: %s", suit.ErrConditionFailed, why)
	}
	return nil
}

// precursor says why the delta info describes does not apply to the
// running image ("" when it does).
func (a *Agent) precursor(info suit.DeltaInfo) string {
	a.mu.Lock()
	failed := slices.Contains(a.st.DeltaFailed, schemas.DigestHex(info.Digest))
	a.mu.Unlock()
	if failed {
		return "it failed on this device before"
	}
	st, err := a.dev().Status()
	switch {
	case err != nil:
		return "reading the boot status: " + err.Error()
	case !st.Active.Valid:
		return "no valid running image: " + st.Active.Error
	case st.Trial:
		return "the running image is on trial (not confirmed): the precursor is not settled"
	case !bytes.Equal(st.Active.Digest[:], info.SourceDigest) || st.Active.Size != info.SourceSize:
		return fmt.Sprintf("it is from image %s (%d bytes); this device runs %s (%d bytes)",
			short(info.SourceDigest), info.SourceSize, short(st.Active.Digest[:]), st.Active.Size)
	}
	return ""
}

func short(d []byte) string { return schemas.DigestHex(d)[:min(16, 2*len(d))] }

// fetchDelta is target.Fetch for a delta branch: the delta is fetched and
// applied into the candidate slot, and the branch then checks the image
// as for a full fetch. A failed delta is recorded and its slot given up,
// so the next branch (the full image) starts clean.
func (t *target) fetchDelta(ctx context.Context, info suit.DeltaInfo) (io.ReadCloser, error) {
	if t.err != nil { // a power loss or stop in an earlier branch
		return nil, t.err
	}
	digest, err := t.a.installDelta(ctx, t.m, info)
	if err == nil {
		t.verified, t.fetched = digest, true
		t.deltaNote = "delta " + short(info.Digest) + " applied"
		return io.NopCloser(strings.NewReader("")), nil
	}
	if ctx.Err() != nil || errors.Is(err, bootctl.ErrPowerLost) || errors.Is(err, ErrDeferred) {
		t.err = err // nothing more is done, nothing persisted
		return nil, err
	}
	t.deltaNote = "delta not applied, taking the full image: " + err.Error()
	t.a.log.Warn("delta failed", "delta", schemas.DigestHex(info.Digest), "err", err)
	t.a.dropDelta(ctx, info, err)
	return nil, err
}

// dropDelta gives up the delta's slot after err: the full image erases
// it again. The delta is not tried again during this update unless err
// says only that no source could be reached (its staged bytes and fetch
// progress are then kept).
func (a *Agent) dropDelta(ctx context.Context, info suit.DeltaInfo, err error) {
	unreachable := errors.Is(err, fetcher.ErrUnreachable)
	a.mu.Lock()
	a.st.SlotOpen, a.st.Delta, a.st.DeltaSize, a.st.Bytes = false, nil, 0, 0
	if !unreachable {
		a.st.DeltaFailed = append(a.st.DeltaFailed, schemas.DigestHex(info.Digest))
		if len(a.st.DeltaFailed) > maxDeltaFailed {
			a.st.DeltaFailed = a.st.DeltaFailed[len(a.st.DeltaFailed)-maxDeltaFailed:]
		}
	}
	a.mu.Unlock()
	if serr := a.save(); serr != nil {
		a.log.Error("persisting a failed delta", "err", serr)
	}
	dir := a.deltaDir()
	rm := []string{deltaCheckpoint}
	if !unreachable {
		rm = append(rm, deltaStaged)
		if derr := fetcher.Discard(filepath.Join(dir, deltaFetch)); derr != nil {
			a.log.Warn("discarding delta fetch progress", "err", derr)
		}
	}
	for _, n := range rm {
		if rerr := os.Remove(filepath.Join(dir, n)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			a.log.Warn("removing delta file", "file", n, "err", rerr)
		}
	}
	_ = a.report(ctx, schemas.StateDownloading, schemas.CodeNone, "delta "+short(info.Digest)+" not applied, taking the full image: "+err.Error())
}

// installDelta fetches the delta info describes and applies it into the
// candidate slot; it returns the digest of the result (the signed image
// digest: anything else is an error).
func (a *Agent) installDelta(ctx context.Context, m *suit.Manifest, info suit.DeltaInfo) ([]byte, error) {
	im, err := fetchImage(m)
	if err != nil {
		return nil, err
	}
	dim := fetcher.Image{Digest: info.Digest, Size: info.Size, ChunkSize: info.ChunkSize, TableDigest: info.ChunkTableDigest}
	if err := dim.Validate(); err != nil {
		return nil, permanent(schemas.CodeUnsupported, fmt.Errorf("delta: %w", err))
	}
	dk, err := a.deltaKeys(ctx, m, info)
	if err != nil {
		return nil, err
	}
	srcs, plan := a.deltaSources(info)
	srcs, err = a.downloadAllowed(ctx, m, srcs)
	if err != nil {
		return nil, err
	}
	digest, err := a.applyDelta(ctx, info, dim, im, srcs, plan, dk)
	if errors.Is(err, bootctl.ErrConflict) || errors.Is(err, bootctl.ErrNotErased) {
		// A power cut tore a write: the slot is erased and the staged
		// delta applied again from the start.
		a.log.Info("delta: the candidate slot holds a torn write; erasing it again", "err", err)
		a.mu.Lock()
		a.st.SlotOpen = false
		a.mu.Unlock()
		digest, err = a.applyDelta(ctx, info, dim, im, srcs, plan, dk)
	}
	if err != nil || dk == nil {
		return digest, err
	}
	// The result is the image's plaintext: it checked against the signed
	// plaintext digest (applyDelta), so the slot holds the decryption of
	// the signed ciphertext, which is what image-match is asked about.
	return im.Digest, nil
}

// deltaKeys are the content ciphers of an encrypted delta: the delta's
// (the staged delta is its ciphertext) and the image's (its plaintext
// digest checks the result; with an encrypted slot, it encrypts the
// result into the slot).
type deltaKeys struct {
	delta *suit.ContentCipher
	image *encUpdate
}

// deltaKeys returns the keys of the delta info describes, nil for a plain
// image and delta. A delta to an encrypted image must be encrypted, and
// only then: its content key is unwrapped with the image's DeltaKEK
// before anything is fetched (a delta whose key does not unwrap is
// refused, and the full image taken).
func (a *Agent) deltaKeys(ctx context.Context, m *suit.Manifest, info suit.DeltaInfo) (*deltaKeys, error) {
	u, err := a.contentKey(ctx, m)
	if err != nil {
		return nil, err
	}
	switch {
	case u == nil && info.Encryption == nil:
		return nil, nil
	case u == nil:
		return nil, permanent(schemas.CodeMalformed, errors.New("an encrypted delta to a plain image"))
	case info.Encryption == nil:
		return nil, permanent(schemas.CodeMalformed, errors.New("a plain delta to an encrypted image (it would hold the image's plaintext)"))
	}
	dcc, err := info.Encryption.DeltaCipher(ctx, u.cc)
	if err != nil {
		code, _ := classify(err)
		return nil, permanent(code, fmt.Errorf("encrypted delta: %w", err))
	}
	return &deltaKeys{delta: dcc, image: u}, nil
}

// cipherReaderAt reads the plaintext of a ciphertext at rest (the staged
// encrypted delta): AES-CTR at each read's offset.
type cipherReaderAt struct {
	r  io.ReaderAt
	cc *suit.ContentCipher
}

func (c cipherReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	if xerr := c.cc.XORAt(p[:n], p[:n], uint64(off)); xerr != nil && err == nil {
		err = xerr
	}
	return n, err
}

// applyDelta opens the candidate (deltaCandidate), stages the delta and
// applies it.
func (a *Agent) applyDelta(ctx context.Context, info suit.DeltaInfo, dim, im fetcher.Image, srcs []fetcher.Source, plan fetcher.Plan, dk *deltaKeys) ([]byte, error) {
	dir := a.deltaDir()
	cand, err := a.deltaCandidate(ctx, info, im.Size)
	if err != nil {
		return nil, err
	}
	// Stage the delta: chunks arrive in any order, each checked against
	// the delta's signed chunk table, the whole against its digest.
	staged, err := os.OpenFile(filepath.Join(dir, deltaStaged), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, transient(schemas.CodeInternal, err)
	}
	defer staged.Close()
	if err := a.fetchInto(ctx, dim, srcs, plan, filepath.Join(dir, deltaFetch), staged, false); err != nil {
		return nil, err
	}
	var sr io.ReaderAt = staged
	target := im.Digest
	var dst io.WriterAt = cand
	if dk != nil {
		// The staged delta stays ciphertext at rest (each chunk checked
		// against the signed ciphertext table); it is decrypted as it is
		// read, and the result checked against the image's signed
		// plaintext digest. An encrypted slot receives the result
		// encrypted again with the image's key: the signed ciphertext.
		sr, target = cipherReaderAt{staged, dk.delta}, dk.image.plain
		a.mu.Lock()
		keep := a.st.CipherSlot
		a.mu.Unlock()
		if keep {
			dst = newDecryptSink(slotSink{cand, a.cfg.Boot.Flash()}, dk.image.cc)
		}
	}
	p, err := delta.Open(sr, int64(info.Size))
	if err != nil {
		return nil, permanent(schemas.CodeMalformed, err)
	}
	h := p.Header()
	if !bytes.Equal(h.TargetDigest[:], target) || h.TargetSize != im.Size {
		if dk != nil {
			return nil, permanent(schemas.CodeDigest, fmt.Errorf("%w: the delta does not make the image the manifest signs", suit.ErrPlaintextDigest))
		}
		return nil, permanent(schemas.CodeDigest, fmt.Errorf("the delta makes image %s (%d bytes), the manifest signs %s (%d bytes)",
			short(h.TargetDigest[:]), h.TargetSize, short(im.Digest), im.Size))
	}
	if err := h.CheckSource(info.SourceSize, [32]byte(info.SourceDigest)); err != nil {
		return nil, permanent(schemas.CodeDigest, err)
	}
	hdr, src, err := a.dev().ActiveImage()
	if err != nil {
		return nil, err
	}
	if err := h.CheckSource(hdr.Size, hdr.Digest); err != nil {
		return nil, permanent(schemas.CodeDigest, err)
	}
	// Apply, resuming from the last checkpoint of this delta.
	cpPath := filepath.Join(dir, deltaCheckpoint)
	opts := []delta.ApplyOption{delta.WithCheckpoints(func(_ context.Context, cp delta.Checkpoint) error {
		b, err := cp.MarshalBinary()
		if err != nil {
			return err
		}
		if a.cfg.NoSync {
			return atomicfile.WriteFileNoSync(cpPath, b, 0o600)
		}
		return atomicfile.WriteFile(cpPath, b, 0o600)
	}, 1)}
	from := 0
	if b, err := os.ReadFile(cpPath); err == nil {
		var cp delta.Checkpoint
		if cp.UnmarshalBinary(b) == nil && cp.Delta == p.ID() {
			opts = append(opts, delta.WithResume(cp))
			from = cp.Frames
		}
	}
	_ = a.report(ctx, schemas.StateDownloading, schemas.CodeNone, fmt.Sprintf("applying delta %s from frame %d of %d", short(info.Digest), from, h.Frames))
	res, err := p.Apply(ctx, src, dst, opts...)
	a.log.Info("delta apply", "from_frame", res.From, "frames", res.Applied, "err", err)
	if err != nil {
		if errors.Is(err, delta.ErrWrongSource) || errors.Is(err, delta.ErrCorrupt) {
			return nil, permanent(schemas.CodeDigest, err)
		}
		return nil, err
	}
	if dk != nil && !bytes.Equal(res.Digest[:], target) {
		return nil, permanent(schemas.CodeDigest, fmt.Errorf("%w: the delta's result does not match the signed digest", suit.ErrPlaintextDigest))
	}
	return res.Digest[:], nil
}

// deltaCandidate opens the candidate slot for the delta's result: reopened
// when the delta was already being applied into it (a resume), erased
// otherwise, with the slot and the delta persisted first.
func (a *Agent) deltaCandidate(ctx context.Context, info suit.DeltaInfo, size uint64) (*bootctl.Candidate, error) {
	dir := a.deltaDir()
	a.mu.Lock()
	slot, resume := a.st.Slot, a.st.SlotOpen && bytes.Equal(a.st.Delta, info.Digest)
	a.mu.Unlock()
	if resume {
		return a.dev().ResumeCandidate(ctx, slot, size)
	}
	if slot < 0 {
		var err error
		if slot, err = a.dev().FreeSlot(); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	a.st.Slot, a.st.Bytes, a.st.Deferred, a.st.SlotOpen = slot, 0, "", false
	a.st.Delta, a.st.DeltaSize = slices.Clone(info.Digest), info.Size
	a.st.CipherSlot = a.keepsCiphertextLocked()
	a.mu.Unlock()
	// Persisted before the slot is erased; the full image's progress is
	// discarded (the slot is erased again), and so is an earlier apply's
	// checkpoint. The staged delta and its fetch progress are kept: they
	// are checked against the delta's signed chunk table again.
	if err := a.setState(ctx, schemas.StateDownloading, schemas.CodeNone,
		fmt.Sprintf("slot %d, delta %s from the running image", slot, short(info.Digest))); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, deltaFetch), 0o700); err != nil {
		return nil, transient(schemas.CodeInternal, err)
	}
	if err := errors.Join(fetcher.Discard(a.fetchTo), removeIfExists(filepath.Join(dir, deltaCheckpoint))); err != nil {
		return nil, transient(schemas.CodeInternal, err)
	}
	cand, err := a.dev().OpenCandidate(ctx, slot, size)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.st.SlotOpen = true
	a.mu.Unlock()
	return cand, a.save()
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// deltaSources are the sources of a delta: the broker (its broadcast and
// repair, by the delta's digest), the delta's signed URIs in order, the
// object store and the configured sources.
func (a *Agent) deltaSources(info suit.DeltaInfo) ([]fetcher.Source, fetcher.Plan) {
	// The image's own URIs are not the delta's: build the sources of a
	// manifest-less fetch, then add the delta's URIs.
	srcs, _ := a.sources(nil)
	var plan fetcher.Plan
	seen := map[string]bool{}
	for _, s := range srcs {
		seen[s.Name()] = true
	}
	price := a.priceOf()
	for _, u := range info.URIs {
		us, why := a.uriSources(u, price)
		if why != "" {
			a.log.Warn("delta URI not used", "uri", u, "why", why)
		}
		for _, s := range us {
			if !seen[s.Name()] {
				seen[s.Name()] = true
				srcs = append(srcs, s)
				plan.Names = append(plan.Names, s.Name())
			}
		}
	}
	if len(plan.Names) > 0 {
		plan.Mode = fetcher.PlanOrdered
		plan.Names = append(plan.Names, "broker")
	}
	return srcs, plan
}
