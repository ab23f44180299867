package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// resident counts the pages of [off, off+n) of file path that are in the
// page cache.
func resident(t *testing.T, path string, off, n int64) int {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(fh.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	ps := int64(os.Getpagesize())
	vec := make([]byte, (st.Size()+ps-1)/ps)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	c := 0
	for p := off / ps; p < (off+n+ps-1)/ps; p++ {
		c += int(vec[p] & 1)
	}
	return c
}

// TestTouchFreeSlots: after TouchFreeSlots every page of each device's
// free slot is in the page cache, and stays there when a campaign's
// candidate opens the slot (its erase finds the slot known erased); the
// slot reads as erased, and a candidate written into it installs.
func TestTouchFreeSlots(t *testing.T) {
	var sfs unix.Statfs_t
	dir := t.TempDir()
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Type == unix.TMPFS_MAGIC {
		t.Skip("the temporary directory is on tmpfs, whose files are their pages")
	}
	key := testutil.SigningKey(t, "es256")
	factory := Image(1, "factory", 256<<10)
	f, err := NewFleet(context.Background(), FleetConfig{
		Devices: 3, Prefix: "d", Topics: schemas.MustTopics("touchslots"), Trust: suit.TrustAnchors{key.Public()},
		Factory: factory, Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ss := int64(f.geom.SectorSize)
	// Out of the page cache first (written back, then dropped), so that
	// what is resident after is what TouchFreeSlots put there.
	for _, d := range f.Devices {
		fh, err := os.OpenFile(d.FlashPath(), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := fh.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fadvise(int(fh.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		fh.Close()
	}
	if err := f.TouchFreeSlots(context.Background()); err != nil {
		t.Fatal(err)
	}
	v2 := Image(1, "v2", 200<<10)
	for _, d := range f.Devices {
		slot, err := d.boot.FreeSlot()
		if err != nil {
			t.Fatal(err)
		}
		r := f.layout.Slots[slot]
		off, n := int64(r.Start)*ss, int64(r.Sectors)*ss
		pages := int((n + int64(os.Getpagesize()) - 1) / int64(os.Getpagesize()))
		if got := resident(t, d.FlashPath(), off, n); got != pages {
			t.Errorf("%s: %d of the free slot's %d pages resident after TouchFreeSlots", d.ID, got, pages)
		}
		buf := make([]byte, n)
		if _, err := d.flash.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if bytes.Count(buf, []byte{bootctl.Erased}) != len(buf) {
			t.Errorf("%s: the free slot does not read as erased after TouchFreeSlots", d.ID)
		}
		cand, err := d.boot.OpenCandidate(context.Background(), slot, uint64(len(v2)))
		if err != nil {
			t.Fatal(err)
		}
		if got := resident(t, d.FlashPath(), off, n); got != pages {
			t.Errorf("%s: %d of the free slot's %d pages resident once a candidate opened it: its erase went to the file", d.ID, got, pages)
		}
		if _, err := cand.WriteAt(v2, 0); err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256(v2)
		if err := cand.Commit(context.Background(), bootctl.CandidateInfo{Version: 2, SecurityCounter: 2, Digest: digest, Campaign: "touch"}); err != nil {
			t.Fatal(err)
		}
		dec, err := d.boot.Boot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !dec.Booted || dec.Digest != digest {
			t.Errorf("%s: boot after a candidate in the touched slot: %s %s, want v2", d.ID, dec.Action, dec.Reason)
		}
	}
}
