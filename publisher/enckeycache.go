package publisher

import (
	"context"
	"fmt"
	"sync"

	"github.com/firmcast/firmcast/schemas/suit"
)

// contentKeys keeps, per encrypted payload (image or delta), its key
// record and its content cipher unwrapped with the custody key, so that
// the notices of a campaign (one per device, built one after the other
// as its devices are admitted) do not read, decode and unwrap them again
// each: BenchmarkNotice100. A payload's key record is written once,
// before the payload is visible, and never changed, so an entry is never
// stale. At most maxContentKeys are kept (the whole map is dropped when
// full: campaigns at a time are few). Safe for concurrent use.
type contentKeys struct {
	mu sync.Mutex
	m  map[string]*contentKey
}

// contentKey is an encrypted payload's key record, its decoded
// encryption parameter and its content cipher (safe for concurrent use:
// it is read only).
type contentKey struct {
	rec imageKeyRecord
	enc *suit.ImageEncryption
	cc  *suit.ContentCipher
}

const maxContentKeys = 64

// contentKey returns the encrypted payload digest's key record,
// encryption parameter and content cipher (ErrNotFound for a payload that
// is not encrypted; ErrNoSigner without a custody key).
func (p *Publisher) contentKey(ctx context.Context, digest string) (*contentKey, error) {
	p.ckeys.mu.Lock()
	k, ok := p.ckeys.m[digest]
	p.ckeys.mu.Unlock()
	if ok {
		return k, nil
	}
	cust, err := p.custody()
	if err != nil {
		return nil, err
	}
	rec, enc, err := p.imageKey(ctx, digest)
	if err != nil {
		return nil, err
	}
	cc, err := enc.ContentCipher(ctx, cust)
	if err != nil {
		return nil, fmt.Errorf("publisher: content key of %s: %w", digest, err)
	}
	k = &contentKey{rec: rec, enc: enc, cc: cc}
	p.ckeys.mu.Lock()
	if p.ckeys.m == nil || len(p.ckeys.m) >= maxContentKeys {
		p.ckeys.m = map[string]*contentKey{}
	}
	p.ckeys.m[digest] = k
	p.ckeys.mu.Unlock()
	return k, nil
}
