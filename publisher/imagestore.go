package publisher

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/firmcast/firmcast/internal/jsensure"

	"github.com/firmcast/firmcast/schemas"
)

// imageStore keeps image bytes in one JetStream stream, one message per
// chunk, so that reading chunk i of an image is one direct get of one
// message, whatever i: a range of an image costs what it returns. (A
// JetStream object store has no range read: its objects are read from the
// start.)
//
// Subjects, under <root>.images.<namespace> (beside the audit stream's
// <root>.audit.<namespace>, never under <root>.v1, so that no device ACL
// ever covers them):
//
//	<digest>.<i>        chunk i: its raw bytes (Image.ChunkSize, the last shorter)
//	<digest>.table.<k>  part k of the chunk table's encoding (tablePart bytes, the last shorter)
//
// Messages carry no headers, so a chunk of schemas.MaxChunkSize still fits
// a server's default max payload. The stream keeps one message per subject:
// writing an image again (an interrupted upload retried, two replicas
// uploading the same image) replaces bytes with the same bytes instead of
// adding a copy. What makes an image visible is its record in the image
// metadata bucket, written only after all of its chunks and its table
// (UploadImage): readers start from the record, so they never see a
// half-written image.
type imageStore struct {
	stream jetstream.Stream
	js     jetstream.JetStream
	name   string // stream name
	prefix string // subject prefix, without the trailing dot
	// leader answers a get a lagging replica could not (replicated
	// streams only); nil on a single replica.
	leader *leaderReader
	// readBytes and readMsgs count what reads took from the stream:
	// chunks and table parts, by direct or leader get.
	readBytes, readMsgs atomic.Int64
	// readsInFlight counts chunkReader reads started and not returned:
	// a read cancelled by its reader's close may still finish (and be
	// counted in readMsgs) after the consumer has gone.
	readsInFlight atomic.Int64
}

// tablePart is the size of one stored part of a chunk table's encoding:
// a table of schemas.MaxChunks entries (about 4.5 MiB) does not fit one
// message.
const tablePart = 256 << 10

// putWindow bounds the chunk messages an upload has in flight (published,
// not yet acknowledged by the stream).
const putWindow = 64

// imageStreamConfig is the image stream's configuration.
func imageStreamConfig(ns, prefix string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              ns + "_images",
		Description:       "firmcast images: one message per chunk, and chunk tables",
		Subjects:          []string{prefix + ".>"},
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		MaxMsgsPerSubject: 1,
		AllowDirect:       true,
	}
}

// openImageStore opens the namespace's image stream, creating it when
// missing (once: jsensure.Stream). subjRoot is the topic root in NATS
// form.
func openImageStore(ctx context.Context, js jetstream.JetStream, subjRoot, ns string, replicas int) (*imageStore, error) {
	prefix := subjRoot + ".images." + ns
	cfg := imageStreamConfig(ns, prefix, replicas)
	st, err := jsensure.Stream(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("publisher: image stream: %w", err)
	}
	s := &imageStore{stream: st, js: js, name: cfg.Name, prefix: prefix}
	if replicas > 1 {
		s.leader = newLeaderReader(js)
	}
	return s, nil
}

func (s *imageStore) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "firmcast_publisher_image_store_read_bytes_total", Help: "Image bytes (chunks and chunk tables) read from the image stream.",
		}, func() float64 { return float64(s.readBytes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "firmcast_publisher_image_store_read_messages_total", Help: "Messages (chunks and chunk table parts) read from the image stream.",
		}, func() float64 { return float64(s.readMsgs.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (s *imageStore) chunkSubject(digest string, i int) string {
	return s.prefix + "." + digest + "." + strconv.Itoa(i)
}

func (s *imageStore) tableSubject(digest string, k int) string {
	return s.prefix + "." + digest + ".table." + strconv.Itoa(k)
}

// put stores the image whose chunk table is t (encoded as tb) from r: its
// chunks, each checked against t while it is read (so bytes that changed
// since t was built are refused), then its table. It blocks until the
// stream acknowledged every message, or ctx ends. At most putWindow
// chunks are in flight. It does not make the image visible: the caller
// writes the image record after it.
func (s *imageStore) put(ctx context.Context, digest string, t *schemas.ChunkTable, tb []byte, r io.Reader) error {
	if max := s.js.Conn().MaxPayload(); int64(t.ChunkSize) > max {
		return fmt.Errorf("%w: chunk size %d is over the NATS server's max payload %d", ErrInvalid, t.ChunkSize, max)
	}
	var inflight []jetstream.PubAckFuture
	wait := func(f jetstream.PubAckFuture) error {
		select {
		case ack := <-f.Ok():
			if ack.Stream != s.name {
				return fmt.Errorf("publisher: image message %s stored in stream %q, want %q", f.Msg().Subject, ack.Stream, s.name)
			}
			return nil
		case err := <-f.Err():
			return fmt.Errorf("publisher: store %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	publish := func(subj string, b []byte) error {
		// A cancelled upload stops at its next message, even when the
		// stream acknowledges faster than the cancel is noticed in wait
		// (a select over ready cases picks at random).
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(inflight) == putWindow {
			if err := wait(inflight[0]); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		f, err := s.js.PublishAsync(subj, b)
		if err != nil {
			return fmt.Errorf("publisher: store %s: %w", subj, err)
		}
		inflight = append(inflight, f)
		return nil
	}
	for i, h := range t.Hashes {
		// A fresh buffer per chunk: an in-flight message keeps its data
		// (nats.go may send it again).
		b := make([]byte, chunkLen(t, i))
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("publisher: read spooled chunk %d: %w", i, err)
		}
		if sha256.Sum256(b) != h {
			return fmt.Errorf("publisher: spooled upload changed while being read (chunk %d)", i)
		}
		if err := publish(s.chunkSubject(digest, i), b); err != nil {
			return err
		}
	}
	for k := 0; k*tablePart < len(tb); k++ {
		if err := publish(s.tableSubject(digest, k), tb[k*tablePart:min((k+1)*tablePart, len(tb))]); err != nil {
			return err
		}
	}
	for _, f := range inflight {
		if err := wait(f); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// chunkLen is the length of chunk i of the image t describes.
func chunkLen(t *schemas.ChunkTable, i int) int {
	cs := uint64(t.ChunkSize)
	return int(min(cs, t.ImageSize-uint64(i)*cs))
}

// get returns the data of the last message on subj, or a wrapped
// errNoMessage. On a replicated stream, a direct get that finds nothing
// (a replica that has not caught up yet) asks the stream leader.
func (s *imageStore) get(ctx context.Context, subj string) ([]byte, error) {
	// A read is safe to repeat: one that times out (a loaded server) is
	// read again (withRetry), so one slow reply does not end a wave.
	var m *jetstream.RawStreamMsg
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		var err error
		m, err = s.stream.GetLastMsgForSubject(ctx, subj)
		return err
	})
	var data []byte
	switch {
	case err == nil:
		data = m.Data
	case errors.Is(err, jetstream.ErrMsgNotFound) && s.leader != nil:
		lctx, cancel := opCtx(ctx)
		defer cancel()
		lm, lerr := s.leader.lastBySubject(lctx, s.name, subj)
		if lerr != nil {
			return nil, lerr
		}
		data = lm.Data
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, fmt.Errorf("%w: %s", errNoMessage, subj)
	default:
		return nil, fmt.Errorf("publisher: read %s: %w", subj, err)
	}
	s.readMsgs.Add(1)
	s.readBytes.Add(int64(len(data)))
	return data, nil
}

// errNoMessage: the stream holds no message on the subject.
var errNoMessage = errors.New("publisher: no such stored message")

// chunk returns the stored bytes of chunk i of digest, unverified.
func (s *imageStore) chunk(ctx context.Context, digest string, i int) ([]byte, error) {
	return s.get(ctx, s.chunkSubject(digest, i))
}

// table returns the stored encoding of digest's chunk table, unverified,
// bounded by the largest table there can be: its parts up to the first
// shorter than tablePart, or the first missing.
func (s *imageStore) table(ctx context.Context, digest string) ([]byte, error) {
	maxSize := (&schemas.ChunkTable{}).MaxSize()
	var tb []byte
	for k := 0; ; k++ {
		b, err := s.get(ctx, s.tableSubject(digest, k))
		if errors.Is(err, errNoMessage) && k > 0 {
			return tb, nil
		}
		if err != nil {
			return nil, err
		}
		if tb = append(tb, b...); len(tb) > maxSize {
			return nil, fmt.Errorf("publisher: stored chunk table of %s is over %d bytes", digest, maxSize)
		}
		if len(b) < tablePart {
			return tb, nil
		}
	}
}

// hasTable reports whether digest's chunk table is stored: it is written
// after every chunk of the image.
func (s *imageStore) hasTable(ctx context.Context, digest string) (bool, error) {
	_, err := s.get(ctx, s.tableSubject(digest, 0))
	if errors.Is(err, errNoMessage) {
		return false, nil
	}
	return err == nil, err
}
