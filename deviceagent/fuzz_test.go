package deviceagent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

// FuzzLoadState feeds arbitrary bytes as the persisted state file: loading
// never panics, and an accepted record round-trips through saveState.
func FuzzLoadState(f *testing.F) {
	dir := f.TempDir()
	r := Record{V: 1, State: schemas.StateDownloading, Campaign: "c", Image: make([]byte, 32), Slot: 1, SlotOpen: true,
		Counter: 9, Done: []string{"a/b"}, Sources: []schemas.SourceHint{{Kind: "http", URI: "https://x"}}}
	if err := saveState(dir, &r, true); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(filepath.Join(dir, StateFile))
	f.Add(seed)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := LoadState(dir)
		if err != nil {
			return
		}
		if err := saveState(dir, &r, true); err != nil {
			t.Fatalf("accepted state does not save: %v", err)
		}
		if _, err := LoadState(dir); err != nil {
			t.Fatalf("saved state does not load: %v", err)
		}
	})
}
