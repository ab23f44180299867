package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, durably: write to a temporary file in
// the same directory, chmod perm, fsync, rename over path, fsync the
// directory. After it returns nil, path holds data with mode perm and
// survives a crash; after an error, see the package doc for what path holds.
//
// A path that exists and is not a regular file is refused with
// ErrNotRegular; a symbolic link to a regular file is replaced by the new
// file (the rename replaces the link; nothing is written through it). Other errors wrap the *fs.PathError of
// the step that failed and name path. Concurrent WriteFile calls on one
// path are safe: the last rename wins and every reader sees one whole
// version.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return write(osFS{}, path, data, perm, true)
}

// WriteFileNoSync is WriteFile without the file and directory fsyncs: a
// reader never sees a partial file, but a host crash may lose the write.
func WriteFileNoSync(path string, data []byte, perm fs.FileMode) error {
	return write(osFS{}, path, data, perm, false)
}

// fileSystem is what write needs from the operating system; tests wrap
// osFS to record the steps and make one of them fail.
type fileSystem interface {
	Stat(name string) (fs.FileInfo, error)
	CreateTemp(dir, pattern string) (file, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// file is the temporary file.
type file interface {
	Name() string
	Write(b []byte) (int, error)
	Chmod(mode fs.FileMode) error
	Sync() error
	Close() error
}

func write(fsys fileSystem, path string, data []byte, perm fs.FileMode, durable bool) error {
	if fi, err := fsys.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s (%s)", ErrNotRegular, path, fi.Mode().Type())
	}
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if !renamed {
			f.Close() // after a Close that returned, this only reports ErrClosed
			fsys.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("atomicfile: write %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	renamed = true
	if !durable {
		return nil
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: %s written, but the rename may not be durable: %w", path, err)
	}
	return nil
}

// osFS is the real file system.
type osFS struct{}

func (osFS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

func (osFS) CreateTemp(dir, pattern string) (file, error) { return os.CreateTemp(dir, pattern) }

func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (osFS) Remove(name string) error { return os.Remove(name) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
