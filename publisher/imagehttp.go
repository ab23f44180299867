package publisher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// tableSuffix names an image's chunk table next to the image, in URLs
// (GET /images/{digest}.table): the suffix device fetch sources add to an
// image URL to find its table.
const tableSuffix = ".table"

// serveImage serves GET (and HEAD) /images/{digest}, the image's bytes,
// and /images/{digest}.table, its chunk table's encoding.
//
// Access follows Config.ImageAccess and is checked before the image is
// looked up, so a refused client learns nothing about which images exist:
// 401 (with WWW-Authenticate) without acceptable credentials, 403 for a
// key that lacks the read scope.
//
// Ranges: one range per request (bytes=a-b, a- or -n): 206 with
// Content-Range, 416 when it lies outside the image; a request naming
// several ranges gets the whole image (200), as RFC 9110 lets a server
// do. Accept-Ranges: bytes and Content-Length are always sent. The ETag
// is the image's digest (strong: the bytes under a digest never change),
// so If-Range, If-Match and If-None-Match work.
//
// The body streams from the store (imageReader): a request holds at most
// one chunk plus about 64 KiB of read-ahead, however many download the
// same image at once, and reads only the chunks its range covers. A
// chunk that fails its check against the chunk table ends the response
// early; Content-Length tells the client it is short.
func (p *Publisher) serveImage(w http.ResponseWriter, r *http.Request) {
	if err := p.imageAccess(r); err != nil {
		if errors.Is(err, ErrUnauthorized) {
			w.Header().Add("WWW-Authenticate", `Basic realm="firmcast images", charset="UTF-8"`)
			w.Header().Add("WWW-Authenticate", `Bearer realm="firmcast images"`)
		}
		p.imageError(w, r, err)
		return
	}
	digest, isTable := strings.CutSuffix(r.PathValue("digest"), tableSuffix)
	d, err := p.loadImage(r.Context(), digest)
	if err != nil {
		p.imageError(w, r, err)
		return
	}
	h := w.Header()
	if p.cfg.ImageAccess == ImageAccessPublic {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "private, max-age=31536000, immutable")
	}
	if isTable {
		// The plain table (see tables.go): what every agent takes,
		// whichever protocol it speaks; parity comes only by broadcast.
		tb, err := p.dl.plainTableBytes(d)
		if err != nil {
			p.imageError(w, r, err)
			return
		}
		sum := sha256.Sum256(tb)
		h.Set("Content-Type", "application/cbor")
		h.Set("ETag", `"`+hex.EncodeToString(sum[:])+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(tb))
		return
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", `"`+d.info.Digest+`"`)
	if strings.Contains(r.Header.Get("Range"), ",") {
		r2 := *r
		r2.Header = r.Header.Clone()
		r2.Header.Del("Range")
		r = &r2
	}
	rd := p.newImageReader(r.Context(), d)
	defer rd.Close()
	http.ServeContent(w, r, "", time.Time{}, rd)
	if rd.err != nil && r.Context().Err() == nil {
		p.log.Error("image download cut short", "image", d.info.Digest, "err", rd.err)
	}
}

// imageAccess checks r's credentials against Config.ImageAccess. Errors:
// ErrUnauthorized (none, or refused), ErrForbidden (a key without the
// read scope), or the registry's error.
func (p *Publisher) imageAccess(r *http.Request) error {
	if p.cfg.ImageAccess == ImageAccessPublic {
		return nil
	}
	if id, secret, ok := r.BasicAuth(); ok {
		_, good, err := p.CheckDeviceSecret(r.Context(), id, secret)
		if err != nil {
			return err
		}
		if !good {
			return fmt.Errorf("%w: device credentials refused", ErrUnauthorized)
		}
		return nil
	}
	if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		_, err := p.bearer(r, ScopeRead)
		return err
	}
	return fmt.Errorf("%w: images need an API key (\"Authorization: Bearer <key>\") or a device's id and secret (HTTP basic auth)", ErrUnauthorized)
}

// imageError answers an image request that failed before its body.
func (p *Publisher) imageError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if status == http.StatusInternalServerError && !errors.Is(err, context.Canceled) {
		p.log.Error("image download", "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, ErrorReply{Error: err.Error()})
}
