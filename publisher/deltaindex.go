package publisher

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// The delta index is the bucket <ns>_deltas: a key "<base>.<delta>" (an
// empty value) for each stored delta and each of the two images it is
// based on (Image.DeltaFrom and DeltaTo). The deltas based on an image
// are the keys under "<base>.", listed by the server's subject filter, so
// deleting an image and finding an existing delta read the few records
// of those deltas, never every image's. The keys are written before the
// delta's record (MakeDelta's commit point) and deleted after it, so
// every stored delta is in the index; a key whose delta has no record (a
// creation that failed after the index write, a deletion that stopped
// before the clean-up) is skipped by its readers.

// deltaIndexDone is the index bucket's key that says the deltas stored
// before the index existed were indexed (migrateDeltaIndex).
const deltaIndexDone = "indexed"

// indexDelta adds the keys of delta d (d.DeltaFrom and d.DeltaTo set).
func (p *Publisher) indexDelta(ctx context.Context, d Image) error {
	for _, base := range []string{d.DeltaFrom, d.DeltaTo} {
		key := base + "." + d.Digest
		if err := withRetry(ctx, func(ctx context.Context, _ bool) error {
			_, err := p.st.deltas.Put(ctx, key, nil)
			return err
		}); err != nil {
			return fmt.Errorf("publisher: index delta %s: %w", d.Digest, err)
		}
	}
	return nil
}

// unindexDelta removes the keys of delta d, whose record was deleted. A
// key left behind is logged: its readers skip it.
func (p *Publisher) unindexDelta(ctx context.Context, d Image) {
	for _, base := range []string{d.DeltaFrom, d.DeltaTo} {
		key := base + "." + d.Digest
		if err := withRetry(ctx, func(ctx context.Context, _ bool) error {
			return p.st.deltas.Delete(ctx, key)
		}); err != nil {
			p.log.Warn("delta deleted, but not its index key", "delta", d.Digest, "key", key, "err", err)
		}
	}
}

// deltasOf returns the stored deltas based on image base (their source
// or their target), read from the index: one filtered key listing and
// one record read a delta.
func (p *Publisher) deltasOf(ctx context.Context, base string) ([]Image, error) {
	if _, err := parseDigest(base); err != nil {
		return nil, err
	}
	var keys []string
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		keys = keys[:0]
		kl, err := p.st.deltas.ListKeysFiltered(ctx, base+".*")
		if err != nil {
			return err
		}
		defer kl.Stop()
		for k := range kl.Keys() {
			keys = append(keys, k)
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: list the deltas of %s: %w", base, err)
	}
	var out []Image
	for _, k := range keys {
		img, err := p.Image(ctx, strings.TrimPrefix(k, base+"."))
		if errors.Is(err, ErrNotFound) {
			continue // not committed, or deleted before its key
		}
		if err != nil {
			return nil, err
		}
		if img.DeltaFrom == base || img.DeltaTo == base {
			out = append(out, img)
		}
	}
	return out, nil
}

// migrateDeltaIndex indexes the deltas stored before the index existed,
// once per installation: it reads every image record, then writes the
// key deltaIndexDone. Publishers that run it at once write the same
// keys. It runs when a publisher starts.
func (p *Publisher) migrateDeltaIndex(ctx context.Context) error {
	var done bool
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		_, err := p.st.deltas.Get(ctx, deltaIndexDone)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		done = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("publisher: delta index: %w", err)
	}
	if done {
		return nil
	}
	imgs, err := p.Images(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, img := range imgs {
		if img.DeltaFrom == "" {
			continue
		}
		if err := p.indexDelta(ctx, img); err != nil {
			return err
		}
		n++
	}
	if err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		_, err := p.st.deltas.Put(ctx, deltaIndexDone, nil)
		return err
	}); err != nil {
		return fmt.Errorf("publisher: delta index: %w", err)
	}
	if n > 0 {
		p.log.Info("deltas indexed", "deltas", n)
	}
	return nil
}
