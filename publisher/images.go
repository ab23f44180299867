package publisher

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/semver"
	"golang.org/x/sync/singleflight"

	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
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
	TableDigest string `json:"table_digest"`
	Name        string `json:"name,omitempty"`
	// Version is the image's own version (semantic versioning, "v"
	// optional), given by the operator at upload; empty when unknown. A
	// campaign to an image older than what a target runs needs
	// AllowDowngrade.
	Version string `json:"version,omitempty"`
	// SecurityVersion is the anti-rollback security version the server
	// signs into the image's manifests (0: none, the devices keep their
	// floor). Raise it on purpose, when the versions before must never run
	// again.
	SecurityVersion uint64    `json:"security_version,omitempty"`
	Uploaded        time.Time `json:"uploaded"`
	UploadedBy      string    `json:"uploaded_by,omitempty"`
	// Encrypted: the stored bytes are the ciphertext (Digest, Size and
	// the chunk table are its own); see UploadEncryptedImage.
	Encrypted bool `json:"encrypted,omitempty"`
	// DeltaFrom and DeltaTo are set on a delta (MakeDelta): the hex
	// digests of the images it turns one into the other.
	DeltaFrom string `json:"delta_from,omitempty"`
	DeltaTo   string `json:"delta_to,omitempty"`
}

// ImageUpload is what an upload says about the image besides its bytes.
type ImageUpload struct {
	// Name is a display name, at most 256 bytes.
	Name string
	// Version is the image's semantic version ("1.4.2" or "v1.4.2"); empty
	// for none.
	Version string
	// SecurityVersion, at most suit.MaxSecurityVersion; 0 for none.
	SecurityVersion uint64
	// Recipients, for Client.UploadImageWith only, uploads the image
	// encrypted for these devices ("device:ID", "class:NAME", "group:G";
	// see UploadEncryptedImage). The server takes them from the request.
	Recipients []string `json:"-"`
}

// check validates u and returns the version with its "v" prefix, as
// golang.org/x/mod/semver compares them.
func (u ImageUpload) check() (string, error) {
	if len(u.Name) > 256 {
		return "", fmt.Errorf("%w: image name is %d bytes, max 256", ErrInvalid, len(u.Name))
	}
	if u.SecurityVersion > suit.MaxSecurityVersion {
		return "", fmt.Errorf("%w: security version %d over %d", ErrInvalid, u.SecurityVersion, suit.MaxSecurityVersion)
	}
	if u.Version == "" {
		return "", nil
	}
	v := u.Version
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) || len(v) > 64 {
		return "", fmt.Errorf("%w: image version %q is not a semantic version (such as 1.4.2)", ErrInvalid, u.Version)
	}
	return v, nil
}

// parseDigest checks that s is a lowercase hex SHA-256
// (schemas.ParseDigestHex); errors wrap ErrInvalid.
func parseDigest(s string) ([]byte, error) {
	b, err := schemas.ParseDigestHex(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return b, nil
}

// UploadImage is UploadImageWith with only a name.
func (p *Publisher) UploadImage(ctx context.Context, who Principal, name string, r io.Reader) (img Image, created bool, err error) {
	return p.UploadImageWith(ctx, who, ImageUpload{Name: name}, r)
}

// UploadImageWith stores the image read from r (at most
// Config.MaxImageSize bytes) under its SHA-256, with its chunk table and
// metadata (up). The bytes are spooled to a temporary file while the
// chunk table and the image's SHA-256 are computed, then stored chunk by
// chunk (imageStore), each chunk checked against the table again on the
// way; the metadata is written last, so an image is visible only once
// complete. Uploading an image already stored returns
// the stored metadata and created=false; the metadata of a stored image
// never changes, so an upload that gives another version or security
// version is refused (ErrState). Errors: ErrTooLarge, ErrInvalid (empty
// image, bad version), ErrState.
func (p *Publisher) UploadImageWith(ctx context.Context, who Principal, up ImageUpload, r io.Reader) (img Image, created bool, err error) {
	version, err := up.check()
	if err != nil {
		return Image{}, false, err
	}
	name := up.Name
	sp, err := p.spool(r, p.cfg.ChunkSize)
	if err != nil {
		return Image{}, false, err
	}
	defer sp.close()
	digest := hex.EncodeToString(sp.table.Image)
	if old, err := p.Image(ctx, digest); err == nil {
		return old, false, sameMeta(old, version, up.SecurityVersion)
	}
	if p.cfg.CodedRepair {
		// Only new uploads: a stored (or migrated) image keeps the
		// table its record's digest names.
		if err := sp.code(ctx, p.cfg.CodedBlock, p.cfg.CodedParity); err != nil {
			return Image{}, false, err
		}
	}
	tsum, err := p.storeSpooled(ctx, sp)
	if err != nil {
		return Image{}, false, err
	}
	img = Image{
		Digest: digest, Size: int64(sp.table.ImageSize), ChunkSize: p.cfg.ChunkSize, Chunks: len(sp.table.Hashes),
		TableDigest: tsum, Name: name, Version: version, SecurityVersion: up.SecurityVersion,
		Uploaded: p.cfg.Clock.Now().UTC(), UploadedBy: who.Name,
	}
	// Commit point: the metadata makes the image visible. An upload
	// cancelled before it stores no record; one cancelled while the
	// record is being written may still have stored it (the image is
	// whole then, and a retry answers created=false).
	if err := ctx.Err(); err != nil {
		return Image{}, false, err
	}
	if _, err := createJSON(ctx, p.st.imageMeta, "image", digest, img); err != nil {
		if errors.Is(err, ErrExists) {
			old, gerr := p.Image(ctx, digest)
			if gerr != nil {
				return Image{}, false, gerr
			}
			return old, false, sameMeta(old, version, up.SecurityVersion)
		}
		return Image{}, false, err
	}
	p.audit(ctx, who, "image.upload", digest, fmt.Sprintf("name=%s version=%s security_version=%d", name, version, up.SecurityVersion))
	return img, true, nil
}

// sameMeta refuses (ErrState) an upload of a stored image that gives it
// another version or security version than it has.
func sameMeta(old Image, version string, sv uint64) error {
	if (version != "" && version != old.Version) || (sv != 0 && sv != old.SecurityVersion) {
		return fmt.Errorf("%w: image %s is stored with version %q and security version %d; a stored image's metadata does not change",
			ErrState, old.Digest, old.Version, old.SecurityVersion)
	}
	return nil
}

// spooled is an image read into a temporary file, with its chunk table.
type spooled struct {
	tmp   *os.File
	table *schemas.ChunkTable
}

func (sp *spooled) close() {
	sp.tmp.Close()
	os.Remove(sp.tmp.Name())
}

// spool reads r (at most Config.MaxImageSize bytes) into a temporary file
// while it builds the chunk table of chunkSize chunks (and so the image's
// SHA-256). The caller closes the result. Errors: ErrTooLarge, ErrInvalid
// (an empty image).
func (p *Publisher) spool(r io.Reader, chunkSize uint32) (*spooled, error) {
	tmp, err := os.CreateTemp("", "firmcast-upload-*")
	if err != nil {
		return nil, fmt.Errorf("publisher: spool upload: %w", err)
	}
	sp := &spooled{tmp: tmp}
	lr := &io.LimitedReader{R: r, N: p.cfg.MaxImageSize + 1}
	sp.table, err = schemas.BuildChunkTable(io.TeeReader(lr, tmp), chunkSize)
	switch {
	case lr.N == 0:
		err = fmt.Errorf("%w: image exceeds %d bytes", ErrTooLarge, p.cfg.MaxImageSize)
	case errors.Is(err, schemas.ErrTooLarge):
		err = fmt.Errorf("%w: %v", ErrTooLarge, err)
	case errors.Is(err, schemas.ErrInvalid):
		err = fmt.Errorf("%w: %v", ErrInvalid, err)
	case err != nil:
		err = fmt.Errorf("publisher: read upload: %w", err)
	}
	if err != nil {
		sp.close()
		return nil, err
	}
	return sp, nil
}

// code replaces sp's chunk table by its coded form (Config.CodedRepair),
// reading the spooled image block by block.
func (sp *spooled) code(ctx context.Context, k, p int) error {
	t := sp.table
	buf := make([]byte, t.ChunkSize)
	coded, err := blockcode.Commit(ctx, t, k, p, func(_ context.Context, i uint32) ([]byte, error) {
		b := buf[:t.ChunkLen(i)]
		if n, err := sp.tmp.ReadAt(b, int64(i)*int64(t.ChunkSize)); err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
			return nil, err
		}
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("publisher: coded chunk table: %w", err)
	}
	sp.table = coded
	return nil
}

// storeSpooled writes a spooled image's chunks and chunk table to the
// image stream (not its record) and returns the hex SHA-256 of the
// table's encoding.
func (p *Publisher) storeSpooled(ctx context.Context, sp *spooled) (string, error) {
	tb, err := schemas.Encode(sp.table)
	if err != nil {
		return "", fmt.Errorf("publisher: chunk table: %w", err)
	}
	if _, err := sp.tmp.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("publisher: spool upload: %w", err)
	}
	digest := hex.EncodeToString(sp.table.Image)
	if err := p.st.images.put(ctx, digest, sp.table, tb, bufio.NewReaderSize(sp.tmp, 64<<10)); err != nil {
		return "", err
	}
	tsum := sha256.Sum256(tb)
	return hex.EncodeToString(tsum[:]), nil
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

// imageData is what serving an image needs besides its bytes: its
// record and its verified chunk table. The bytes stay in the store and
// are read chunk by chunk (readChunk, chunkReader).
type imageData struct {
	info       Image
	digest     []byte
	table      *schemas.ChunkTable
	tableBytes []byte
	// order is the carousel order of a coded image's chunks
	// (blockcode.Order: blocks interleaved) and pos its inverse (the
	// position of chunk i); nil for an image that is not coded, whose
	// chunks go in index order.
	order []uint32
	pos   []int32
}

// newImageData returns the imageData of an image with its carousel order.
func newImageData(info Image, digest []byte, table *schemas.ChunkTable, tb []byte) *imageData {
	d := &imageData{info: info, digest: digest, table: table, tableBytes: tb}
	if table.Coded() {
		d.order = blockcode.Order(table)
		d.pos = make([]int32, len(d.order))
		for s, i := range d.order {
			d.pos[i] = int32(s)
		}
	}
	return d
}

// chunks is the number of chunks of the image.
func (d *imageData) chunks() int { return len(d.table.Hashes) }

// at returns the chunk a wave sends at position s.
func (d *imageData) at(s int) int {
	if d.order == nil {
		return s
	}
	return int(d.order[s])
}

// posOf returns the position at which a wave sends chunk i.
func (d *imageData) posOf(i int) int64 {
	if d.pos == nil {
		return int64(i)
	}
	return int64(d.pos[i])
}

// span returns the first and last carousel positions of chunks (indices
// of d); -1, -1 for none.
func (d *imageData) span(chunks []int) (first, last int64) {
	first, last = -1, -1
	for _, i := range chunks {
		p := d.posOf(i)
		if first < 0 || p < first {
			first = p
		}
		last = max(last, p)
	}
	return first, last
}

// imageCache keeps the imageData of recently served images, bounded in
// entries and in chunk table bytes (a table is at most about 4.5 MiB).
// Concurrent loads of one image are merged into one.
type imageCache struct {
	loads singleflight.Group
	mu    sync.Mutex
	used  int64
	order []string // oldest first
	byKey map[string]*imageData
}

// Bounds of imageCache.
const (
	imageCacheEntries = 64
	imageCacheBytes   = 32 << 20
)

// loadImage returns what serving the image needs, from the cache or the
// store: its record (ErrNotFound when no image of that digest is
// stored), and its chunk table, checked against the record's table digest
// and the image digest. It reads no image bytes.
func (p *Publisher) loadImage(ctx context.Context, digest string) (*imageData, error) {
	c := &p.cache
	c.mu.Lock()
	d, ok := c.byKey[digest]
	c.mu.Unlock()
	if ok {
		return d, nil
	}
	if _, err := parseDigest(digest); err != nil {
		return nil, err
	}
	// One load per image at a time, shared by its callers; it outlives a
	// caller that leaves (each of its reads is bounded by kvOpTimeout).
	ch := c.loads.DoChan(digest, func() (any, error) {
		return p.readImageData(context.WithoutCancel(ctx), digest)
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if res.Err != nil {
		return nil, res.Err
	}
	d = res.Val.(*imageData)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.byKey[digest]; ok {
		return old, nil
	}
	for len(c.order) > 0 && (len(c.order) >= imageCacheEntries || c.used+int64(len(d.tableBytes)) > imageCacheBytes) {
		ev := c.order[0]
		c.order = c.order[1:]
		c.used -= int64(len(c.byKey[ev].tableBytes))
		delete(c.byKey, ev)
	}
	c.byKey[digest] = d
	c.order = append(c.order, digest)
	c.used += int64(len(d.tableBytes))
	return d, nil
}

// readImageData reads an image's record and chunk table from the store.
func (p *Publisher) readImageData(ctx context.Context, digest string) (*imageData, error) {
	info, err := p.Image(ctx, digest)
	if err != nil {
		return nil, err
	}
	sum, _ := hex.DecodeString(digest)
	tb, err := p.st.images.table(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("publisher: read chunk table %s: %w", digest, err)
	}
	if tsum := sha256.Sum256(tb); hex.EncodeToString(tsum[:]) != info.TableDigest {
		return nil, fmt.Errorf("publisher: stored chunk table %s is corrupt (digest mismatch)", digest)
	}
	table := new(schemas.ChunkTable)
	if err := schemas.Decode(tb, table); err != nil {
		return nil, fmt.Errorf("publisher: stored chunk table %s: %w", digest, err)
	}
	if !bytes.Equal(table.Image, sum) || table.ImageSize != uint64(info.Size) || table.ChunkSize != info.ChunkSize {
		return nil, fmt.Errorf("publisher: stored chunk table %s does not describe the image", digest)
	}
	return newImageData(info, sum, table, tb), nil
}

// readChunk reads chunk i of d from the store and checks it against the
// chunk table: a stored chunk that does not hash to its entry is never
// served.
func (p *Publisher) readChunk(ctx context.Context, d *imageData, i int) ([]byte, error) {
	if i < 0 || i >= d.chunks() {
		return nil, fmt.Errorf("%w: chunk %d of %d", ErrInvalid, i, d.chunks())
	}
	b, err := p.st.images.chunk(ctx, d.info.Digest, i)
	if err != nil {
		return nil, fmt.Errorf("publisher: image %s chunk %d: %w", d.info.Digest, i, err)
	}
	if sum := sha256.Sum256(b); len(b) != chunkLen(d.table, i) || sum != d.table.Hashes[i] {
		return nil, fmt.Errorf("publisher: stored chunk %d of image %s is corrupt", i, d.info.Digest)
	}
	return b, nil
}
