//go:build unix

package broker_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/firmcast/firmcast/broker"
)

// TestWriteMosquittoPasswd: the file is replaced whole, 0600, with the
// old file's owner and group (mosquitto reads it as its own user); a bad
// line leaves the old file as it was.
func TestWriteMosquittoPasswd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte("old:$7$101$AA$BB\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	if root {
		if err := os.Chown(path, 12345, 23456); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range [][]string{{"nohash"}, {"u:plain"}, {":$7$101$AA$BB"}, {"u:$7$1\n01"}} {
		if err := broker.WriteMosquittoPasswd(path, bad); !errors.Is(err, broker.ErrBadCredentials) {
			t.Errorf("%q: %v, want ErrBadCredentials", bad, err)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != "old:$7$101$AA$BB\n" {
		t.Errorf("a refused write changed the file: %q", b)
	}
	if err := broker.WriteMosquittoPasswd(path, []string{"a:$7$101$AA$BB", "b:$7$101$CC$DD"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "a:$7$101$AA$BB\nb:$7$101$CC$DD\n" || fi.Mode().Perm() != 0o600 {
		t.Errorf("file %q mode %v", b, fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); root && (st.Uid != 12345 || st.Gid != 23456) {
		t.Errorf("owner %d:%d, want the old file's 12345:23456", st.Uid, st.Gid)
	}
}

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		text string
		pid  int
	}{
		{"4242\n", 4242},
		{"  17 ", 17},
		{"", 0},
		{"0\n", 0},
		{"-3\n", 0},
		{"12abc\n", 0},
	} {
		p := filepath.Join(dir, "pid")
		os.WriteFile(p, []byte(c.text), 0o600)
		pid, err := broker.ReadPIDFile(p)
		if pid != c.pid || (err == nil) != (c.pid > 0) {
			t.Errorf("%q: %d, %v; want %d", c.text, pid, err, c.pid)
		}
	}
	if _, err := broker.ReadPIDFile(filepath.Join(dir, "none")); err == nil {
		t.Error("a missing pid file was read")
	}
	if err := broker.ReloadMosquitto(0); err == nil {
		t.Error("ReloadMosquitto(0) succeeded")
	}
}
