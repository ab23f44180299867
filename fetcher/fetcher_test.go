package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const testChunk = 1024

func newFetcher(t *testing.T, dir string, srcs ...Source) *Fetcher {
	t.Helper()
	f, err := New(Config{Sources: srcs, StateDir: dir, PersistEvery: 4, Retry: fastRetry, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// brokerSetup starts a chunk server on an in-memory hub and returns the
// device's broker source.
func brokerSetup(t *testing.T, fx fixture, tune func(*testutil.ChunkServer)) (*BrokerSource, *testutil.ChunkServer) {
	t.Helper()
	hub := testutil.NewMemHub()
	t.Cleanup(hub.Close)
	topics := schemas.MustTopics("fetchtest")
	cs := &testutil.ChunkServer{Transport: hub.Conn(), Topics: topics, Image: fx.img, Table: fx.table}
	if tune != nil {
		tune(cs)
	}
	if err := cs.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	src, err := NewBrokerSource(BrokerConfig{Transport: hub.Conn(), Topics: topics, Device: "dev-1", Idle: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return src, cs
}

// natsObjectStore starts an embedded JetStream server and returns an
// object store holding the fixture's image and table.
func natsObjectStore(t *testing.T, fx fixture) jetstream.ObjectStore {
	obs, _, _ := natsObjectStoreConn(t, fx, 0)
	return obs
}

// natsObjectStoreConn is natsObjectStore with the connection and
// JetStream handle, storing the image in object chunks of objChunk bytes
// (0 = nats.go's default).
func natsObjectStoreConn(t *testing.T, fx fixture, objChunk uint32) (jetstream.ObjectStore, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return objectStoreAt(t, ns.ClientURL(), "images", fx, objChunk)
}

// objectStoreAt creates bucket on the NATS server at url and stores the
// fixture's image and table in it; the bucket is deleted at cleanup.
func objectStoreAt(t *testing.T, url, bucket string, fx fixture, objChunk uint32) (jetstream.ObjectStore, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.DeleteObjectStore(context.Background(), bucket) })
	meta := jetstream.ObjectMeta{Name: fx.im.Hex()}
	if objChunk > 0 {
		meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: objChunk}
	}
	if _, err := obs.Put(ctx, meta, bytes.NewReader(fx.img)); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctx, fx.im.Hex()+TableSuffix, fx.tb); err != nil {
		t.Fatal(err)
	}
	return obs, nc, js
}

// TestObjectStoreRanged: with a JetStream handle the object store source
// starts at the first wanted chunk instead of the object's start, counted
// in bytes received on the connection.
func TestObjectStoreRanged(t *testing.T) {
	fx := newFixture(t, 64*testChunk, testChunk, 41)
	t.Run("embedded", func(t *testing.T) {
		obs, nc, js := natsObjectStoreConn(t, fx, 4096)
		objectStoreRanged(t, fx, obs, nc, js, "images")
	})
	t.Run("machine-nats-2.9", func(t *testing.T) {
		testutil.RequireBroker(t, testutil.MachineNATSURL)
		bucket := testutil.UniqueRoot(t)
		obs, nc, js := objectStoreAt(t, testutil.MachineNATSURL, bucket, fx, 4096)
		objectStoreRanged(t, fx, obs, nc, js, bucket)
	})
}

func objectStoreRanged(t *testing.T, fx fixture, obs jetstream.ObjectStore, nc *nats.Conn, js jetstream.JetStream, bucket string) {
	for _, ranged := range []bool{true, false} {
		t.Run(fmt.Sprintf("ranged=%v", ranged), func(t *testing.T) {
			src := NewObjectStoreSource(obs, bucket, 0)
			if ranged {
				src.WithJetStream(js)
			}
			want := newBitmap(fx.im.Chunks())
			for i := 48; i < 64; i++ {
				want.set(i)
			}
			tab, _ := DecodeTable(fx.im, fx.tb)
			got := 0
			before := nc.Stats().InBytes
			err := src.Fetch(context.Background(), fx.im, Chunks{want}, func(i int, data []byte) error {
				if err := tab.VerifyChunk(uint32(i), data); err != nil {
					t.Errorf("chunk %d: %v", i, err)
				}
				got++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			in := nc.Stats().InBytes - before
			if got != 16 {
				t.Errorf("%d chunks delivered, want 16", got)
			}
			if ranged && in > 40*testChunk { // 16 KiB wanted + probes of the first and last object chunk + JSON
				t.Errorf("ranged read received %d bytes for 16 KiB wanted", in)
			}
			if !ranged && in < 64*testChunk {
				t.Errorf("streamed read received only %d bytes", in)
			}
			t.Logf("received %d bytes", in)
		})
	}
}

func TestFetchEachSource(t *testing.T) {
	fx := newFixture(t, 40*testChunk+123, testChunk, 1)
	cases := []struct {
		name string
		src  func(t *testing.T) Source
	}{
		{"file", func(t *testing.T) Source { return NewFileSource(fx.writeFiles(t, t.TempDir()), 0) }},
		{"dir", func(t *testing.T) Source {
			d := t.TempDir()
			fx.writeFiles(t, d)
			return NewFileSource(d, 0)
		}},
		{"http", func(t *testing.T) Source { return NewHTTPSource(newRangeServer(t, fx).URL(), 0, nil) }},
		{"broker", func(t *testing.T) Source { s, _ := brokerSetup(t, fx, nil); return s }},
		{"objstore", func(t *testing.T) Source { return NewObjectStoreSource(natsObjectStore(t, fx), "images", 0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src(t)
			sink := newMemSink(len(fx.img))
			res, err := newFetcher(t, t.TempDir(), src).Fetch(context.Background(), fx.im, Plan{}, sink)
			if err != nil {
				t.Fatal(err)
			}
			checkSink(t, sink, fx)
			if got := res.Bytes[src.Name()]; got != fx.im.Size {
				t.Errorf("bytes from %s = %d, want %d", src.Name(), got, fx.im.Size)
			}
			if sink.writes != fx.im.Chunks() {
				t.Errorf("%d sink writes, want %d (one per chunk)", sink.writes, fx.im.Chunks())
			}
			if res.BadChunks != 0 || res.Resumed != 0 {
				t.Errorf("bad %d resumed %d, want 0 0", res.BadChunks, res.Resumed)
			}
		})
	}
}

// TestBadChunksNeverWritten: corrupted chunks are dropped, counted and
// fetched again; garbage, foreign chunks and out-of-range indexes on the
// broker are ignored.
func TestBadChunksNeverWritten(t *testing.T) {
	fx := newFixture(t, 20*testChunk, testChunk, 2)
	other := newFixture(t, 4*testChunk, testChunk, 3)
	t.Run("http", func(t *testing.T) {
		rs := newRangeServer(t, fx)
		rs.corrupt = func(i, n int) bool { return (i == 3 || i == 17) && n == 0 }
		sink := newMemSink(len(fx.img))
		res, err := newFetcher(t, t.TempDir(), NewHTTPSource(rs.URL(), 0, nil)).Fetch(context.Background(), fx.im, Plan{}, sink)
		if err != nil {
			t.Fatal(err)
		}
		checkSink(t, sink, fx)
		if res.BadChunks != 2 {
			t.Errorf("BadChunks = %d, want 2", res.BadChunks)
		}
		if c := rs.servedCounts(); c[3] != 2 || c[17] != 2 || c[4] != 1 {
			t.Errorf("served %v: want chunks 3 and 17 twice, others once", c)
		}
	})
	t.Run("broker", func(t *testing.T) {
		src, cs := brokerSetup(t, fx, func(cs *testutil.ChunkServer) {
			cs.Corrupt = func(i uint32, n int) bool { return i == 5 && n == 0 }
			cs.Drop = func(i uint32, n int) bool { return i == 2 && n == 0 } // out of order arrival
			cs.Extra = func(req *schemas.ChunkRequest) [][]byte {
				foreign, _ := schemas.Encode(&schemas.Chunk{V: 1, Image: other.im.Digest, Index: 1, Data: other.img[testChunk : 2*testChunk]})
				oob, _ := schemas.Encode(&schemas.Chunk{V: 1, Image: fx.im.Digest, Index: 999, Data: fx.img[:testChunk]})
				return [][]byte{[]byte("garbage \xff\x00"), {0xbf, 0xff}, foreign, oob}
			}
		})
		sink := newMemSink(len(fx.img))
		res, err := newFetcher(t, t.TempDir(), src).Fetch(context.Background(), fx.im, Plan{}, sink)
		if err != nil {
			t.Fatal(err)
		}
		checkSink(t, sink, fx)
		if res.BadChunks != 1 {
			t.Errorf("BadChunks = %d, want 1", res.BadChunks)
		}
		if src.Dropped < 4 {
			t.Errorf("Dropped = %d, want >= 4 (garbage x2, foreign, out of range)", src.Dropped)
		}
		served := cs.Served()
		for i := uint32(0); i < fx.table.NumChunks(); i++ {
			want := 1
			if i == 5 || i == 2 {
				want = 2
			}
			if served[i] != want {
				t.Errorf("chunk %d served %d times, want %d", i, served[i], want)
			}
		}
	})
}

func TestChunkTableRejected(t *testing.T) {
	fx := newFixture(t, 10*testChunk, testChunk, 4)
	other := newFixture(t, 10*testChunk, testChunk, 5)
	forged := *fx.table
	forged.Hashes = slices.Clone(fx.table.Hashes)
	forged.Hashes[0] = schemas.Digest{}
	forgedB, _ := schemas.Encode(&forged)
	for _, tc := range []struct {
		name string
		bad  []byte
	}{
		{"forged hash", forgedB},
		{"other image's table", other.tb},
		{"garbage", []byte{0xa1, 0x00}},
		{"empty", []byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newRangeServer(t, fx)
			rs.badTable = tc.bad
			bad := NewHTTPSource(rs.URL(), 0, nil)
			sink := newMemSink(len(fx.img))
			_, err := newFetcher(t, t.TempDir(), bad).Fetch(context.Background(), fx.im, Plan{}, sink)
			if !errors.Is(err, ErrNoSource) || !errors.Is(err, ErrChunkTable) {
				t.Fatalf("err = %v, want ErrNoSource and ErrChunkTable", err)
			}
			if sink.writes != 0 {
				t.Errorf("%d writes reached the sink", sink.writes)
			}
			// With a second, honest source the fetch completes from it.
			good := NewFileSource(fx.writeFiles(t, t.TempDir()), 1e-6)
			res, err := newFetcher(t, t.TempDir(), bad, good).Fetch(context.Background(), fx.im, Plan{}, sink)
			if err != nil {
				t.Fatal(err)
			}
			checkSink(t, sink, fx)
			if res.Bytes[good.Name()] != fx.im.Size || len(res.Decisions) != 1 || res.Decisions[0].Chosen != good.Name() {
				t.Errorf("bytes %v, decisions %v; want all from %s, the rejected table's source skipped", res.Bytes, res.Decisions, good.Name())
			}
		})
	}
}

// TestFailover: the cheapest source fails mid-download; the picker moves to
// the next one, which serves only what is still missing.
func TestFailover(t *testing.T) {
	fx := newFixture(t, 30*testChunk, testChunk, 6)
	file := &faultySource{Source: NewFileSource(fx.writeFiles(t, t.TempDir()), 0), failAfter: 11}
	rs := newRangeServer(t, fx)
	web := NewHTTPSource(rs.URL(), 1e-6, nil)
	sink := newMemSink(len(fx.img))
	res, err := newFetcher(t, t.TempDir(), web, file).Fetch(context.Background(), fx.im, Plan{}, sink)
	if err != nil {
		t.Fatal(err)
	}
	checkSink(t, sink, fx)
	if got, want := res.Bytes[file.Name()], uint64(11*testChunk); got != want {
		t.Errorf("file delivered %d bytes, want %d", got, want)
	}
	served := rs.servedCounts()
	for i := 0; i < fx.im.Chunks(); i++ {
		want := 0
		if i >= 11 {
			want = 1
		}
		if served[i] != want {
			t.Errorf("http served chunk %d %d times, want %d", i, served[i], want)
		}
	}
	if len(res.Decisions) != 2 || res.Decisions[0].Chosen != file.Name() || res.Decisions[1].Chosen != web.Name() ||
		!strings.Contains(res.Decisions[1].Why, "failover") {
		t.Errorf("decisions %v: want file first, then http by failover", res.Decisions)
	}
}

// TestResume kills the fetch at several chunk positions (by cancelling its
// context, as a reset would stop it) and, in the "lost tail" variant, also
// rolls the progress file back to the last persisted batch (what survives
// a power cut). The resumed fetch completes without fetching any chunk
// already verified in the sink again.
func TestResume(t *testing.T) {
	fx := newFixture(t, 25*testChunk+7, testChunk, 7)
	for _, cut := range []int{0, 1, 5, 9, 13, 24, 25} {
		for _, lostTail := range []bool{false, true} {
			name := "cut" + string(rune('0'+cut/10)) + string(rune('0'+cut%10))
			if lostTail {
				name += "-lost-tail"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				rs := newRangeServer(t, fx)
				sink := newMemSink(len(fx.img))
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				src := &faultySource{Source: NewHTTPSource(rs.URL(), 0, nil), failAfter: cut, cancel: cancel}
				var snapshot []byte
				f, err := New(Config{Sources: []Source{src}, StateDir: dir, PersistEvery: 4, Retry: fastRetry, Logger: testLogger(t),
					OnProgress: func(Progress) {
						snapshot, _ = os.ReadFile(filepath.Join(dir, progressFile))
					}})
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.Fetch(ctx, fx.im, Plan{}, sink)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("first fetch: err = %v, want context.Canceled", err)
				}
				if lostTail {
					if snapshot == nil {
						os.Remove(filepath.Join(dir, progressFile))
					} else if err := os.WriteFile(filepath.Join(dir, progressFile), snapshot, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				// Restart: a new fetcher on the same state dir and sink.
				before := rs.servedCounts()
				held := sink.heldChunks(fx)
				res, err := newFetcher(t, dir, NewHTTPSource(rs.URL(), 0, nil)).Fetch(context.Background(), fx.im, Plan{}, sink)
				if err != nil {
					t.Fatal(err)
				}
				checkSink(t, sink, fx)
				after := rs.servedCounts()
				for i := 0; i < fx.im.Chunks(); i++ {
					want := before[i] + 1
					if held[i] {
						want = before[i]
					}
					if after[i] != want {
						t.Errorf("chunk %d (held %v) served %d times before the restart, %d after; want %d", i, held[i], before[i], after[i], want)
					}
				}
				if len(held) != cut {
					t.Errorf("%d chunks held at the cut, want %d", len(held), cut)
				}
				wantResumed := cut
				if lostTail && snapshot == nil {
					wantResumed = 0 // nothing persisted: no progress file, nothing resumed
				}
				if res.Resumed != wantResumed {
					t.Errorf("Resumed = %d (recovered %d), want %d", res.Resumed, res.Recovered, wantResumed)
				}
			})
		}
	}
}

func TestDigestMismatch(t *testing.T) {
	fx := newFixture(t, 8*testChunk, testChunk, 8)
	lie := *fx.table
	d := sha256.Sum256([]byte("not the image"))
	lie.Image = d[:]
	tb, _ := schemas.Encode(&lie)
	td := sha256.Sum256(tb)
	im := Image{Digest: d[:], Size: fx.im.Size, ChunkSize: testChunk, TableDigest: td[:]}
	dir := t.TempDir()
	p := filepath.Join(dir, "fw.bin")
	os.WriteFile(p, fx.img, 0o600)
	os.WriteFile(p+TableSuffix, tb, 0o600)
	state := t.TempDir()
	_, err := newFetcher(t, state, NewFileSource(p, 0)).Fetch(context.Background(), im, Plan{}, newMemSink(len(fx.img)))
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("err = %v, want ErrDigest", err)
	}
	if _, err := os.Stat(filepath.Join(state, progressFile)); !os.IsNotExist(err) {
		t.Errorf("progress kept after a digest mismatch (stat: %v)", err)
	}
}

func TestSinkFailureStops(t *testing.T) {
	fx := newFixture(t, 8*testChunk, testChunk, 9)
	sink := newMemSink(len(fx.img))
	sink.failAt = 3
	a := NewFileSource(fx.writeFiles(t, t.TempDir()), 0)
	b := NewHTTPSource(newRangeServer(t, fx).URL(), 0, nil)
	res, err := newFetcher(t, t.TempDir(), a, b).Fetch(context.Background(), fx.im, Plan{}, sink)
	if !errors.Is(err, ErrSink) {
		t.Fatalf("err = %v, want ErrSink", err)
	}
	if len(res.Decisions) != 1 {
		t.Errorf("%d decisions; a sink failure must not fail over", len(res.Decisions))
	}
}

func TestNoSourceCanServe(t *testing.T) {
	fx := newFixture(t, 4*testChunk, testChunk, 10)
	_, err := newFetcher(t, t.TempDir(), NewFileSource(filepath.Join(t.TempDir(), "missing"), 0)).
		Fetch(context.Background(), fx.im, Plan{}, newMemSink(len(fx.img)))
	if !errors.Is(err, ErrNoSource) {
		t.Fatalf("err = %v, want ErrNoSource", err)
	}
}

func TestAlreadyHaveIt(t *testing.T) {
	fx := newFixture(t, 4*testChunk, testChunk, 11)
	dir := t.TempDir()
	sink := newMemSink(len(fx.img))
	src := NewFileSource(fx.writeFiles(t, t.TempDir()), 0)
	if _, err := newFetcher(t, dir, src).Fetch(context.Background(), fx.im, Plan{}, sink); err != nil {
		t.Fatal(err)
	}
	res, err := newFetcher(t, dir, src).Fetch(context.Background(), fx.im, Plan{}, sink)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Bytes) != 0 || res.Resumed != fx.im.Chunks() || !strings.Contains(res.Decisions[0].Why, "already have it") {
		t.Errorf("second fetch: bytes %v resumed %d decisions %v; want nothing fetched", res.Bytes, res.Resumed, res.Decisions)
	}
}

func TestImageValidate(t *testing.T) {
	good := Image{Digest: make([]byte, 32), TableDigest: make([]byte, 32), Size: 10, ChunkSize: 256}
	for _, tc := range []struct {
		name string
		mod  func(*Image)
		want string
	}{
		{"ok", func(*Image) {}, ""},
		{"short digest", func(im *Image) { im.Digest = im.Digest[:31] }, "image digest is 31 bytes"},
		{"no table digest", func(im *Image) { im.TableDigest = nil }, "chunk table digest is 0 bytes"},
		{"chunk too small", func(im *Image) { im.ChunkSize = 10 }, "chunk size 10"},
		{"empty", func(im *Image) { im.Size = 0 }, "image size is 0"},
		{"too many chunks", func(im *Image) { im.Size = 256*schemas.MaxChunks + 1 }, "chunks, max"},
	} {
		im := good
		im.Digest, im.TableDigest = slices.Clone(good.Digest), slices.Clone(good.TableDigest)
		tc.mod(&im)
		err := im.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrBadImage naming %q", tc.name, err, tc.want)
		}
	}
}

// TestTableFromAnotherSource: the cheapest source serves the image but not
// its chunk table (a plain CDN); the table comes from another source and
// the chunks still from the cheapest.
func TestTableFromAnotherSource(t *testing.T) {
	fx := newFixture(t, 12*testChunk, testChunk, 12)
	rs := newRangeServer(t, fx)
	rs.badTable = []byte{} // served, but empty: rejected
	cdn := NewHTTPSource(rs.URL(), 0, nil)
	dir := t.TempDir()
	p := fx.writeFiles(t, dir)
	os.Remove(p) // the local copy has the table only
	tableOnly := NewFileSource(dir, 1)
	sink := newMemSink(len(fx.img))
	res, err := newFetcher(t, t.TempDir(), cdn, tableOnly).Fetch(context.Background(), fx.im, Plan{}, sink)
	if err == nil || len(res.Bytes) != 0 {
		// The CDN's table is rejected, so it is skipped for chunks too, and
		// the file source has no image: nothing can be fetched.
		t.Fatalf("err %v bytes %v: want a failure (the CDN's table was rejected)", err, res.Bytes)
	}
	rs.badTable = nil
	missing := newRangeServer(t, fx)
	missing.badTable = nil
	noTable := &noTableSource{NewHTTPSource(missing.URL(), 0, nil)}
	withTable := NewFileSource(fx.writeFiles(t, t.TempDir()), 1)
	res, err = newFetcher(t, t.TempDir(), noTable, withTable).Fetch(context.Background(), fx.im, Plan{}, sink)
	if err != nil {
		t.Fatal(err)
	}
	checkSink(t, sink, fx)
	if res.Bytes[noTable.Name()] != fx.im.Size {
		t.Errorf("bytes %v: want every chunk from the cheapest source", res.Bytes)
	}
}

// noTableSource serves chunks but has no chunk table.
type noTableSource struct{ Source }

func (noTableSource) Table(context.Context, Image) ([]byte, error) {
	return nil, fmt.Errorf("%w: no table here", ErrCannotServe)
}
