package suit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"

	"github.com/firmcast/firmcast/schemas/suit"
)

// memTarget is the smallest useful Target: one component in memory, one
// payload source.
type memTarget struct {
	id      suit.Identity
	source  []byte
	content []byte
}

func (t *memTarget) Identity(context.Context) (suit.Identity, error) { return t.id, nil }

func (t *memTarget) Fetch(_ context.Context, _ int, p *suit.Params) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(t.source)), nil
}

func (t *memTarget) Open(context.Context, int) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(t.content)), nil
}

func (t *memTarget) Write(context.Context, int, *suit.Params) (suit.ComponentWriter, error) {
	return &memWriter{t: t}, nil
}

func (t *memTarget) Invoke(context.Context, int, *suit.Params) error { return nil }

type memWriter struct {
	t   *memTarget
	buf bytes.Buffer
}

func (w *memWriter) Write(b []byte) (int, error) { return w.buf.Write(b) }
func (w *memWriter) Commit() error               { w.t.content = w.buf.Bytes(); return nil }
func (w *memWriter) Abort() error                { return nil }

// The publisher signs offline; the device verifies, authenticates the chunk
// table, then installs with the processor.
func Example() {
	ctx := context.Background()
	image := bytes.Repeat([]byte("firmware "), 4000)
	vendor, class := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)

	// Operator (offline): a key and a signed envelope.
	key, _ := suit.GenerateKey("es256", rand.Reader)
	signer, _ := suit.NewKeySigner(key, 0)
	env, err := suit.Create(ctx, suit.CreateOptions{
		Image: bytes.NewReader(image), VendorID: vendor, ClassID: class,
		Seq: 7, URIs: []string{"https://cdn.example/fw.bin"}, ChunkSize: 4096,
	}, signer)
	if err != nil {
		panic(err)
	}

	// Device: verify with its trust anchors.
	m, err := suit.Verify(env, suit.TrustAnchors{key.Public()})
	if err != nil {
		panic(err)
	}
	ci, _ := m.ChunkInfo() // the fetcher checks each chunk against the table this digest signs
	fmt.Println("chunk size:", ci.ChunkSize)

	// Device: install (anti-rollback against the installed sequence number).
	tgt := &memTarget{id: suit.Identity{VendorID: vendor, ClassIDs: [][]byte{class}}, source: image}
	rep, err := suit.Processor{Target: tgt, InstalledSeq: 6}.Update(ctx, m)
	fmt.Println("update:", err, len(tgt.content) == len(image))
	for _, r := range rep.Records {
		fmt.Println(r.Sequence, r.Name, r.OK)
	}
	_, err = suit.Processor{Target: tgt, InstalledSeq: 8}.Update(ctx, m)
	fmt.Println("older manifest:", suit.Code(err))
	// Output:
	// chunk size: 4096
	// update: <nil> true
	// install condition-vendor-identifier true
	// install condition-class-identifier true
	// install condition-image-match true
	// older manifest: rollback
}
