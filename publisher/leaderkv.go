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
	leader *leaderReader
	stream string // "KV_<bucket>"
	subj   string // "$KV.<bucket>."
}

func newLeaderReadKV(js jetstream.JetStream, kv jetstream.KeyValue) jetstream.KeyValue {
	return &leaderReadKV{KeyValue: kv, leader: newLeaderReader(js), stream: "KV_" + kv.Bucket(), subj: "$KV." + kv.Bucket() + "."}
}

// leaderReader reads messages from a stream's leader
// ($JS.API.STREAM.MSG.GET), for reads that must see every acknowledged
// write; see leaderReadKV.
type leaderReader struct {
	nc  *nats.Conn
	api string // JetStream API prefix, with its trailing dot
}

func newLeaderReader(js jetstream.JetStream) *leaderReader {
	o := js.Options()
	api := jetstream.DefaultAPIPrefix
	switch {
	case o.Domain != "":
		api = "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		api = strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return &leaderReader{nc: js.Conn(), api: api}
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
	Message *leaderMsg `json:"message"`
}

// jsErrNoMessage is JetStream's "no message found" error code.
const jsErrNoMessage = 10037

// leaderMsg is a message read from a stream's leader.
type leaderMsg struct {
	Subject  string    `json:"subject"`
	Sequence uint64    `json:"seq"`
	Header   []byte    `json:"hdrs"`
	Data     []byte    `json:"data"`
	Time     time.Time `json:"time"`
}

// lastBySubject returns the last message of stream on subj, read from the
// stream's leader; a wrapped errNoMessage when there is none.
func (l *leaderReader) lastBySubject(ctx context.Context, stream, subj string) (*leaderMsg, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subj})
	m, err := l.nc.RequestWithContext(ctx, l.api+"STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, fmt.Errorf("publisher: leader read of %s: %w", subj, err)
	}
	var r msgGetResponse
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("publisher: leader read of %s: bad response: %w", subj, err)
	}
	if r.Error != nil {
		if r.Error.ErrCode == jsErrNoMessage || r.Error.Code == 404 {
			return nil, fmt.Errorf("%w: %s", errNoMessage, subj)
		}
		return nil, fmt.Errorf("publisher: leader read of %s: %s (code %d)", subj, r.Error.Description, r.Error.ErrCode)
	}
	if r.Message == nil {
		return nil, fmt.Errorf("publisher: leader read of %s: empty response", subj)
	}
	return r.Message, nil
}

func (b *leaderReadKV) leaderGet(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	m, err := b.leader.lastBySubject(ctx, b.stream, b.subj+key)
	if errors.Is(err, errNoMessage) {
		return nil, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("publisher: %s %q: %w", b.Bucket(), key, err)
	}
	if len(m.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(m.Header)
		if err == nil && h.Get("KV-Operation") != "" {
			return nil, jetstream.ErrKeyNotFound // deleted or purged
		}
	}
	return &leaderEntry{bucket: b.Bucket(), key: key, value: m.Data, rev: m.Sequence, created: m.Time}, nil
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

// leaderGetJSON is getJSON reading from the stream leader when kv is a
// replicated bucket (leaderReadKV), so that it sees every acknowledged
// write: for a read after a compare-and-set lost to a write a follower
// may not hold yet.
func leaderGetJSON(ctx context.Context, kv jetstream.KeyValue, what, key string, v any) (uint64, error) {
	b, ok := kv.(*leaderReadKV)
	if !ok {
		return getJSON(ctx, kv, what, key, v)
	}
	return getJSON(ctx, leaderOnly{b}, what, key, v)
}

// leaderOnly is a leaderReadKV whose Get always asks the stream leader.
type leaderOnly struct{ *leaderReadKV }

func (b leaderOnly) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return b.leaderGet(ctx, key)
}
