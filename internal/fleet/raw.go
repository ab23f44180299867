package fleet

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go"
)

// RawConfig configures RawFanout, the peer baseline: the same image bytes
// in the same chunk size and QoS fanned out by the broker to lean
// subscribers that do only what any secure OTA client must: hash each
// chunk, compare it with the expected hash, and write it at its offset in
// a file.
type RawConfig struct {
	// URL is the broker: mqtt:// (paho, QoS 0) or nats:// (nats.go core).
	URL string
	// Subscribers is the number of lean subscribers. Required.
	Subscribers int
	// Image and ChunkSize are what is sent. Required.
	Image     []byte
	ChunkSize int
	// Dir holds one output file per subscriber. Required.
	Dir string
	// Idle ends the run when no subscriber received anything for this
	// long after the last chunk was published. Default 3s.
	Idle time.Duration
	// Topic is the MQTT topic / NATS subject. Default a random one.
	Topic string
}

// rawFile names subscriber i's file in dir.
func rawFile(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("raw-%04d", i)) }

// TouchRawFiles writes the files of n raw subscribers in dir full of
// zeros, size bytes each: RawFanout then writes its chunks into pages the
// host holds (see Fleet.TouchFreeSlots, which `firmcast bench` does for
// the fleet's side before its clock starts, as it does this before the
// raw side's). The caller writes them back (the bench's sync before each
// side's clock).
func TouchRawFiles(dir string, n, size int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i := range n {
		f, err := os.Create(rawFile(dir, i))
		if err != nil {
			return err
		}
		err = touch(f, 0, int64(size))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// RawResult is what RawFanout measured.
type RawResult struct {
	// Seconds from the first publish until the last subscriber held every
	// chunk (or until the idle end when some never did).
	Seconds float64 `json:"seconds"`
	// Complete subscribers held every chunk, hashed and written.
	Complete int `json:"complete"`
	// Received is the chunk payload bytes all subscribers received.
	Received int64 `json:"received"`
	// Sent is the payload bytes the publisher sent (image plus 4-byte
	// chunk indexes).
	Sent int64 `json:"sent"`
	// BadChunks counts chunks whose hash did not match (must be 0).
	BadChunks int64 `json:"bad_chunks"`
}

// rawSub is one lean subscriber.
type rawSub struct {
	f     *os.File
	have  []bool
	n     int
	bad   *atomic.Int64
	rx    *atomic.Int64
	last  *atomic.Int64
	done  chan struct{}
	table [][32]byte
	csize int
}

// chunk handles one message: index (4 bytes) + data.
func (s *rawSub) chunk(p []byte) {
	s.rx.Add(int64(len(p)))
	s.last.Store(time.Now().UnixNano())
	if len(p) < 4 {
		s.bad.Add(1)
		return
	}
	i := int(binary.BigEndian.Uint32(p))
	data := p[4:]
	if i >= len(s.table) || sha256.Sum256(data) != s.table[i] {
		s.bad.Add(1)
		return
	}
	if _, err := s.f.WriteAt(data, int64(i)*int64(s.csize)); err != nil {
		s.bad.Add(1)
		return
	}
	if !s.have[i] {
		s.have[i] = true
		s.n++
		if s.n == len(s.table) {
			close(s.done)
		}
	}
}

// RawFanout runs the baseline once and returns what it measured.
func RawFanout(ctx context.Context, cfg RawConfig) (RawResult, error) {
	var res RawResult
	if cfg.Subscribers < 1 || len(cfg.Image) == 0 || cfg.ChunkSize < 1 || cfg.Dir == "" {
		return res, errors.New("fleet: raw fan-out needs subscribers, an image, a chunk size and a directory")
	}
	if cfg.Idle <= 0 {
		cfg.Idle = 3 * time.Second
	}
	if cfg.Topic == "" {
		cfg.Topic = "fcraw" + randomHex(6) + "/chunks"
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return res, err
	}
	var chunks [][]byte
	var table [][32]byte
	for off := 0; off < len(cfg.Image); off += cfg.ChunkSize {
		data := cfg.Image[off:min(off+cfg.ChunkSize, len(cfg.Image))]
		msg := make([]byte, 4+len(data))
		binary.BigEndian.PutUint32(msg, uint32(len(chunks)))
		copy(msg[4:], data)
		chunks = append(chunks, msg)
		table = append(table, sha256.Sum256(data))
	}
	var bad, rx, last atomic.Int64
	subs := make([]*rawSub, cfg.Subscribers)
	for i := range subs {
		// Not truncated: the file TouchRawFiles made keeps its pages.
		f, err := os.OpenFile(rawFile(cfg.Dir, i), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return res, err
		}
		defer f.Close()
		subs[i] = &rawSub{f: f, have: make([]bool, len(table)), bad: &bad, rx: &rx, last: &last, done: make(chan struct{}), table: table, csize: cfg.ChunkSize}
	}
	var publish func(context.Context, []byte) error
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	switch u.Scheme {
	case "mqtt":
		for i, s := range subs {
			c, err := rawMQTT(ctx, u.Host, fmt.Sprintf("fcraw-%d-%s", i, randomHex(3)), func(pr paho.PublishReceived) (bool, error) {
				s.chunk(pr.Packet.Payload)
				return true, nil
			})
			if err != nil {
				return res, err
			}
			closers = append(closers, func() { _ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
			if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: cfg.Topic, QoS: 0}}}); err != nil {
				return res, fmt.Errorf("fleet: raw subscribe: %w", err)
			}
		}
		pub, err := rawMQTT(ctx, u.Host, "fcraw-pub-"+randomHex(3), nil)
		if err != nil {
			return res, err
		}
		closers = append(closers, func() { _ = pub.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
		publish = func(ctx context.Context, b []byte) error {
			_, err := pub.Publish(ctx, &paho.Publish{Topic: cfg.Topic, QoS: 0, Payload: b})
			return err
		}
	case "nats":
		for _, s := range subs {
			nc, err := nats.Connect(cfg.URL)
			if err != nil {
				return res, err
			}
			closers = append(closers, nc.Close)
			sub, err := nc.Subscribe(cfg.Topic, func(m *nats.Msg) { s.chunk(m.Data) })
			if err != nil {
				return res, err
			}
			_ = sub.SetPendingLimits(-1, -1)
			if err := nc.Flush(); err != nil {
				return res, err
			}
		}
		nc, err := nats.Connect(cfg.URL)
		if err != nil {
			return res, err
		}
		closers = append(closers, nc.Close)
		publish = func(_ context.Context, b []byte) error { return nc.Publish(cfg.Topic, b) }
		defer nc.Flush()
	default:
		return res, fmt.Errorf("fleet: raw fan-out: scheme %q (want mqtt or nats)", u.Scheme)
	}
	allDone := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-s.done:
			case <-allDone:
			}
		}()
	}
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	t0 := time.Now()
	for _, b := range chunks {
		if err := publish(ctx, b); err != nil {
			close(allDone)
			return res, fmt.Errorf("fleet: raw publish: %w", err)
		}
		res.Sent += int64(len(b))
	}
	last.Store(time.Now().UnixNano())
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	end := time.Time{}
wait:
	for {
		select {
		case <-waited:
			end = time.Now()
			break wait
		case <-ctx.Done():
			close(allDone)
			return res, ctx.Err()
		case <-tk.C:
			if time.Since(time.Unix(0, last.Load())) > cfg.Idle {
				end = time.Unix(0, last.Load())
				close(allDone)
				<-waited
				break wait
			}
		}
	}
	res.Seconds = end.Sub(t0).Seconds()
	for _, s := range subs {
		select {
		case <-s.done:
			res.Complete++
		default:
		}
	}
	res.Received, res.BadChunks = rx.Load(), bad.Load()
	return res, nil
}

func rawMQTT(ctx context.Context, host, id string, h func(paho.PublishReceived) (bool, error)) (*paho.Client, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("fleet: raw mqtt dial %s: %w", host, err)
	}
	cc := paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn)}
	if h != nil {
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){h}
	}
	c := paho.NewClient(cc)
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 60})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("fleet: raw mqtt connect: %w", err)
	}
	if ca.ReasonCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("fleet: raw mqtt connect refused: reason %d", ca.ReasonCode)
	}
	return c, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// zeros is what touch writes, read-only: one buffer for every file, so
// that touching allocates nothing (the raw side's peak RSS is measured
// from before its files are touched).
var zeros [64 << 10]byte

// touch writes zeros over [off, off+n) of fh.
func touch(fh *os.File, off, n int64) error {
	zero := zeros[:]
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := fh.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}
