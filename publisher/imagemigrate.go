package publisher

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// legacyImageBucket is the object store earlier versions kept image bytes
// in: the image under its hex digest, its chunk table under
// "<digest>.table".
func legacyImageBucket(ns string) string { return ns + "_images" }

// migrateImages copies into the image stream every image that has a
// record but no chunk table in the stream: images uploaded by versions
// that kept their bytes in the object store legacyImageBucket. Each is
// streamed through a temporary file (never held in memory) and checked
// against its record (digest, size, chunk table digest) before it is
// stored. It runs when a publisher starts; it is idempotent, and
// publishers that run it at once store the same bytes. The object store
// is left as it is: it can be deleted once every publisher runs this
// version. An image that cannot be copied is logged and left unservable;
// only a JetStream failure in the scan itself is returned.
func (p *Publisher) migrateImages(ctx context.Context) error {
	keys, err := listKeys(ctx, p.st.imageMeta)
	if err != nil {
		return err
	}
	var obs jetstream.ObjectStore
	for _, digest := range keys {
		ok, err := p.st.images.hasTable(ctx, digest)
		if err != nil {
			return fmt.Errorf("publisher: image %s: %w", digest, err)
		}
		if ok {
			continue
		}
		if obs == nil {
			if obs, err = p.cfg.JetStream.ObjectStore(ctx, legacyImageBucket(p.cfg.Namespace)); err != nil {
				p.log.Error("image has a record but no stored bytes", "image", digest, "err", err)
				obs = nil
				continue
			}
		}
		if err := p.migrateImage(ctx, obs, digest); err != nil {
			p.log.Error("image not copied from the object store", "image", digest, "err", err)
			continue
		}
		p.log.Info("image copied from the object store into the image stream", "image", digest)
	}
	return nil
}

// migrateImage copies one image from the object store obs.
func (p *Publisher) migrateImage(ctx context.Context, obs jetstream.ObjectStore, digest string) error {
	img, err := p.Image(ctx, digest)
	if err != nil {
		return err
	}
	r, err := obs.Get(ctx, digest)
	if err != nil {
		return fmt.Errorf("object: %w", err)
	}
	defer r.Close()
	sp, err := p.spool(r, img.ChunkSize)
	if err != nil {
		return err
	}
	defer sp.close()
	got := fmt.Sprintf("%x", sp.table.Image)
	if got != digest || int64(sp.table.ImageSize) != img.Size {
		return fmt.Errorf("object holds %d bytes of digest %s, the record says %d bytes of %s", sp.table.ImageSize, got, img.Size, digest)
	}
	if tsum, err := sp.table.Digest(); err != nil || fmt.Sprintf("%x", tsum) != img.TableDigest {
		return errors.New("the chunk table built from the object differs from the record's")
	}
	_, err = p.storeSpooled(ctx, sp)
	return err
}
