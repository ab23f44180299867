package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/firmcast/firmcast/schemas"
)

// TableSuffix is appended to an image's file name, URL or object name to
// name its encoded chunk table ("fw.bin" → "fw.bin.table").
const TableSuffix = ".table"

// maxTableSize bounds any chunk table read from a source.
var maxTableSize = (&schemas.ChunkTable{}).MaxSize()

// FileSource serves an image from a local file, or from a directory that
// holds images named by their lowercase hex digest (a USB stick, a local
// cache, a peer's share). The chunk table is read from the file name plus
// TableSuffix. A source made by NewFileSourceIn reads only inside its root
// directory.
type FileSource struct {
	name  string
	path  string
	price float64
	root  string // "": path is opened as given
}

// NewFileSource returns a source reading path, a file or a directory.
// price is the price per byte (normally 0). It reads whatever path names:
// use it for paths the device's own configuration gives, and
// NewFileSourceIn for paths that come from elsewhere.
func NewFileSource(path string, price float64) *FileSource {
	return &FileSource{name: "file " + path, path: path, price: price}
}

// NewFileSourceIn returns a source reading path (a file or a directory)
// inside the directory root only: path is relative to root, and every
// open goes through os.OpenInRoot, so neither "..", an absolute path nor a
// symbolic link leads out of root. It fails with ErrConfig when path is
// absolute or climbs out of root.
func NewFileSourceIn(root, path string, price float64) (*FileSource, error) {
	if !filepath.IsLocal(path) && path != "." {
		return nil, fmt.Errorf("%w: file source path %q is not inside %s", ErrConfig, path, root)
	}
	return &FileSource{name: "file " + filepath.Join(root, path), path: filepath.Clean(path), price: price, root: root}, nil
}

func (s *FileSource) Name() string   { return s.name }
func (s *FileSource) Kind() string   { return "file" }
func (s *FileSource) Price() float64 { return s.price }

// open opens p, inside the root when the source has one.
func (s *FileSource) open(p string) (*os.File, error) {
	if s.root != "" {
		return os.OpenInRoot(s.root, p)
	}
	return os.Open(p)
}

// stat stats p, inside the root when the source has one.
func (s *FileSource) stat(p string) (fs.FileInfo, error) {
	if s.root == "" {
		return os.Stat(p)
	}
	f, err := s.open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// file returns the image file's path for im.
func (s *FileSource) file(im Image) (string, error) {
	st, err := s.stat(s.path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrCannotServe, err)
	}
	if st.IsDir() {
		return filepath.Join(s.path, im.Hex()), nil
	}
	return s.path, nil
}

// Probe reports CanServe when the image file exists with the right size.
func (s *FileSource) Probe(ctx context.Context, im Image) (Availability, error) {
	p, err := s.file(im)
	if err != nil {
		return CannotServe, nil
	}
	st, err := s.stat(p)
	if err != nil || st.IsDir() || uint64(st.Size()) != im.Size {
		return CannotServe, nil
	}
	return CanServe, nil
}

// Table reads the chunk table file, bounded by the table's size cap.
func (s *FileSource) Table(ctx context.Context, im Image) ([]byte, error) {
	p, err := s.file(im)
	if err != nil {
		return nil, err
	}
	f, err := s.open(p + TableSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no chunk table %s", ErrCannotServe, p+TableSuffix)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBounded(f, maxTableSize)
}

// Fetch reads the wanted chunks in order with one reused buffer.
func (s *FileSource) Fetch(ctx context.Context, im Image, want Chunks, deliver Deliver) error {
	p, err := s.file(im)
	if err != nil {
		return err
	}
	f, err := s.open(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCannotServe, err)
	}
	defer f.Close()
	buf := make([]byte, im.ChunkSize)
	var bad error
	for i := want.Next(0); i >= 0; i = want.Next(i + 1) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:im.ChunkLen(i)]
		if _, err := f.ReadAt(b, im.Offset(i)); err != nil {
			return fmt.Errorf("read chunk %d: %w", i, err)
		}
		if err := deliver(i, b); err != nil {
			if errors.Is(err, ErrSink) {
				return err
			}
			bad = err
		}
	}
	return bad
}

// readBounded reads r to the end, failing if it holds more than limit bytes.
func readBounded(r io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: chunk table over %d bytes", ErrChunkTable, limit)
	}
	return b, nil
}
