package publisher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// chunkReader reads an image's chunks from the store for a consumer that
// mostly takes them in order (a broadcast wave, an HTTP download), with
// reads ahead of it: a few direct gets in flight while the consumer sends
// what it has. The read-ahead grows with the run of consecutive chunks
// taken, up to ahead: a consumer that takes one chunk causes one read, one
// that takes k consecutive chunks at most k+min(k-1, ahead), so a range
// costs about what it returns and memory stays at most ahead+1 chunks.
// A chunkReader is not safe for concurrent use; close it when done.
type chunkReader struct {
	ctx  context.Context
	read func(ctx context.Context, d *imageData, i int) ([]byte, error) // one checked chunk (Publisher.readChunk)
	// inflight counts the reads started and not returned
	// (imageStore.readsInFlight); nil: not counted.
	inflight *atomic.Int64
	d        *imageData
	ahead    int
	// eager reads ahead chunks at once from the start of a run, not
	// growing with the chunks taken: for a consumer that takes the
	// whole image in order (a wave).
	eager bool

	// order, when set, is the order the consumer takes chunks in
	// (imageData.order): get and the read-ahead then work in positions
	// of it, and get(s) returns chunk order[s].
	order []uint32

	gen    context.Context // reads of the current run; cancelled on a jump
	cancel context.CancelFunc
	queue  []*chunkRead // reads issued, of consecutive chunks from queue[0].i
	next   int          // the chunk the next read-ahead asks for
	taken  int          // chunks taken in the current run
}

// chunkRead is one chunk read in flight or done.
type chunkRead struct {
	i    int
	done chan struct{}
	b    []byte
	err  error
}

// newChunkReader returns a reader of d's chunks with at most ahead reads
// ahead of its consumer (at least 1).
func (p *Publisher) newChunkReader(ctx context.Context, d *imageData, ahead int) *chunkReader {
	return readChunksWith(ctx, d, ahead, p.readChunk, &p.st.images.readsInFlight)
}

// readChunksWith returns a reader of d's chunks with at most ahead reads
// ahead of its consumer (at least 1), each read with read and counted in
// inflight (nil: not counted).
func readChunksWith(ctx context.Context, d *imageData, ahead int, read func(context.Context, *imageData, int) ([]byte, error), inflight *atomic.Int64) *chunkReader {
	return &chunkReader{ctx: ctx, read: read, inflight: inflight, d: d, ahead: max(ahead, 1), next: -1}
}

// readAheadChunks is how many chunks of chunkSize bytes make about
// bytes of read-ahead (at least one).
func readAheadChunks(bytes int, chunkSize uint32) int { return max(bytes/int(chunkSize), 1) }

// get returns chunk i, verified against the chunk table. It blocks until
// the chunk is read or the reader's context ends. The returned slice is
// the caller's.
func (r *chunkReader) get(i int) ([]byte, error) {
	switch {
	case len(r.queue) > 0 && r.queue[0].i == i: // read ahead
	case len(r.queue) == 0 && r.gen != nil && r.next == i: // the run goes on
		r.issue(i)
	default:
		r.jump(i)
	}
	f := r.queue[0]
	r.queue = r.queue[1:]
	r.taken++
	// Read ahead before waiting, so the next reads overlap this one.
	want := min(r.taken-1, r.ahead)
	if r.eager {
		want = r.ahead
	}
	for len(r.queue) < want && r.next < r.d.chunks() {
		r.issue(r.next)
	}
	select {
	case <-f.done:
		return f.b, f.err
	case <-r.ctx.Done():
		return nil, r.ctx.Err()
	}
}

// jump starts a new run at chunk i: the reads of the old one are
// cancelled and dropped.
func (r *chunkReader) jump(i int) {
	r.close()
	r.gen, r.cancel = context.WithCancel(r.ctx)
	r.queue, r.next, r.taken = nil, i, 0
	r.issue(i)
}

// issue starts the read of chunk i (the next of the run).
func (r *chunkReader) issue(i int) {
	f := &chunkRead{i: i, done: make(chan struct{})}
	r.queue = append(r.queue, f)
	r.next = i + 1
	gen := r.gen
	idx := i
	if r.order != nil {
		idx = int(r.order[i])
	}
	inflight := r.inflight
	if inflight != nil {
		inflight.Add(1)
	}
	go func() {
		defer close(f.done)
		if inflight != nil {
			defer inflight.Add(-1)
		}
		f.b, f.err = r.read(gen, r.d, idx)
	}()
}

// close cancels the reads in flight. The reader may be used again.
func (r *chunkReader) close() {
	if r.cancel != nil {
		r.cancel()
	}
	r.gen, r.cancel, r.queue = nil, nil, nil
}

// imageReader is an image's bytes as an io.ReadSeeker over the store, for
// http.ServeContent: Seek only moves the offset, Read takes the chunk
// holding it from a chunkReader. It holds at most the chunk being read
// and the chunkReader's read-ahead. Not safe for concurrent use; Close it.
type imageReader struct {
	d   *imageData
	cr  *chunkReader
	off int64
	cur []byte // the rest of the chunk holding off, from off
	err error  // the first read error, for the log
}

// httpReadAhead is the read-ahead of one HTTP download, in bytes.
const httpReadAhead = 64 << 10

func (p *Publisher) newImageReader(ctx context.Context, d *imageData) *imageReader {
	return &imageReader{d: d, cr: p.newChunkReader(ctx, d, readAheadChunks(httpReadAhead, d.info.ChunkSize))}
}

func (r *imageReader) Read(b []byte) (int, error) {
	if r.off >= r.d.info.Size {
		return 0, io.EOF
	}
	if len(r.cur) == 0 {
		cs := int64(r.d.info.ChunkSize)
		i := r.off / cs
		data, err := r.cr.get(int(i))
		if err != nil {
			if r.err == nil {
				r.err = err
			}
			return 0, err
		}
		r.cur = data[r.off-i*cs:]
	}
	n := copy(b, r.cur)
	r.cur = r.cur[n:]
	r.off += int64(n)
	return n, nil
}

// errSeek: a seek to before the start of the image.
var errSeek = errors.New("publisher: seek before the start of the image")

func (r *imageReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.d.info.Size
	default:
		return 0, fmt.Errorf("publisher: seek: bad whence %d", whence)
	}
	if offset < 0 {
		return 0, errSeek
	}
	if offset != r.off {
		r.off, r.cur = offset, nil
	}
	return offset, nil
}

// Close cancels the reads in flight.
func (r *imageReader) Close() error {
	r.cr.close()
	return nil
}
