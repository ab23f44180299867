package publisher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/jsensure"
	"github.com/firmcast/firmcast/schemas"
)

// stores are the JetStream buckets and streams of one namespace.
type stores struct {
	images    jetstream.ObjectStore // image bytes and chunk tables
	imageMeta jetstream.KeyValue    // hex digest -> Image (JSON)
	devices   jetstream.KeyValue    // device id -> Device (JSON)
	keys      jetstream.KeyValue    // key id -> APIKey (JSON)
	campaigns jetstream.KeyValue    // campaign id -> Campaign (JSON)
	campdev   jetstream.KeyValue    // "<campaign>.<device>" -> DeviceState (JSON)
	lease     jetstream.KeyValue    // "leader" -> lease (JSON)
	audit     jetstream.Stream      // append-only audit log
	auditSubj string
}

// openStores opens or creates the namespace's buckets and streams, each
// the way old servers survive (internal/jsensure: create; update only a
// configuration that really differs), so that replicas starting together
// never race an update against a create. The audit stream's subject lies under the topic root (root.audit.<ns>, beside
// and never under root.v1), so the access policy that lets a backend
// identity publish under its root covers it whatever the namespace.
func openStores(ctx context.Context, js jetstream.JetStream, topics schemas.Topics, ns string, replicas int) (*stores, error) {
	s := &stores{auditSubj: strings.ReplaceAll(topics.Root(), "/", ".") + ".audit." + ns}
	var err error
	s.images, err = jsensure.ObjectStore(ctx, js, jetstream.ObjectStoreConfig{
		Bucket: ns + "_images", Description: "firmcast images and chunk tables", Storage: jetstream.FileStorage,
		Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("publisher: image store: %w", err)
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
	if s.campdev, err = kv("campdev", "firmcast per-device campaign state", 1); err != nil {
		return nil, err
	}
	if s.lease, err = kv("lease", "firmcast leader lease", 1); err != nil {
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
// reply is lost (the server that took it dies, a leader election) would
// otherwise wait for the caller's whole deadline; with a long-lived
// caller context that stalls a report worker or the leader's tick for
// that long. The callers retry (the next tick, the device's next report,
// reconcile), so an operation that times out costs at most this.
const kvOpTimeout = 5 * time.Second

// opCtx returns ctx bounded by kvOpTimeout.
func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, kvOpTimeout)
}

// getJSON reads key into v and returns its revision; ErrNotFound (wrapped,
// naming what) when absent.
func getJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any) (uint64, error) {
	ctx, cancel := opCtx(ctx)
	defer cancel()
	e, err := kv.Get(ctx, key)
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

// createJSON stores v under key only if key is absent (ErrExists otherwise).
func createJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("publisher: encode %s: %w", what, err)
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	rev, err := kv.Create(ctx, key, b)
	if isConflict(err) {
		return 0, fmt.Errorf("%w: %s %q", ErrExists, what, key)
	}
	if err != nil {
		return 0, fmt.Errorf("publisher: store %s %q: %w", what, key, err)
	}
	return rev, nil
}

// updateJSON replaces key at revision rev; it returns a wrapped
// jetstream.ErrKeyRevisionMismatch when another writer came first.
func updateJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("publisher: encode %s: %w", what, err)
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	nrev, err := kv.Update(ctx, key, b, rev)
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
