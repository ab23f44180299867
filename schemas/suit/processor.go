package suit

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// DefaultMaxImageSize bounds fetch, copy and write when the manifest sets
// no image size.
const DefaultMaxImageSize = 64 << 20

// Processor runs a verified manifest's command sequences against a Target.
// Set its fields and call Update, Boot or Run; it keeps no state between
// calls and is safe to copy. A Processor is not safe for concurrent use
// with the same Target unless the Target is.
//
// Semantics (draft-ietf-suit-manifest-34 section 6): parameters are kept per
// component; set-component-index selects one component, a list, or all
// (true), and every other command then runs once per selected component.
// A failure inside a try-each branch (a condition that does not hold, but
// also a directive that fails, such as a fetch from an unreachable URI or
// an oversize payload) ends that branch, restores the parameters as they
// were before it, and moves to the next branch; a final nil branch makes
// try-each succeed when all fail. In run-sequence, a failure ends the
// nested sequence without error when soft-failure is true. Unknown commands,
// unsupported elements, abort and cancellation always end processing.
// Fetched, copied and written content is streamed into the Target bounded by
// image-size (or MaxImageSize) and committed only when complete; the
// following image-match condition is what accepts it.
//
// Encrypted payloads (draft-ietf-suit-firmware-encryption): when a
// component's parameter-encryption-info is set, fetch, copy and write
// decrypt what they write, with a content key one of the info's
// recipients (or Recipients) carries for Keys. A payload whose key does
// not unwrap is refused before the Target is asked to write. Nothing
// decrypted is committed unless it authenticates: an AES-GCM payload by
// its tag, and any payload against the component's signed image-digest
// (and image-size) when set; an AES-CTR payload must have one. The
// encryption info is taken only from the verified manifest's parameters.
type Processor struct {
	// Target is the device acted on. Required.
	Target Target
	// InstalledSeq is the sequence number of the installed manifest. A
	// manifest with a lower one is refused with ErrRollback before anything
	// runs; an equal one is the same update, run again (after a power cut,
	// or the installed manifest validated at boot).
	InstalledSeq uint64
	// Now is the clock for condition-use-before. Nil means time.Now.
	Now func() time.Time
	// MaxImageSize bounds fetched, copied and written content when the
	// image-size parameter is unset. Zero means DefaultMaxImageSize.
	MaxImageSize uint64
	// Keys unwraps content keys for encrypted payloads: the device's root
	// of trust (KEK, ECDHKey, Keyring, or a secure element). Nil: every
	// encrypted payload is refused with ErrNoRecipient.
	Keys KeyUnwrapper
	// Recipients are wrapped content keys delivered apart from the manifest
	// (firmcast's per-device recipient, in the device's own notice), tried
	// after the manifest's own recipients of the same payload. They can
	// only supply a content key: the algorithm, the IV and what
	// authenticates the plaintext (the GCM tag, the signed image digest)
	// always come from the signed manifest, so a recipient from anywhere
	// cannot change what is installed.
	Recipients []Recipient
}

// Report is what ran: one Record per command whose reporting policy asked
// for it, in execution order. It is the base of the device report.
type Report struct {
	Seq     uint64
	Digest  Digest
	Records []Record
}

// Record is one reported command.
type Record struct {
	// Sequence is the top-level sequence (SeqInstall...) the command ran in.
	Sequence  string
	Component int
	Label     int64
	Name      string
	OK        bool
	// Err is the failure, for failed commands.
	Err string
	// Params are the component's parameters when the command ran, when the
	// policy asked for system information (SysinfoSuccess/SysinfoFailure).
	Params *Params
}

// Update runs payload-fetch then install (each after the shared sequence),
// the update procedure. It returns the report so far and the first error.
func (p Processor) Update(ctx context.Context, m *Manifest) (*Report, error) {
	return p.Run(ctx, m, SeqPayloadFetch, SeqInstall)
}

// Boot runs validate, load then invoke (each after the shared sequence),
// the invocation procedure.
func (p Processor) Boot(ctx context.Context, m *Manifest) (*Report, error) {
	return p.Run(ctx, m, SeqValidate, SeqLoad, SeqInvoke)
}

// Run runs the named sequences of m in order, each preceded by the shared
// sequence with fresh parameters and component index 0; absent sequences
// are skipped. It refuses a manifest Verify did not return (ErrNotVerified)
// and one older than InstalledSeq (ErrRollback). Failures wrap the
// sentinels: ErrConditionFailed, ErrExpired, ErrAborted, ErrUnknownCommand,
// ErrUnsupported, ErrParameter, ErrTooLarge, ErrSeveredMissing, or the
// Target's error; a failed command is reported as a *CommandError. Code
// maps any of them to a device report code.
func (p Processor) Run(ctx context.Context, m *Manifest, names ...string) (*Report, error) {
	if p.Target == nil {
		return nil, fmt.Errorf("%w: processor has no target", ErrParameter)
	}
	if !m.Verified() {
		return nil, ErrNotVerified
	}
	if len(m.Components) == 0 {
		return nil, fmt.Errorf("%w: manifest has no components", ErrMalformed)
	}
	rep := &Report{Seq: m.Seq, Digest: m.Digest}
	if m.Seq < p.InstalledSeq {
		return rep, fmt.Errorf("%w: manifest sequence number %d is lower than the installed %d", ErrRollback, m.Seq, p.InstalledSeq)
	}
	for _, name := range names {
		seq, err := m.Sequence(name)
		if err != nil {
			return rep, err
		}
		if seq == nil {
			continue
		}
		r := &run{p: &p, m: m, rep: rep, params: make([]*Params, len(m.Components))}
		for i := range r.params {
			r.params[i] = &Params{}
		}
		r.name = name
		if err := r.sequence(ctx, m.Shared, []int{0}); err != nil {
			return rep, fmt.Errorf("%s (shared sequence): %w", name, err)
		}
		if err := r.sequence(ctx, seq, []int{0}); err != nil {
			return rep, fmt.Errorf("%s: %w", name, err)
		}
	}
	return rep, nil
}

// run is the state of one top-level sequence.
type run struct {
	p      *Processor
	m      *Manifest
	rep    *Report
	name   string
	params []*Params
	depth  int
	steps  int
}

// maxSteps bounds the commands one top-level sequence may execute, nested
// run-sequence and try-each included.
const maxSteps = 1 << 16

var errSteps = fmt.Errorf("%w: more than %d commands executed", ErrTooLarge, maxSteps)

// soft reports whether err ends only the current try-each branch.
func soft(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, ErrUnknownCommand), errors.Is(err, ErrUnsupported),
		errors.Is(err, ErrAborted), errors.Is(err, ErrRollback), errors.Is(err, ErrMalformed),
		errors.Is(err, errSteps):
		return false
	}
	return true
}

// sequence runs s with the component selection sel.
func (r *run) sequence(ctx context.Context, s Sequence, sel []int) error {
	if r.depth > maxSequenceDepth {
		return fmt.Errorf("%w: sequences nested too deep", ErrMalformed)
	}
	r.depth++
	defer func() { r.depth-- }()
	for _, c := range s {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.steps++; r.steps > maxSteps {
			return errSteps
		}
		switch c.Label {
		case DirSetComponentIdx:
			next, err := r.selection(c.Index)
			if err != nil {
				return err
			}
			sel = next
		case DirOverrideParams, DirSetParameters:
			for l := range c.Params.Other {
				if l >= 0 {
					return fmt.Errorf("%w: %s: parameter %s", ErrUnsupported, c.Name(), ParamName(l))
				}
			}
			for _, i := range sel {
				r.params[i].merge(c.Params, c.Label == DirSetParameters)
			}
		case DirTryEach:
			if err := r.tryEach(ctx, c, sel); err != nil {
				return err
			}
		case DirRunSequence:
			for _, i := range sel {
				err := r.sequence(ctx, c.Run, []int{i})
				if err != nil && !(r.softFailure(i) && soft(err)) {
					return err
				}
			}
		default:
			for _, i := range sel {
				if err := r.command(ctx, c, i); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (r *run) softFailure(i int) bool {
	sf := r.params[i].SoftFailure
	return sf != nil && *sf
}

func (r *run) selection(ia *IndexArg) ([]int, error) {
	n := len(r.m.Components)
	if ia.All {
		sel := make([]int, n)
		for i := range sel {
			sel[i] = i
		}
		return sel, nil
	}
	sel := make([]int, 0, len(ia.List))
	for _, u := range ia.List {
		if u >= uint64(n) {
			return nil, fmt.Errorf("%w: set-component-index %d of %d components", ErrParameter, u, n)
		}
		sel = append(sel, int(u))
	}
	return sel, nil
}

// tryEach runs each branch on a copy of the parameters until one succeeds.
func (r *run) tryEach(ctx context.Context, c Command, sel []int) error {
	var last error
	for bi, branch := range c.Try {
		saved := make([]*Params, len(r.params))
		for i, p := range r.params {
			saved[i] = p.clone()
		}
		err := r.sequence(ctx, branch, sel)
		if err == nil {
			return nil
		}
		if !soft(err) {
			return err
		}
		r.params = saved
		last = fmt.Errorf("try-each branch %d: %w", bi, err)
	}
	if c.TryEmpty {
		return nil
	}
	return last
}

// command runs one condition or directive on component i and records it.
// Failures are returned as *CommandError.
func (r *run) command(ctx context.Context, c Command, i int) error {
	err := r.exec(ctx, c, i)
	if err != nil {
		err = &CommandError{Sequence: r.name, Component: i, Label: c.Label, Err: err}
	}
	pol := c.Policy
	rec := Record{Sequence: r.name, Component: i, Label: c.Label, Name: c.Name(), OK: err == nil}
	switch {
	case err == nil && pol&RecordSuccess != 0, err != nil && pol&RecordFailure != 0:
	case err == nil && pol&SysinfoSuccess != 0, err != nil && pol&SysinfoFailure != 0:
	default:
		return err
	}
	if err != nil {
		rec.Err = err.Error()
	}
	if (err == nil && pol&SysinfoSuccess != 0) || (err != nil && pol&SysinfoFailure != 0) {
		rec.Params = r.params[i].clone()
	}
	r.rep.Records = append(r.rep.Records, rec)
	return err
}

func (r *run) exec(ctx context.Context, c Command, i int) error {
	p := r.params[i]
	t := r.p.Target
	switch c.Label {
	case CondVendorID, CondClassID, CondDeviceID:
		return r.identity(ctx, c, p)
	case CondImageMatch, CondImageNotMatch:
		ok, err := r.imageMatch(ctx, i, p)
		if err != nil {
			return err
		}
		if ok != (c.Label == CondImageMatch) {
			return ErrConditionFailed
		}
		return nil
	case CondCheckContent:
		if p.Content == nil {
			return fmt.Errorf("%w: content not set", ErrParameter)
		}
		got, err := r.read(ctx, i, uint64(len(p.Content)))
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(got, p.Content) != 1 {
			return ErrConditionFailed
		}
		return nil
	case CondComponentSlot:
		if p.ComponentSlot == nil {
			return fmt.Errorf("%w: component-slot not set", ErrParameter)
		}
		sr, ok := t.(SlotReporter)
		if !ok {
			return fmt.Errorf("%w: target has no slots", ErrUnsupported)
		}
		slot, err := sr.Slot(ctx, i)
		if err != nil {
			return err
		}
		if slot != *p.ComponentSlot {
			return fmt.Errorf("%w: slot %d, manifest wants %d", ErrConditionFailed, slot, *p.ComponentSlot)
		}
		return nil
	case CondUseBefore:
		if p.UseBefore == nil {
			return fmt.Errorf("%w: use-before not set", ErrParameter)
		}
		now := time.Now
		if r.p.Now != nil {
			now = r.p.Now
		}
		if t := now(); t.Unix() >= 0 && uint64(t.Unix()) > *p.UseBefore {
			return fmt.Errorf("%w: use-before %s passed (now %s)", ErrExpired,
				time.Unix(int64(*p.UseBefore), 0).UTC().Format(time.RFC3339), t.UTC().Format(time.RFC3339))
		}
		return nil
	case CondAbort:
		return ErrAborted
	case DirFetch:
		src, err := r.fetchSource(ctx, i, p)
		if err != nil {
			return err
		}
		return r.write(ctx, i, p, src, false)
	case DirCopy:
		if p.SourceComponent == nil {
			return fmt.Errorf("%w: source-component not set", ErrParameter)
		}
		s := *p.SourceComponent
		if s >= uint64(len(r.m.Components)) || int(s) == i {
			return fmt.Errorf("%w: source-component %d", ErrParameter, s)
		}
		src, err := t.Open(ctx, int(s))
		if err != nil {
			return err
		}
		return r.write(ctx, i, p, src, true)
	case DirWrite:
		if p.Content == nil {
			return fmt.Errorf("%w: content not set", ErrParameter)
		}
		return r.write(ctx, i, p, io.NopCloser(bytes.NewReader(p.Content)), false)
	case DirInvoke:
		return t.Invoke(ctx, i, p)
	}
	if ext, ok := t.(Extension); ok {
		return ext.Command(ctx, i, c, p)
	}
	if _, known := commandNames[c.Label]; known {
		return fmt.Errorf("%w: not implemented by the target", ErrUnsupported)
	}
	return ErrUnknownCommand
}

func (r *run) identity(ctx context.Context, c Command, p *Params) error {
	id, err := r.p.Target.Identity(ctx)
	if err != nil {
		return err
	}
	var want []byte
	var have [][]byte
	switch c.Label {
	case CondVendorID:
		want, have = p.VendorID, [][]byte{id.VendorID}
	case CondClassID:
		want, have = p.ClassID, id.ClassIDs
	default:
		want, have = p.DeviceID, [][]byte{id.DeviceID}
	}
	if want == nil {
		return fmt.Errorf("%w: parameter not set", ErrParameter)
	}
	for _, h := range have {
		if bytes.Equal(h, want) {
			return nil
		}
	}
	return fmt.Errorf("%w: manifest %x, device %x", ErrConditionFailed, want, have)
}

func (r *run) limit(p *Params) uint64 {
	if p.ImageSize != nil {
		return *p.ImageSize
	}
	if r.p.MaxImageSize > 0 {
		return r.p.MaxImageSize
	}
	return DefaultMaxImageSize
}

func (r *run) imageMatch(ctx context.Context, i int, p *Params) (bool, error) {
	if p.ImageDigest == nil {
		return false, fmt.Errorf("%w: image-digest not set", ErrParameter)
	}
	if im, ok := r.p.Target.(ImageMatcher); ok {
		return im.MatchImage(ctx, i, *p.ImageDigest, p.ImageSize)
	}
	h, err := newHash(p.ImageDigest.Alg)
	if err != nil {
		return false, err
	}
	src, err := r.p.Target.Open(ctx, i)
	if err != nil {
		return false, err
	}
	defer src.Close()
	n, err := io.Copy(h, io.LimitReader(src, int64(r.limit(p))))
	if err != nil {
		return false, fmt.Errorf("suit: reading component %d: %w", i, err)
	}
	if p.ImageSize != nil && uint64(n) != *p.ImageSize {
		return false, nil
	}
	return subtle.ConstantTimeCompare(h.Sum(nil), p.ImageDigest.Bytes) == 1, nil
}

// read returns the first n bytes of component i.
func (r *run) read(ctx context.Context, i int, n uint64) ([]byte, error) {
	src, err := r.p.Target.Open(ctx, i)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	b, err := io.ReadAll(io.LimitReader(src, int64(n)))
	if err != nil {
		return nil, fmt.Errorf("suit: reading component %d: %w", i, err)
	}
	return b, nil
}

func (r *run) fetchSource(ctx context.Context, i int, p *Params) (io.ReadCloser, error) {
	if p.URI != nil && strings.HasPrefix(*p.URI, "#") {
		b, ok := r.m.Integrated[strings.TrimPrefix(*p.URI, "#")]
		if !ok {
			return nil, fmt.Errorf("%w: fetch: no integrated payload %q", ErrParameter, *p.URI)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return r.p.Target.Fetch(ctx, i, p)
}

// write streams src into component i, bounded by the image size, and
// commits only when the content arrived within bounds. A fetched payload
// must fit; a copy source (a slot, maybe larger than the image) is read up
// to the bound only. With encryption info, the content key is unwrapped
// before the Target is asked to write, and the plaintext is committed only
// once it authenticates (decryptTo).
func (r *run) write(ctx context.Context, i int, p *Params, src io.ReadCloser, fromComponent bool) (err error) {
	defer src.Close()
	var dec *ContentCipher
	if info := p.EncryptionInfo; info != nil {
		if contentKeySize(info.Alg) != 0 && !isGCM(info.Alg) && p.ImageDigest == nil {
			return fmt.Errorf("%w: %s payload without image-digest (nothing decrypted counts until a signed digest checks)", ErrParameter, encAlgName(info.Alg))
		}
		if dec, err = r.contentCipher(ctx, info); err != nil {
			return err
		}
	}
	w, err := r.p.Target.Write(ctx, i, p)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = w.Abort()
		}
	}()
	max := r.limit(p)
	if dec != nil {
		if err := r.decryptTo(w, src, dec, p, max, fromComponent); err != nil {
			return err
		}
		return w.Commit()
	}
	read := max + 1
	if fromComponent {
		read = max
	}
	n, err := io.Copy(w, io.LimitReader(src, int64(read)))
	if err != nil {
		return fmt.Errorf("suit: writing component %d: %w", i, err)
	}
	if uint64(n) > max {
		return fmt.Errorf("%w: component %d content over %d bytes", ErrTooLarge, i, max)
	}
	return w.Commit()
}
