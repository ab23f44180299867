package publisher

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"time"

	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Delta updates. A delta turns a source image into a target image (package
// delta); the publisher makes it from the two stored images (their
// plaintext), stores it as an image of its own (its digest, chunk table
// and chunks, Image.DeltaFrom and DeltaTo set), so it is broadcast,
// repaired, resumed and downloaded over HTTP like any image, and devices
// on the same source share one delta. A campaign whose server signs the
// manifest offers, before the full image, a delta from each image its
// targets report running (Device.Image) when that delta is worth it.

// DefaultDeltaSources is Config.DeltaSources' default.
const DefaultDeltaSources = 4

// deltaWorth is the largest delta a campaign offers, in percent of the
// image: a bigger one saves too little to be worth a second download path.
const deltaWorth = 75

// DeltaRequest asks the server for the delta between two stored images
// (hex digests), on the JSON API (POST /api/v1/deltas).
type DeltaRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// MakeDelta returns the stored delta from image from to image to (hex
// digests), making and storing it first when there is none (created then
// reports it). Both images are read whole from the store into memory
// (bsdiff needs them; see delta.Make for its memory). A delta to an
// encrypted image is made from its plaintext (decrypted with its
// escrowed content key, in memory only) and stored encrypted with a
// fresh content key and IV of its own (deltaenc.go). Errors: ErrInvalid
// (the same image twice, a delta of a delta, a delta from an encrypted
// image), ErrNotFound, ErrTooLarge (the delta over Config.MaxImageSize),
// ErrNoSigner (an encrypted target without a custody key), the store's
// errors.
func (p *Publisher) MakeDelta(ctx context.Context, who Principal, from, to string) (img Image, created bool, err error) {
	if from == to {
		return Image{}, false, fmt.Errorf("%w: a delta from an image to itself", ErrInvalid)
	}
	src, err := p.Image(ctx, from)
	if err != nil {
		return Image{}, false, fmt.Errorf("source image: %w", err)
	}
	dst, err := p.Image(ctx, to)
	if err != nil {
		return Image{}, false, fmt.Errorf("target image: %w", err)
	}
	if src.DeltaTo != "" || dst.DeltaTo != "" {
		return Image{}, false, fmt.Errorf("%w: deltas are made between images, not deltas", ErrInvalid)
	}
	if src.Encrypted {
		// A device names its running image by the plaintext digest its
		// bootloader checked: a delta from an encrypted image would sign
		// that digest into manifests everyone can read.
		return Image{}, false, fmt.Errorf("%w: deltas are made from plain images only (a delta from an encrypted image would name its plaintext digest)", ErrInvalid)
	}
	if d, ok, err := p.findDelta(ctx, from, to); err != nil || ok {
		return d, false, err
	}
	start := p.cfg.Clock.Now()
	sb, err := p.readImage(ctx, src.Digest)
	if err != nil {
		return Image{}, false, err
	}
	tb, err := p.readImage(ctx, dst.Digest)
	if err != nil {
		return Image{}, false, err
	}
	var dec *deltaEncryption
	if dst.Encrypted {
		if dec, err = p.decryptTarget(ctx, dst.Digest, tb); err != nil {
			return Image{}, false, err
		}
	}
	var out bytes.Buffer
	info, err := delta.Make(ctx, &out, sb, tb)
	clear(tb) // an encrypted target's plaintext
	if err != nil {
		return Image{}, false, fmt.Errorf("publisher: make delta: %w", err)
	}
	sb, tb = nil, nil
	var body io.Reader = &out
	if dec != nil {
		if body, err = dec.encrypt(&out); err != nil {
			return Image{}, false, err
		}
	}
	sp, err := p.spool(body, p.cfg.ChunkSize)
	clear(out.Bytes())
	if err != nil {
		return Image{}, false, err
	}
	defer sp.close()
	digest := hex.EncodeToString(sp.table.Image)
	if old, err := p.Image(ctx, digest); err == nil {
		return old, false, nil
	}
	if dec != nil {
		if err := p.storeDeltaKey(ctx, digest, dec); err != nil {
			return Image{}, false, err
		}
	}
	tsum, err := p.storeSpooled(ctx, sp)
	if err != nil {
		return Image{}, false, err
	}
	img = Image{
		Digest: digest, Size: int64(sp.table.ImageSize), ChunkSize: p.cfg.ChunkSize, Chunks: len(sp.table.Hashes),
		TableDigest: tsum, Name: fmt.Sprintf("delta %.12s..%.12s", from, to),
		Uploaded: p.cfg.Clock.Now().UTC(), UploadedBy: who.Name, DeltaFrom: from, DeltaTo: to, Encrypted: dec != nil,
	}
	// Indexed before it is visible: DeleteImage of its source or target
	// finds every stored delta in the index.
	if err := p.indexDelta(ctx, img); err != nil {
		return Image{}, false, err
	}
	// Commit point: the metadata makes the delta visible.
	if _, err := createJSON(ctx, p.st.imageMeta, "image", digest, img); err != nil {
		if errors.Is(err, ErrExists) {
			old, gerr := p.Image(ctx, digest)
			return old, false, gerr
		}
		return Image{}, false, err
	}
	took := p.cfg.Clock.Now().Sub(start).Round(time.Millisecond)
	p.log.Info("delta made", "from", from, "to", to, "delta", digest, "size", info.Size, "image_size", dst.Size, "took", took)
	p.audit(ctx, who, "image.delta", digest, fmt.Sprintf("from=%s to=%s size=%d image_size=%d", from, to, info.Size, dst.Size))
	return img, true, nil
}

// findDelta returns the stored delta from from to to, if any (from the
// delta index: the deltas based on from).
func (p *Publisher) findDelta(ctx context.Context, from, to string) (Image, bool, error) {
	imgs, err := p.deltasOf(ctx, from)
	if err != nil {
		return Image{}, false, err
	}
	for _, im := range imgs {
		if im.DeltaFrom == from && im.DeltaTo == to {
			return im, true, nil
		}
	}
	return Image{}, false, nil
}

// readImage reads a stored image whole, each chunk checked against its
// table.
func (p *Publisher) readImage(ctx context.Context, digest string) ([]byte, error) {
	d, err := p.loadImage(ctx, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, d.info.Size)
	r := p.newChunkReader(ctx, d, readAheadChunks(1<<20, d.info.ChunkSize))
	defer r.close()
	for i := range d.chunks() {
		b, err := r.get(i)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// campaignDeltas makes (or finds) the deltas a campaign to img offers:
// from each image its targets report running, stored, most common first,
// at most Config.DeltaSources of them, each kept when at most deltaWorth
// percent of the image. It returns the offers to sign and the deltas'
// digests. A delta that cannot be made is logged and left out: the full
// image is always offered.
func (p *Publisher) campaignDeltas(ctx context.Context, who Principal, targets []string, img Image) ([]suit.DeltaInfo, []string, error) {
	if p.cfg.DeltaSources < 0 || img.DeltaTo != "" {
		return nil, nil, nil
	}
	limit := p.cfg.DeltaSources
	if limit == 0 {
		limit = DefaultDeltaSources
	}
	devs, err := p.Devices(ctx)
	if err != nil {
		return nil, nil, err
	}
	want := make(map[string]bool, len(targets))
	for _, t := range targets {
		want[t] = true
	}
	count := map[string]int{}
	for _, d := range devs {
		if want[d.ID] && d.Image != "" && d.Image != img.Digest {
			count[d.Image]++
		}
	}
	sources := make([]string, 0, len(count))
	for s := range count {
		sources = append(sources, s)
	}
	sort.Slice(sources, func(i, j int) bool {
		if count[sources[i]] != count[sources[j]] {
			return count[sources[i]] > count[sources[j]]
		}
		return sources[i] < sources[j]
	})
	var offers []suit.DeltaInfo
	var digests []string
	for _, s := range sources {
		if len(offers) == limit {
			break
		}
		src, err := p.Image(ctx, s)
		if errors.Is(err, ErrNotFound) || (err == nil && (src.DeltaTo != "" || src.Encrypted)) {
			continue // not stored here: no delta
		}
		if err != nil {
			return nil, nil, err
		}
		d, _, err := p.MakeDelta(ctx, who, s, img.Digest)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			p.log.Warn("delta not made; the full image is offered", "from", s, "to", img.Digest, "err", err)
			continue
		}
		if d.Size*100 > img.Size*deltaWorth {
			p.log.Info("delta not offered: too big to be worth it", "from", s, "delta_size", d.Size, "image_size", img.Size)
			continue
		}
		sd, _ := hex.DecodeString(src.Digest)
		dd, _ := hex.DecodeString(d.Digest)
		td, _ := hex.DecodeString(d.TableDigest)
		o := suit.DeltaInfo{SourceDigest: sd, SourceSize: uint64(src.Size), Digest: dd, Size: uint64(d.Size),
			ChunkSize: d.ChunkSize, ChunkTableDigest: td}
		if p.cfg.PublicURL != "" {
			o.URIs = []string{p.imageURL(d.Digest)}
		}
		if img.Encrypted {
			if o.Encryption, err = p.deltaOfferEncryption(ctx, img.Digest, d.Digest); err != nil {
				if ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
				p.log.Warn("encrypted delta not offered; the full image is", "from", s, "delta", d.Digest, "err", err)
				continue
			}
		}
		offers = append(offers, o)
		digests = append(digests, d.Digest)
	}
	return offers, digests, nil
}

// apiDelta is POST /api/v1/deltas.
func (p *Publisher) apiDelta(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
	var dr DeltaRequest
	if err := decodeJSON(r, &dr); err != nil {
		return 0, nil, err
	}
	img, created, err := p.MakeDelta(r.Context(), who, dr.From, dr.To)
	if err != nil {
		return 0, nil, err
	}
	if created {
		return 201, img, nil
	}
	return 200, img, nil
}

// MakeDelta asks the server for the delta from image from to image to
// (see Publisher.MakeDelta); it blocks while the server makes it.
func (c *Client) MakeDelta(ctx context.Context, from, to string) (Image, error) {
	var v Image
	return v, c.doJSON(ctx, "POST", "/api/v1/deltas", DeltaRequest{From: from, To: to}, &v)
}

// imageWaveWanted reports whether c's planned broadcast waves of its
// image are worth sending: always for a campaign without deltas; with
// deltas, once at least BroadcastMin devices asked for the image's chunk
// table (the others take a delta and do not listen to the image's topic;
// their deltas have waves of their own, maybeDeltaWaves).
func (dl *delivery) imageWaveWanted(c *Campaign) bool {
	if len(c.Deltas) == 0 {
		return true
	}
	dl.waveMu.Lock()
	defer dl.waveMu.Unlock()
	w := dl.waves[c.Image]
	return w != nil && len(w.tables) >= max(dl.cfg.BroadcastMin, 1)
}

// envelopeDeltas returns the digests of the deltas an uploaded envelope
// offers (an operator who signs offline, `firmcast manifest create
// --delta-from`), each of which must be stored, as an image of the size
// and chunk table the envelope signs: the publisher serves only the
// campaign's image and deltas. Errors: ErrInvalid naming the delta.
func (p *Publisher) envelopeDeltas(ctx context.Context, env []byte) ([]string, error) {
	m, err := suit.Decode(env)
	if err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", ErrInvalid, err)
	}
	offers, err := m.Deltas()
	if err != nil {
		return nil, fmt.Errorf("%w: envelope's deltas: %v", ErrInvalid, err)
	}
	var out []string
	for _, o := range offers {
		d := hex.EncodeToString(o.Digest)
		img, err := p.Image(ctx, d)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: the envelope offers delta %s, which is not stored: upload it (firmcast image upload)", ErrInvalid, d)
		}
		if err != nil {
			return nil, err
		}
		if uint64(img.Size) != o.Size || img.ChunkSize != o.ChunkSize || img.TableDigest != hex.EncodeToString(o.ChunkTableDigest) {
			return nil, fmt.Errorf("%w: the envelope's delta %s is signed with size %d, chunk size %d and chunk table %x; stored: %d, %d, %s",
				ErrInvalid, d, o.Size, o.ChunkSize, o.ChunkTableDigest, img.Size, img.ChunkSize, img.TableDigest)
		}
		out = append(out, d)
	}
	return out, nil
}

// maybeDeltaWaves starts a broadcast wave of each of c's deltas that at
// least BroadcastMin devices were sent the chunk table of since its last
// wave (the devices on that delta's source share it: they listen on the
// delta's chunk topic), once WaveSettle passed since the last table went
// out, or WaveHold since the first of them asked; and WaveInterval after
// the delta's last wave. Devices that asked later, or lost chunks,
// complete by repair. While a wave runs, requests for the chunks it has
// still to send are left to it.
func (dl *delivery) maybeDeltaWaves(ctx context.Context, c *Campaign) {
	for _, digest := range c.Deltas {
		now := dl.cfg.Clock.Now()
		dl.waveMu.Lock()
		w := dl.waves[digest]
		if w == nil || w.running || (!w.started.IsZero() && now.Sub(w.started) < dl.cfg.WaveInterval) ||
			w.joinedSince(w.started) < max(dl.cfg.BroadcastMin, 1) {
			dl.waveMu.Unlock()
			continue
		}
		first := now
		for _, at := range w.tables {
			if !at.Before(w.started) && at.Before(first) {
				first = at
			}
		}
		if now.Sub(w.lastTable) < dl.cfg.WaveSettle && now.Sub(first) < dl.cfg.WaveHold {
			dl.waveMu.Unlock()
			continue
		}
		w.running, w.started = true, now
		w.next.Store(0) // requests from here on are left to the wave
		dl.waveMu.Unlock()
		dl.wg.Add(1)
		go func() {
			defer dl.wg.Done()
			err := dl.wave(ctx, digest)
			w.next.Store(math.MaxInt64)
			dl.waveMu.Lock()
			w.running = false
			dl.waveMu.Unlock()
			if err != nil && ctx.Err() == nil {
				dl.log.Warn("delta broadcast wave", "delta", digest, "err", err)
			}
		}()
	}
}
