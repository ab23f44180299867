package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// leaderReadKV is a replicated KV bucket whose Get, when the direct get
// finds nothing, asks the stream leader before it answers "not found".
//
// nats.go's KV Get is a direct get, answered by any replica. A follower
// may not yet hold a write the leader acknowledged, so a key written a
// moment ago (an image uploaded, then a campaign created for it through
// the other replica of the backend) can read as absent. The NATS
// maintainers' advice for a read that must see acknowledged writes is a
// message get sent to the stream leader ($JS.API.STREAM.MSG.GET, answered
// by the leader only; nats-io/nats.docs#815); nats.go uses it only for
// streams without AllowDirect, which every KV bucket has. A stale value
// (present but older) needs no fallback: every write here is a
// compare-and-set that fails on it and reads again.
type leaderReadKV struct {
	jetstream.KeyValue
	nc     *nats.Conn
	api    string // JetStream API prefix, with its trailing dot
	stream string // "KV_<bucket>"
	subj   string // "$KV.<bucket>."
}

func newLeaderReadKV(js jetstream.JetStream, kv jetstream.KeyValue) jetstream.KeyValue {
	o := js.Options()
	api := jetstream.DefaultAPIPrefix
	switch {
	case o.Domain != "":
		api = "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		api = strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return &leaderReadKV{
		KeyValue: kv, nc: js.Conn(), api: api,
		stream: "KV_" + kv.Bucket(), subj: "$KV." + kv.Bucket() + ".",
	}
}

func (b *leaderReadKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := b.KeyValue.Get(ctx, key)
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return e, err
	}
	return b.leaderGet(ctx, key)
}

type msgGetResponse struct {
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs"`
		Data     []byte    `json:"data"`
		Time     time.Time `json:"time"`
	} `json:"message"`
}

// jsErrNoMessage is JetStream's "no message found" error code.
const jsErrNoMessage = 10037

func (b *leaderReadKV) leaderGet(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": b.subj + key})
	m, err := b.nc.RequestWithContext(ctx, b.api+"STREAM.MSG.GET."+b.stream, req)
	if err != nil {
		return nil, fmt.Errorf("publisher: leader read of %s %q: %w", b.Bucket(), key, err)
	}
	var r msgGetResponse
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("publisher: leader read of %s %q: bad response: %w", b.Bucket(), key, err)
	}
	if r.Error != nil {
		if r.Error.ErrCode == jsErrNoMessage || r.Error.Code == 404 {
			return nil, jetstream.ErrKeyNotFound
		}
		return nil, fmt.Errorf("publisher: leader read of %s %q: %s (code %d)", b.Bucket(), key, r.Error.Description, r.Error.ErrCode)
	}
	if r.Message == nil {
		return nil, fmt.Errorf("publisher: leader read of %s %q: empty response", b.Bucket(), key)
	}
	if len(r.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(r.Message.Header)
		if err == nil && h.Get("KV-Operation") != "" {
			return nil, jetstream.ErrKeyNotFound // deleted or purged
		}
	}
	return &leaderEntry{bucket: b.Bucket(), key: key, value: r.Message.Data, rev: r.Message.Sequence, created: r.Message.Time}, nil
}

// leaderEntry is a KV entry read from the stream leader.
type leaderEntry struct {
	bucket, key string
	value       []byte
	rev         uint64
	created     time.Time
}

func (e *leaderEntry) Bucket() string                  { return e.bucket }
func (e *leaderEntry) Key() string                     { return e.key }
func (e *leaderEntry) Value() []byte                   { return e.value }
func (e *leaderEntry) Revision() uint64                { return e.rev }
func (e *leaderEntry) Created() time.Time              { return e.created }
func (e *leaderEntry) Delta() uint64                   { return 0 }
func (e *leaderEntry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }
