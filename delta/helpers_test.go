package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// firmwareLike returns n bytes that look like a binary: runs of
// repeated structure (instructions, tables, strings) rather than noise.
func firmwareLike(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	words := make([][]byte, 512)
	for i := range words {
		words[i] = randBytes(seed*1000+uint64(i), 4+r.IntN(12))
	}
	b := make([]byte, 0, n+32)
	for len(b) < n {
		switch r.IntN(8) {
		case 0:
			b = append(b, fmt.Sprintf("func_%d error %x\x00", r.IntN(5000), r.Uint32())...)
		case 1:
			b = append(b, make([]byte, r.IntN(64))...)
		default:
			b = append(b, words[r.IntN(len(words))]...)
		}
	}
	return b[:n]
}

// mustMake makes a delta of target against source.
func mustMake(t testing.TB, source, target []byte, opts ...MakeOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	info, err := Make(context.Background(), &buf, source, target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(buf.Len()) {
		t.Fatalf("Make says %d bytes, wrote %d", info.Size, buf.Len())
	}
	return buf.Bytes()
}

// mustOpen opens a delta held in memory.
func mustOpen(t testing.TB, d []byte) *Patch {
	t.Helper()
	p, err := Open(bytes.NewReader(d), int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var errCut = errors.New("test: power cut")

// memTarget is an io.WriterAt over a byte slice that can lose power:
// after cutAfter more bytes (when armed) it writes only a prefix of the
// call and fails, like a reset in the middle of a program.
type memTarget struct {
	mu       sync.Mutex
	b        []byte
	armed    bool
	cutAfter int64
	written  int64
	writes   int
}

func newMemTarget(n int) *memTarget {
	b := bytes.Repeat([]byte{0xFF}, n)
	return &memTarget{b: b}
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("test: write of %d bytes at %d beyond %d", len(p), off, len(m.b))
	}
	m.writes++
	if m.armed && m.written+int64(len(p)) > m.cutAfter {
		k := m.cutAfter - m.written
		copy(m.b[off:], p[:k])
		m.written += k
		m.armed = false
		return int(k), errCut
	}
	copy(m.b[off:], p)
	m.written += int64(len(p))
	return len(p), nil
}

// cpStore keeps the last checkpoint saved, in its binary form (as a
// device file would), and can fail the save numbered failAt (1-based).
type cpStore struct {
	last   []byte
	saves  int
	failAt int
}

func (s *cpStore) save(_ context.Context, cp Checkpoint) error {
	s.saves++
	if s.saves == s.failAt {
		return errCut
	}
	b, err := cp.MarshalBinary()
	if err != nil {
		return err
	}
	s.last = b
	return nil
}

// resume returns WithResume of the last saved checkpoint, if any.
func (s *cpStore) resume(t testing.TB) []ApplyOption {
	t.Helper()
	if s.last == nil {
		return nil
	}
	var cp Checkpoint
	if err := cp.UnmarshalBinary(s.last); err != nil {
		t.Fatal(err)
	}
	return []ApplyOption{WithResume(cp)}
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
