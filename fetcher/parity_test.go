package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// TestBrokerRebuildsFromParity: a device that lost chunks of a wave
// (blocks interleaved, the image's short last chunk among them) rebuilds
// them from the parity chunks broadcast after it, reading the chunks it
// holds back from its slot, without asking for any chunk. Forged and
// corrupt parity chunks, and parity chunks with a wrong block or parity
// index, sent before the good ones, are dropped on arrival (counted) and
// the blocks still rebuild from the good ones.
func TestBrokerRebuildsFromParity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fx := newFixture(t, 24*testChunk+100, testChunk, 11) // 25 chunks
	read := func(_ context.Context, i uint32) ([]byte, error) {
		off := int(i) * testChunk
		return fx.img[off:min(off+testChunk, len(fx.img))], nil
	}
	coded, err := blockcode.Commit(ctx, fx.table, 8, 4, read) // blocks of 8, 8, 8, 1
	if err != nil {
		t.Fatal(err)
	}
	tb, err := schemas.Encode(coded)
	if err != nil {
		t.Fatal(err)
	}
	td := sha256.Sum256(tb)
	im := fx.im
	im.TableDigest = td[:]
	if _, err := DecodeTable(im, tb); err != nil {
		t.Fatalf("the coded table does not authenticate: %v", err)
	}
	enc, err := blockcode.NewEncoder(coded)
	if err != nil {
		t.Fatal(err)
	}

	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics("paritytest")
	bt, err := topics.Chunks(im.Hex())
	if err != nil {
		t.Fatal(err)
	}
	cs := &testutil.ChunkServer{Transport: hub.Conn(), Topics: topics, Image: fx.img, Table: coded}
	if err := cs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn := waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: make(chan struct{})}
	// Never ask (an hour of listening): what the wave lost comes back
	// only by parity.
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1",
		Idle: time.Hour, ListenFirst: time.Hour, Quiet: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	lost := map[uint32]bool{1: true, 5: true, 9: true, 10: true, 11: true, 17: true, 24: true}
	waveErr := make(chan error, 1)
	go func() {
		select {
		case <-conn.ready:
		case <-ctx.Done():
			waveErr <- ctx.Err()
			return
		}
		pub := hub.Conn()
		send := func(m schemas.Message) error {
			b, err := schemas.Encode(m)
			if err == nil {
				err = pub.Publish(ctx, bt, b, broker.PublishOptions{Family: broker.FamilyChunk})
			}
			return err
		}
		for _, i := range blockcode.Order(coded) {
			if lost[i] {
				continue
			}
			off := int(i) * testChunk
			if err := send(&schemas.Chunk{V: schemas.Version, Image: im.Digest, Index: i, Data: fx.img[off:min(off+testChunk, len(fx.img))]}); err != nil {
				waveErr <- err
				return
			}
		}
		var good []*schemas.ParityChunk
		for b := range coded.NumBlocks() {
			par, err := enc.Parity(ctx, b, read)
			if err != nil {
				waveErr <- err
				return
			}
			for j, d := range par {
				good = append(good, &schemas.ParityChunk{V: schemas.Version, Image: im.Digest, Block: b, Index: uint32(j), Data: d})
			}
		}
		corrupt := bytes.Clone(good[0].Data)
		corrupt[7] ^= 0x10
		forged := []*schemas.ParityChunk{
			{V: schemas.Version, Image: im.Digest, Block: 0, Index: 0, Data: corrupt},                        // corrupt
			{V: schemas.Version, Image: im.Digest, Block: 1, Index: 0, Data: make([]byte, testChunk)},        // forged
			{V: schemas.Version, Image: im.Digest, Block: 0, Index: 1, Data: good[4].Data},                   // block 1's, as block 0's
			{V: schemas.Version, Image: im.Digest, Block: 4, Index: 0, Data: good[0].Data},                   // block beyond the image
			{V: schemas.Version, Image: im.Digest, Block: 0, Index: 4, Data: good[0].Data},                   // index beyond the parity
			{V: schemas.Version, Image: im.Digest, Block: 2, Index: 0, Data: good[8].Data[:testChunk-1]},     // short
			{V: schemas.Version, Image: bytes.Repeat([]byte{7}, 32), Block: 2, Index: 0, Data: good[8].Data}, // another image
		}
		for _, p := range append(forged, good...) {
			if err := send(p); err != nil {
				waveErr <- err
				return
			}
		}
		waveErr <- nil
	}()
	slot := newMemSink(len(fx.img))
	sc := &memScratch{}
	want := newBitmap(int(coded.NumChunks()))
	for i := range int(coded.NumChunks()) {
		want.set(i)
	}
	err = src.FetchRepair(ctx, im, Chunks{want}, func(i int, data []byte) error {
		if err := coded.VerifyChunk(uint32(i), data); err != nil {
			t.Errorf("chunk %d delivered unverified: %v", i, err)
			return ErrBadChunk
		}
		_, err := slot.WriteAt(data, im.Offset(i))
		return err
	}, Repair{Table: coded, Slot: slot, Scratch: sc})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-waveErr; err != nil {
		t.Fatal(err)
	}
	// The parity the device kept went to the scratch, not memory: as many
	// as it lost chunks (2, 3, 1 and 1 in the four blocks).
	if sc.writes != len(lost) {
		t.Errorf("%d parity chunks written to the scratch, want %d", sc.writes, len(lost))
	}
	if !bytes.Equal(slot.data, fx.img) {
		t.Fatal("the slot does not hold the image")
	}
	if src.Requests != 0 || len(cs.Served()) != 0 {
		t.Errorf("%d requests, %d chunks served by request; want none", src.Requests, len(cs.Served()))
	}
	if src.Rebuilt != len(lost) {
		t.Errorf("%d chunks rebuilt, want %d", src.Rebuilt, len(lost))
	}
	if src.BadParity != 7 {
		t.Errorf("%d parity chunks refused, want the 7 forged", src.BadParity)
	}
}

// memScratch is an in-memory ParityScratch that counts its writes.
type memScratch struct {
	mu     sync.Mutex
	buf    []byte
	writes int
}

func (s *memScratch) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := int(off) + len(p); n > len(s.buf) {
		s.buf = append(s.buf, make([]byte, n-len(s.buf))...)
	}
	s.writes++
	return copy(s.buf[off:], p), nil
}

func (s *memScratch) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off >= int64(len(s.buf)) {
		return 0, io.EOF
	}
	n := copy(p, s.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// repairRecorder is a source that records whether the fetcher used its
// FetchRepair, and with what, then fetches as its inner source does.
// With a scratch, it writes a parity-sized record to it and reads it back,
// and records whether the scratch file was in dir meanwhile.
type repairRecorder struct {
	Source
	repair      *Repair
	dir         string
	scratchErr  error
	scratchFile bool
}

func (s *repairRecorder) FetchRepair(ctx context.Context, im Image, want Chunks, deliver Deliver, r Repair) error {
	s.repair = &r
	if r.Scratch != nil {
		rec, back := bytes.Repeat([]byte{0x5a}, testChunk), make([]byte, testChunk)
		if _, err := r.Scratch.WriteAt(rec, 3*testChunk); err != nil {
			s.scratchErr = err
		} else if _, err := r.Scratch.ReadAt(back, 3*testChunk); err != nil || !bytes.Equal(back, rec) {
			s.scratchErr = fmt.Errorf("read back: %v, same %v", err, bytes.Equal(back, rec))
		}
		_, err := os.Stat(filepath.Join(s.dir, parityScratchFile))
		s.scratchFile = err == nil
	}
	return s.Source.Fetch(ctx, im, want, deliver)
}

// codedFixture returns fx with a coded chunk table (blocks of 8 chunks, 2
// parity chunks each) in place of its plain one, the image naming it.
func codedFixture(t *testing.T, fx fixture) fixture {
	t.Helper()
	ct, err := blockcode.Commit(context.Background(), fx.table, 8, 2, func(_ context.Context, i uint32) ([]byte, error) {
		return fx.img[int(i)*testChunk : (int(i)+1)*testChunk], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fx.table = ct
	if fx.tb, err = schemas.Encode(ct); err != nil {
		t.Fatal(err)
	}
	td := sha256.Sum256(fx.tb)
	fx.im.TableDigest = td[:]
	return fx
}

// TestFetchUsesRepair: the fetcher hands a RepairSource the authenticated
// coded table and the sink (to read held chunks back) when the image's
// table is coded, and calls plain Fetch when it is not. With a coded
// table it hands a parity scratch too, a file in the state directory
// removed when the fetch ends; none with Config.ParityInMemory.
func TestFetchUsesRepair(t *testing.T) {
	for _, inMemory := range []bool{false, true} {
		fx := codedFixture(t, newFixture(t, 20*testChunk, testChunk, 12))
		dir := t.TempDir()
		src := &repairRecorder{Source: NewFileSource(fx.writeFiles(t, t.TempDir()), 0), dir: dir}
		f, err := New(Config{Sources: []Source{src}, StateDir: dir, Retry: fastRetry, Logger: testLogger(t), ParityInMemory: inMemory})
		if err != nil {
			t.Fatal(err)
		}
		sink := newMemSink(len(fx.img))
		if _, err := f.Fetch(context.Background(), fx.im, Plan{}, sink); err != nil {
			t.Fatal(err)
		}
		checkSink(t, sink, fx)
		if src.repair == nil {
			t.Fatal("FetchRepair not called")
		}
		if inMemory {
			if src.repair.Scratch != nil {
				t.Errorf("ParityInMemory: a scratch was handed over")
			}
			continue
		}
		if src.repair.Scratch == nil || !src.scratchFile || src.scratchErr != nil {
			t.Errorf("scratch %v, file in the state directory %v, write and read back: %v; want a working scratch file", src.repair.Scratch, src.scratchFile, src.scratchErr)
		}
		if _, err := os.Stat(filepath.Join(dir, parityScratchFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the scratch file is still there after the fetch: %v", err)
		}
	}
	for _, coded := range []bool{false, true} {
		fx := newFixture(t, 20*testChunk, testChunk, 12)
		if coded {
			fx = codedFixture(t, fx)
		}
		src := &repairRecorder{Source: NewFileSource(fx.writeFiles(t, t.TempDir()), 0)}
		sink := newMemSink(len(fx.img))
		if _, err := newFetcher(t, t.TempDir(), src).Fetch(context.Background(), fx.im, Plan{}, sink); err != nil {
			t.Fatal(err)
		}
		checkSink(t, sink, fx)
		switch {
		case coded && (src.repair == nil || !src.repair.Table.Coded() || src.repair.Slot != io.ReaderAt(sink)):
			t.Errorf("coded table: FetchRepair not called with the coded table and the sink (%+v)", src.repair)
		case !coded && src.repair != nil:
			t.Errorf("table not coded: FetchRepair called")
		}
	}
}

// TestBrokerRebuildsAfterChunk: parity chunks that cover only part of
// what a block lacks are kept; a lost chunk that arrives later leaves the
// block lacking no more than the parity held, and the rest is rebuilt
// then, without a request.
func TestBrokerRebuildsAfterChunk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fx := newFixture(t, 8*testChunk, testChunk, 13) // one block of 8
	read := func(_ context.Context, i uint32) ([]byte, error) {
		return fx.img[int(i)*testChunk : (int(i)+1)*testChunk], nil
	}
	coded, err := blockcode.Commit(ctx, fx.table, 8, 4, read)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := blockcode.NewEncoder(coded)
	par, err := enc.Parity(ctx, 0, read)
	if err != nil {
		t.Fatal(err)
	}
	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics("paritytest2")
	bt, _ := topics.Chunks(fx.im.Hex())
	conn := waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: make(chan struct{})}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1",
		Idle: time.Hour, ListenFirst: time.Hour, Quiet: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	chunk := func(i uint32) schemas.Message {
		return &schemas.Chunk{V: schemas.Version, Image: fx.im.Digest, Index: i, Data: fx.img[int(i)*testChunk : (int(i)+1)*testChunk]}
	}
	parity := func(j uint32) schemas.Message {
		return &schemas.ParityChunk{V: schemas.Version, Image: fx.im.Digest, Block: 0, Index: j, Data: par[j]}
	}
	// Chunks 2, 5 and 6 lost; 2 parity chunks; then chunk 5 after all.
	msgs := []schemas.Message{chunk(0), chunk(1), chunk(3), chunk(4), chunk(7), parity(0), parity(1), chunk(5)}
	go func() {
		select {
		case <-conn.ready:
		case <-ctx.Done():
			return
		}
		for _, m := range msgs {
			b, _ := schemas.Encode(m)
			hub.Conn().Publish(ctx, bt, b, broker.PublishOptions{Family: broker.FamilyChunk})
		}
	}()
	slot := newMemSink(len(fx.img))
	want := newBitmap(8)
	for i := range 8 {
		want.set(i)
	}
	err = src.FetchRepair(ctx, fx.im, Chunks{want}, func(i int, data []byte) error {
		if err := coded.VerifyChunk(uint32(i), data); err != nil {
			return ErrBadChunk
		}
		_, err := slot.WriteAt(data, fx.im.Offset(i))
		return err
	}, Repair{Table: coded, Slot: slot})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(slot.data, fx.img) || src.Rebuilt != 2 || src.Requests != 0 {
		t.Errorf("image held %v, %d rebuilt (want chunks 2 and 6), %d requests", bytes.Equal(slot.data, fx.img), src.Rebuilt, src.Requests)
	}
}

// TestBrokerTableIsTheManifests: Table returns the chunk table whose
// digest the manifest names, skipping other tables on the broadcast topic
// (the image's coded table for agents that take coded repair, a forged
// one), instead of returning one that fails authentication.
func TestBrokerTableIsTheManifests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fx := newFixture(t, 20*testChunk, testChunk, 14)
	coded, err := blockcode.Commit(ctx, fx.table, 8, 2, func(_ context.Context, i uint32) ([]byte, error) {
		return fx.img[int(i)*testChunk : (int(i)+1)*testChunk], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	forged := *fx.table
	forged.Hashes = append([]schemas.Digest{schemas.Digest(bytes.Repeat([]byte{1}, 32))}, fx.table.Hashes[1:]...)
	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics("tabletest")
	bt, _ := topics.Chunks(fx.im.Hex())
	conn := waveConn{Transport: hub.Conn(), chunks: bt.MQTT, ready: make(chan struct{})}
	src, err := NewBrokerSource(BrokerConfig{Transport: conn, Topics: topics, Device: "dev-1", Idle: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		select {
		case <-conn.ready:
		case <-ctx.Done():
			return
		}
		for _, m := range []schemas.Message{coded, &forged, fx.table} {
			b, _ := schemas.Encode(m)
			hub.Conn().Publish(ctx, bt, b, broker.PublishOptions{Family: broker.FamilyChunk})
		}
	}()
	b, err := src.Table(ctx, fx.im)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, fx.tb) {
		t.Fatal("Table returned another table than the manifest's")
	}
	if src.Dropped != 0 {
		t.Errorf("%d dropped: other tables are skipped, not counted as garbage", src.Dropped)
	}
}
