package fetcher

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
)

// File names in Config.StateDir.
const (
	progressFile = "fetch-progress.cbor"
	tableFile    = "fetch-table.cbor"
	// parityScratchFile holds the parity chunks a coded fetch holds
	// (Config.ParityInMemory), for the fetch's duration.
	parityScratchFile = "fetch-parity.scratch"
)

// progressRecord is the persisted progress of one image's fetch.
//
//	progress = { 0: uint, 1: bstr, 2: bstr, 3: uint, 4: uint, 5: bstr,
//	             6: bstr, 7: uint, 8: uint }
type progressRecord struct {
	V           uint   `cbor:"0,keyasint"`
	Image       []byte `cbor:"1,keyasint"`
	TableDigest []byte `cbor:"2,keyasint"`
	Size        uint64 `cbor:"3,keyasint"`
	ChunkSize   uint32 `cbor:"4,keyasint"`
	// Bitmap holds the chunks written to the sink and verified.
	Bitmap []byte `cbor:"5,keyasint"`
	// HashState is the marshalled SHA-256 state over chunks [0, Hashed).
	HashState []byte `cbor:"6,keyasint"`
	Hashed    uint32 `cbor:"7,keyasint"`
	BadChunks uint64 `cbor:"8,keyasint"`
}

// progress is the in-memory state of one fetch.
type progress struct {
	im     Image
	dir    string
	done   bitmap
	table  *schemas.ChunkTable
	hash   hash.Hash // over chunks [0, hashed)
	hashed int
	bad    uint64
	dirty  int  // chunks recorded since the last save
	noSync bool // write and rename without fsync (simulators)
}

func newProgress(dir string, im Image) *progress {
	return &progress{im: im, dir: dir, done: newBitmap(im.Chunks()), hash: sha256.New()}
}

// loadProgress reads the persisted progress of im. It returns a fresh
// progress (and resumed=false) when there is none; when the file is
// unreadable or belongs to another image it is discarded, and the error
// (wrapping ErrState) is returned next to the fresh progress for logging.
func loadProgress(dir string, im Image) (p *progress, resumed bool, err error) {
	p = newProgress(dir, im)
	b, err := os.ReadFile(filepath.Join(dir, progressFile))
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("%w: %v", ErrState, err)
	}
	var r progressRecord
	if err := schemas.Unmarshal(b, &r); err != nil {
		return p, false, fmt.Errorf("%w: decode %s: %v", ErrState, progressFile, err)
	}
	if !bytes.Equal(r.Image, im.Digest) || !bytes.Equal(r.TableDigest, im.TableDigest) ||
		r.Size != im.Size || r.ChunkSize != im.ChunkSize || len(r.Bitmap) != len(p.done.bits) {
		return p, false, fmt.Errorf("%w: %s is for another image (%x)", ErrState, progressFile, r.Image)
	}
	if int(r.Hashed) > p.done.n {
		return p, false, fmt.Errorf("%w: hashed %d of %d chunks", ErrState, r.Hashed, p.done.n)
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(r.HashState); err != nil {
		return p, false, fmt.Errorf("%w: hash state: %v", ErrState, err)
	}
	copy(p.done.bits, r.Bitmap)
	p.done = p.done.complement().complement() // clear bits beyond n
	p.hash, p.hashed, p.bad = h, int(r.Hashed), r.BadChunks
	if tb, err := os.ReadFile(filepath.Join(dir, tableFile)); err == nil {
		if t, err := DecodeTable(im, tb); err == nil {
			p.table = t
		}
	}
	return p, true, nil
}

// save persists the progress: write to a temporary file, fsync, rename,
// fsync the directory.
func (p *progress) save() error {
	hs, err := p.hash.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return fmt.Errorf("%w: hash state: %v", ErrState, err)
	}
	r := progressRecord{
		V: 1, Image: p.im.Digest, TableDigest: p.im.TableDigest, Size: p.im.Size, ChunkSize: p.im.ChunkSize,
		Bitmap: p.done.bits, HashState: hs, Hashed: uint32(p.hashed), BadChunks: p.bad,
	}
	b, err := schemas.Marshal(&r)
	if err != nil {
		return fmt.Errorf("%w: encode: %v", ErrState, err)
	}
	if err := writeFile(filepath.Join(p.dir, progressFile), b, !p.noSync); err != nil {
		return err
	}
	p.dirty = 0
	return nil
}

// saveTable persists the verified chunk table.
func (p *progress) saveTable(b []byte) error {
	return writeFile(filepath.Join(p.dir, tableFile), b, !p.noSync)
}

// Discard removes the persisted progress of any image from dir.
func Discard(dir string) error {
	var errs []error
	for _, n := range []string{progressFile, tableFile, parityScratchFile} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeFile persists progress with atomicfile, without the fsyncs when the
// caller simulates devices (Config.NoSync).
func writeFile(path string, data []byte, durable bool) error {
	if !durable {
		return atomicfile.WriteFileNoSync(path, data, 0o600)
	}
	return atomicfile.WriteFile(path, data, 0o600)
}
