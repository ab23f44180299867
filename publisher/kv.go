package publisher

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"

	"github.com/firmcast/firmcast/internal/jsensure"
	"github.com/firmcast/firmcast/schemas"
)

// stores are the JetStream buckets and streams of one namespace.
type stores struct {
	images    *imageStore        // image bytes (one message per chunk) and chunk tables
	imageMeta jetstream.KeyValue // hex digest -> Image (JSON)
	devices   jetstream.KeyValue // device id -> Device (JSON)
	keys      jetstream.KeyValue // key id -> APIKey (JSON)
	campaigns jetstream.KeyValue // campaign id -> Campaign (JSON)
	campdev   *partitions        // "<campaign>.<device>" -> DeviceState (JSON), partitioned by device (partition.go)
	lease     jetstream.KeyValue // "leader" -> lease (JSON)
	cryptKeys jetstream.KeyValue // "dev.<id>" -> deviceKeyRecord, "img.<digest>" -> imageKeyRecord (JSON; keys wrapped)
	deltas    jetstream.KeyValue // "<image>.<delta>" -> empty: the deltas based on an image (deltaindex.go)
	audit     jetstream.Stream   // append-only audit log
	auditSubj string
}

// openStores opens or creates the namespace's buckets and streams, each
// the way old servers survive (internal/jsensure: create; update only a
// configuration that really differs), so that replicas starting together
// never race an update against a create. The audit stream's subject lies
// under the topic root (root.audit.<ns>, beside and never under root.v1),
// so the access policy that lets a backend identity publish under its root
// covers it whatever the namespace; so does the image stream's
// (root.images.<ns>, see imageStore).
func openStores(ctx context.Context, js jetstream.JetStream, topics schemas.Topics, ns string, replicas, parts int) (*stores, error) {
	s := &stores{auditSubj: strings.ReplaceAll(topics.Root(), "/", ".") + ".audit." + ns}
	var err error
	if s.images, err = openImageStore(ctx, js, strings.ReplaceAll(topics.Root(), "/", "."), ns, replicas); err != nil {
		return nil, err
	}
	kv := func(name, desc string, history uint8) (jetstream.KeyValue, error) {
		b, err := jsensure.KeyValue(ctx, js, jetstream.KeyValueConfig{
			Bucket: ns + "_" + name, Description: desc, History: history, Storage: jetstream.FileStorage,
			Replicas: replicas,
		})
		if err != nil {
			return nil, fmt.Errorf("publisher: kv %s: %w", name, err)
		}
		if replicas > 1 {
			b = newLeaderReadKV(js, b)
		}
		return b, nil
	}
	if s.imageMeta, err = kv("imagemeta", "firmcast image metadata", 1); err != nil {
		return nil, err
	}
	if s.devices, err = kv("devices", "firmcast device registry", 1); err != nil {
		return nil, err
	}
	if s.keys, err = kv("apikeys", "firmcast API keys (hashed)", 1); err != nil {
		return nil, err
	}
	if s.campaigns, err = kv("campaigns", "firmcast campaigns", 1); err != nil {
		return nil, err
	}
	if s.lease, err = kv("lease", "firmcast leader lease", 1); err != nil {
		return nil, err
	}
	s.campdev = &partitions{}
	for i := range parts {
		desc := "firmcast per-device campaign state" // partition 0: as before partitioning, so its configuration is unchanged
		if i > 0 {
			desc += fmt.Sprintf(" (partition %d of %d)", i, parts)
		}
		b, err := kv(partitionName(i), desc, 1)
		if err != nil {
			return nil, err
		}
		s.campdev.kvs = append(s.campdev.kvs, b)
	}
	if err := checkLayout(ctx, s.lease, s.campdev.kvs[0], parts); err != nil {
		return nil, err
	}
	if s.cryptKeys, err = kv("cryptkeys", "firmcast device and image keys (wrapped with the custody key)", 1); err != nil {
		return nil, err
	}
	if s.deltas, err = kv("deltas", "firmcast delta index: the deltas based on each image", 1); err != nil {
		return nil, err
	}
	s.audit, err = jsensure.Stream(ctx, js, jetstream.StreamConfig{
		Name:        ns + "_audit",
		Description: "firmcast audit log (append-only)",
		Subjects:    []string{s.auditSubj},
		Storage:     jetstream.FileStorage,
		DenyDelete:  true,
		DenyPurge:   true,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: audit stream: %w", err)
	}
	return s, nil
}

// StoreStream reports whether the JetStream stream called name is one of
// the stores of namespace ns: its key-value buckets (KV_<ns>_*), object
// stores (OBJ_<ns>_*, images of earlier versions), the image stream
// (<ns>_images), the audit stream (<ns>_audit) and the event stream
// (<ns>_events). It is what removing an installation (a demo on a shared
// NATS) has to delete.
func StoreStream(ns, name string) bool {
	return strings.HasPrefix(name, "KV_"+ns+"_") || strings.HasPrefix(name, "OBJ_"+ns+"_") ||
		name == ns+"_images" || name == ns+"_audit" || name == ns+"_events"
}

// kvSafe reports whether s is a non-empty run of letters, digits, '-' and
// '_': safe as a KV key token, bucket name part, topic segment and URL part.
func kvSafe(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// randomID returns prefix-<16 hex digits>.
func randomID(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		isWrongLastSequence(err)
}

// isWrongLastSequence reports the "wrong last sequence" error a replicated
// (R>1) stream returns for a compare-and-set that lost: code 10164, which
// nats.go's ErrKeyExists (code 10071) does not match.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == 10071 || apiErr.ErrorCode == 10164)
}

// kvOpTimeout bounds one KV or stream request. A JetStream request whose
// reply is lost (the server that took it dies, a leader election, a
// server too loaded to answer in time) would otherwise wait for the
// caller's whole deadline; with a long-lived caller context that stalls a
// report worker or the leader's tick for that long.
const kvOpTimeout = 5 * time.Second

// kvAttempts bounds the attempts of one KV or stream operation whose
// requests time out (see withRetry); kvBudget bounds their total time
// when the caller's context sets no deadline.
const (
	kvAttempts = 3
	kvBudget   = kvAttempts * kvOpTimeout
)

// opCtx returns ctx bounded by kvOpTimeout.
func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, kvOpTimeout)
}

// timedOut reports whether err says a request got no answer in time, or
// reached no stream (a leader election): the request may or may not have
// taken effect, and the operation may be tried again, in a form safe to
// repeat. An error of ctx itself (the caller gave up) is not one.
func timedOut(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// withRetry runs attempt, each call bounded by kvOpTimeout, and calls it
// again while it times out (timedOut), at most kvAttempts times in all,
// within ctx's deadline or kvBudget when ctx has none, with a short
// backoff. attempt is told whether an earlier call timed out (so a write
// can first find out whether it took effect). It returns attempt's last
// error.
func withRetry(ctx context.Context, attempt func(ctx context.Context, again bool) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, kvBudget)
		defer cancel()
	}
	b := retry.WithMaxRetries(kvAttempts-1, retry.NewExponential(50*time.Millisecond))
	again := false
	var last error
	err := retry.Do(ctx, b, func(ctx context.Context) error {
		actx, cancel := opCtx(ctx)
		defer cancel()
		last = attempt(actx, again)
		if timedOut(ctx, last) {
			again = true
			return retry.RetryableError(last)
		}
		return last
	})
	if last != nil {
		return last
	}
	return err
}

// getJSON reads key into v and returns its revision; ErrNotFound (wrapped,
// naming what) when absent. A read that times out is read again
// (withRetry).
func getJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any) (uint64, error) {
	var e jetstream.KeyValueEntry
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		var err error
		e, err = kv.Get(ctx, key)
		return err
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("%w: %s %q", ErrNotFound, what, key)
	}
	if err != nil {
		return 0, fmt.Errorf("publisher: read %s %q: %w", what, key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("publisher: stored %s %q is corrupt: %w", what, key, err)
	}
	return e.Revision(), nil
}

// written reads key after a write of b to it timed out, to find out
// whether the write took effect: applied when key holds exactly b at a
// revision after rev (0 for a create), absent when key is absent or still
// at rev; otherwise another writer came after (either way the write
// cannot be repeated).
func written(ctx context.Context, kv jetstream.KeyValue, key string, b []byte, rev uint64) (applied, absent bool, cur uint64, err error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, rev == 0, 0, nil
	}
	if err != nil {
		return false, false, 0, err
	}
	if e.Revision() == rev {
		return false, true, rev, nil
	}
	return bytes.Equal(e.Value(), b), false, e.Revision(), nil
}

// createJSON stores v under key only if key is absent (ErrExists
// otherwise). A create that times out is not simply sent again (it may
// have taken effect, and would then fail as "exists"): key is read first,
// and the create counts as done when key holds exactly what it wrote.
func createJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("publisher: encode %s: %w", what, err)
	}
	var rev uint64
	exists := false
	err = withRetry(ctx, func(ctx context.Context, again bool) error {
		if again {
			applied, absent, cur, err := written(ctx, kv, key, b, 0)
			switch {
			case err != nil:
				return err
			case applied:
				rev = cur
				return nil
			case !absent:
				exists = true
				return nil
			}
		}
		var err error
		rev, err = kv.Create(ctx, key, b)
		return err
	})
	if exists || isConflict(err) {
		return 0, fmt.Errorf("%w: %s %q", ErrExists, what, key)
	}
	if err != nil {
		return 0, fmt.Errorf("publisher: store %s %q: %w", what, key, err)
	}
	return rev, nil
}

// updateJSON replaces key at revision rev; it returns a wrapped
// jetstream.ErrKeyRevisionMismatch when another writer came first. An
// update that times out is not simply sent again: key is read first; the
// update counts as done when key holds exactly what it wrote at a later
// revision, is sent again when key is still at rev, and is a conflict
// when another writer changed key meanwhile (the caller then reads again
// and judges afresh, so a transition is never applied twice).
func updateJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("publisher: encode %s: %w", what, err)
	}
	var nrev uint64
	err = withRetry(ctx, func(ctx context.Context, again bool) error {
		if again {
			applied, absent, cur, err := written(ctx, kv, key, b, rev)
			switch {
			case err != nil:
				return err
			case applied:
				nrev = cur
				return nil
			case !absent || cur != rev:
				return fmt.Errorf("%w: %s changed while an update timed out", jetstream.ErrKeyRevisionMismatch, key)
			}
		}
		var err error
		nrev, err = kv.Update(ctx, key, b, rev)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("publisher: update %s %q: %w", what, key, err)
	}
	return nrev, nil
}

// maxCASAttempts bounds compare-and-set retry loops.
const maxCASAttempts = 32

// mutateJSON reads key into a fresh T, applies fn, and writes the result
// back with compare-and-set, retrying on conflict. fn may return
// errNoChange to leave the value as it is. It returns the value written
// (or read, on errNoChange) and its revision.
func mutateJSON[T any](ctx context.Context, kv jetstream.KeyValue, what, key string, fn func(*T) error) (*T, uint64, error) {
	for range maxCASAttempts {
		v := new(T)
		rev, err := getJSON(ctx, kv, what, key, v)
		if err != nil {
			return nil, 0, err
		}
		if err := fn(v); errors.Is(err, errNoChange) {
			return v, rev, nil
		} else if err != nil {
			return nil, 0, err
		}
		nrev, err := updateJSON(ctx, kv, what, key, v, rev)
		if isConflict(err) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return v, nrev, nil
	}
	return nil, 0, fmt.Errorf("%w: %s %q", ErrConflict, what, key)
}

var errNoChange = errors.New("no change")
