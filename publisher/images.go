package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
)

// Image is the metadata of a stored image.
type Image struct {
	// Digest is the lowercase hex SHA-256 of the image: its name everywhere.
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	ChunkSize uint32 `json:"chunk_size"`
	Chunks    int    `json:"chunks"`
	// TableDigest is the hex SHA-256 of the chunk table's deterministic
	// encoding, as signed into manifests.
	TableDigest string    `json:"table_digest"`
	Name        string    `json:"name,omitempty"`
	Uploaded    time.Time `json:"uploaded"`
	UploadedBy  string    `json:"uploaded_by,omitempty"`
}

func tableObject(digest string) string { return digest + ".table" }

// parseDigest checks that s is a lowercase hex SHA-256.
func parseDigest(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size || hex.EncodeToString(b) != s {
		return nil, fmt.Errorf("%w: image digest %q is not 64 lowercase hex digits", ErrInvalid, s)
	}
	return b, nil
}

// UploadImage stores the image read from r (at most Config.MaxImageSize
// bytes) under its SHA-256, with its chunk table and metadata. The bytes are
// spooled to a temporary file while being hashed, then stored; the metadata
// is written last, so an image is visible only once complete. Uploading an
// image already stored returns the stored metadata and created=false.
// Errors: ErrTooLarge, ErrInvalid (empty image).
func (p *Publisher) UploadImage(ctx context.Context, who Principal, name string, r io.Reader) (img Image, created bool, err error) {
	if len(name) > 256 {
		return Image{}, false, fmt.Errorf("%w: image name is %d bytes, max 256", ErrInvalid, len(name))
	}
	tmp, err := os.CreateTemp("", "firmcast-upload-*")
	if err != nil {
		return Image{}, false, fmt.Errorf("publisher: spool upload: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	whole := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, whole), io.LimitReader(r, p.cfg.MaxImageSize+1))
	if err != nil {
		return Image{}, false, fmt.Errorf("publisher: read upload: %w", err)
	}
	if n > p.cfg.MaxImageSize {
		return Image{}, false, fmt.Errorf("%w: image exceeds %d bytes", ErrTooLarge, p.cfg.MaxImageSize)
	}
	if n == 0 {
		return Image{}, false, fmt.Errorf("%w: image is empty", ErrInvalid)
	}
	sum := whole.Sum(nil)
	digest := hex.EncodeToString(sum)
	if old, err := p.Image(ctx, digest); err == nil {
		return old, false, nil
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return Image{}, false, fmt.Errorf("publisher: spool upload: %w", err)
	}
	table, err := schemas.BuildChunkTable(tmp, p.cfg.ChunkSize)
	if err != nil {
		return Image{}, false, fmt.Errorf("%w: chunk table: %v", ErrInvalid, err)
	}
	if !bytes.Equal(table.Image, sum) {
		return Image{}, false, fmt.Errorf("publisher: spooled upload changed while being read")
	}
	tb, err := schemas.Encode(table)
	if err != nil {
		return Image{}, false, fmt.Errorf("publisher: chunk table: %w", err)
	}
	tsum := sha256.Sum256(tb)
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return Image{}, false, fmt.Errorf("publisher: spool upload: %w", err)
	}
	if _, err := p.st.images.Put(ctx, jetstream.ObjectMeta{Name: digest, Description: name}, tmp); err != nil {
		return Image{}, false, fmt.Errorf("publisher: store image: %w", err)
	}
	if _, err := p.st.images.PutBytes(ctx, tableObject(digest), tb); err != nil {
		return Image{}, false, fmt.Errorf("publisher: store chunk table: %w", err)
	}
	img = Image{
		Digest: digest, Size: n, ChunkSize: p.cfg.ChunkSize, Chunks: len(table.Hashes),
		TableDigest: hex.EncodeToString(tsum[:]), Name: name, Uploaded: p.cfg.Clock.Now().UTC(), UploadedBy: who.Name,
	}
	// Commit point: the metadata makes the image visible.
	if _, err := createJSON(ctx, p.st.imageMeta, "image", digest, img); err != nil {
		if errors.Is(err, ErrExists) {
			old, gerr := p.Image(ctx, digest)
			return old, false, gerr
		}
		return Image{}, false, err
	}
	p.audit(ctx, who, "image.upload", digest, name)
	return img, true, nil
}

// Image returns the metadata of the image with hex digest d (ErrNotFound).
func (p *Publisher) Image(ctx context.Context, d string) (Image, error) {
	if _, err := parseDigest(d); err != nil {
		return Image{}, err
	}
	var img Image
	_, err := getJSON(ctx, p.st.imageMeta, "image", d, &img)
	return img, err
}

// Images lists the stored images, newest first.
func (p *Publisher) Images(ctx context.Context) ([]Image, error) {
	keys, err := listKeys(ctx, p.st.imageMeta)
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(keys))
	for _, k := range keys {
		var img Image
		if _, err := getJSON(ctx, p.st.imageMeta, "image", k, &img); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Uploaded.After(out[j].Uploaded) })
	return out, nil
}

func listKeys(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("publisher: list %s: %w", kv.Bucket(), err)
	}
	return keys, nil
}

// imageData is an image loaded for serving.
type imageData struct {
	info       Image
	digest     []byte
	data       []byte
	table      *schemas.ChunkTable
	tableBytes []byte
}

// chunk returns chunk i's bytes.
func (d *imageData) chunk(i int) []byte {
	cs := int(d.info.ChunkSize)
	return d.data[i*cs : min((i+1)*cs, len(d.data))]
}

// imageCache keeps recently served images in memory, bounded in bytes.
type imageCache struct {
	mu    sync.Mutex
	max   int64
	used  int64
	order []string
	byKey map[string]*imageData
}

// loadImage returns the image for serving, from the cache or the store,
// checking its SHA-256 and its chunk table's on the way in.
func (p *Publisher) loadImage(ctx context.Context, digest string) (*imageData, error) {
	c := &p.cache
	c.mu.Lock()
	if d, ok := c.byKey[digest]; ok {
		c.mu.Unlock()
		return d, nil
	}
	c.mu.Unlock()
	info, err := p.Image(ctx, digest)
	if err != nil {
		return nil, err
	}
	data, err := p.st.images.GetBytes(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("publisher: read image %s: %w", digest, err)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != digest {
		return nil, fmt.Errorf("publisher: stored image %s is corrupt (digest mismatch)", digest)
	}
	tb, err := p.st.images.GetBytes(ctx, tableObject(digest))
	if err != nil {
		return nil, fmt.Errorf("publisher: read chunk table %s: %w", digest, err)
	}
	table := new(schemas.ChunkTable)
	if err := schemas.Decode(tb, table); err != nil {
		return nil, fmt.Errorf("publisher: stored chunk table %s: %w", digest, err)
	}
	if !bytes.Equal(table.Image, sum[:]) {
		return nil, fmt.Errorf("publisher: stored chunk table %s names another image", digest)
	}
	d := &imageData{info: info, digest: sum[:], data: data, table: table, tableBytes: tb}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.byKey[digest]; ok {
		return old, nil
	}
	for c.used+int64(len(data)) > c.max && len(c.order) > 0 {
		ev := c.order[0]
		c.order = c.order[1:]
		c.used -= int64(len(c.byKey[ev].data))
		delete(c.byKey, ev)
	}
	c.byKey[digest] = d
	c.order = append(c.order, digest)
	c.used += int64(len(data))
	return d, nil
}
