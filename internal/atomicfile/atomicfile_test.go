package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// errInjected is the fault faultFS injects.
var errInjected = errors.New("injected fault")

// faultFS is the real file system, recording each step of write and
// failing the step named fail.
type faultFS struct {
	osFS
	fail  string
	steps []string
}

func (f *faultFS) step(name string) error {
	f.steps = append(f.steps, name)
	if name == f.fail {
		return errInjected
	}
	return nil
}

func (f *faultFS) CreateTemp(dir, pattern string) (file, error) {
	if err := f.step("create"); err != nil {
		return nil, err
	}
	t, err := f.osFS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultFile{file: t, fs: f}, nil
}

func (f *faultFS) Rename(oldpath, newpath string) error {
	if err := f.step("rename"); err != nil {
		return err
	}
	return f.osFS.Rename(oldpath, newpath)
}

func (f *faultFS) SyncDir(dir string) error {
	if err := f.step("syncdir"); err != nil {
		return err
	}
	return f.osFS.SyncDir(dir)
}

type faultFile struct {
	file
	fs *faultFS
}

// Write writes half of b before failing, as a full disk would.
func (f *faultFile) Write(b []byte) (int, error) {
	if err := f.fs.step("write"); err != nil {
		n, _ := f.file.Write(b[:len(b)/2])
		return n, err
	}
	return f.file.Write(b)
}

func (f *faultFile) Chmod(m fs.FileMode) error {
	if err := f.fs.step("chmod"); err != nil {
		return err
	}
	return f.file.Chmod(m)
}

func (f *faultFile) Sync() error {
	if err := f.fs.step("sync"); err != nil {
		return err
	}
	return f.file.Sync()
}

func (f *faultFile) Close() error {
	if err := f.fs.step("close"); err != nil {
		f.file.Close()
		return err
	}
	return f.file.Close()
}

var (
	durableSteps = []string{"create", "write", "chmod", "sync", "close", "rename", "syncdir"}
	noSyncSteps  = []string{"create", "write", "chmod", "close", "rename"}
)

// TestWriteSteps: WriteFile writes, chmods, fsyncs, closes, renames and
// fsyncs the directory, in that order; WriteFileNoSync skips both fsyncs.
func TestWriteSteps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		durable bool
		want    []string
	}{
		{"durable", true, durableSteps},
		{"no sync", false, noSyncSteps},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			fsys := &faultFS{}
			if err := write(fsys, path, []byte("new"), 0o600, tc.durable); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(fsys.steps, tc.want) {
				t.Fatalf("steps %v, want %v", fsys.steps, tc.want)
			}
			checkFile(t, path, "new", 0o600)
			checkNoTemp(t, path)
		})
	}
}

// TestWriteFault: whichever step fails, the target is complete: before the
// rename it keeps its old content (or stays absent), after it holds the new
// content; the error wraps the failure and names the path, and no temporary
// file is left behind.
func TestWriteFault(t *testing.T) {
	for _, step := range durableSteps {
		for _, existed := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/existed=%v", step, existed), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "state")
				if existed {
					if err := os.WriteFile(path, []byte("old content"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				fsys := &faultFS{fail: step}
				err := write(fsys, path, []byte("new content, longer than the old"), 0o600, true)
				if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v: want the injected fault, naming %s", err, path)
				}
				switch {
				case step == "syncdir":
					checkFile(t, path, "new content, longer than the old", 0o600)
				case existed:
					checkFile(t, path, "old content", 0o644)
				default:
					if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
						t.Fatalf("%s after a failed first write: %v, want absent", path, err)
					}
				}
				checkNoTemp(t, path)
			})
		}
	}
}

// TestWritePerm: the file gets perm exactly, whatever the umask and the
// mode of the file it replaces.
func TestWritePerm(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  fs.FileMode // 0: no file before
		perm fs.FileMode
	}{
		{"new 0600", 0, 0o600},
		{"new 0644", 0, 0o644},
		{"new 0666, umask ignored", 0, 0o666},
		{"0644 replaced by 0600", 0o644, 0o600},
		{"0600 replaced by 0640", 0o600, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f")
			if tc.old != 0 {
				if err := os.WriteFile(path, []byte("old"), tc.old); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.old); err != nil {
					t.Fatal(err)
				}
			}
			for name, w := range map[string]func(string, []byte, fs.FileMode) error{"WriteFile": WriteFile, "WriteFileNoSync": WriteFileNoSync} {
				if err := w(path, []byte(name), tc.perm); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				checkFile(t, path, name, tc.perm)
			}
		})
	}
}

// TestWriteTarget: a directory is never replaced; a symbolic link is
// replaced by the file, and what it pointed to is untouched.
func TestWriteTarget(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(sub, []byte("x"), 0o600); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("over a directory: %v, want ErrNotRegular", err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Fatalf("directory after a refused write: %v %v", fi, err)
	}
	target, link := filepath.Join(dir, "target"), filepath.Join(dir, "link")
	if err := os.WriteFile(target, []byte("target"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(link, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkFile(t, link, "new", 0o600)
	checkFile(t, target, "target", 0o600)
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("in a missing directory: %v, want fs.ErrNotExist", err)
	}
}

// TestConcurrentReaders: readers racing two writers always see one whole
// version, never a mix or a truncated file.
func TestConcurrentReaders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	versions := [][]byte{bytes.Repeat([]byte{'a'}, 64<<10), bytes.Repeat([]byte{'b'}, 64<<10)}
	if err := WriteFile(path, versions[0], 0o600); err != nil {
		t.Fatal(err)
	}
	const writes = 50
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	done := make(chan struct{})
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range writes {
				if err := WriteFileNoSync(path, versions[w], 0o600); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				b, err := os.ReadFile(path)
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(b, versions[0]) && !bytes.Equal(b, versions[1]) {
					errc <- fmt.Errorf("read %d bytes that are neither version", len(b))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	checkNoTemp(t, path)
}

func checkFile(t *testing.T, path, want string, perm fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Fatalf("%s holds %q, want %q", path, b, want)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != perm {
		t.Fatalf("%s mode %v, want a regular file with %v", path, fi.Mode(), perm)
	}
}

func checkNoTemp(t *testing.T, path string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}
