package deviceagent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
)

// StateFile is the name of the agent's state file in its state directory.
const StateFile = "agent-state.cbor"

// maxDone bounds the remembered finished updates.
const maxDone = 32

// Record is the agent's persisted state. It is written with write, fsync,
// rename before each effect.
type Record struct {
	V     uint          `cbor:"0,keyasint"`
	State schemas.State `cbor:"1,keyasint"`
	// The update in progress (or the last one).
	Campaign  string               `cbor:"2,keyasint,omitempty"`
	Envelope  []byte               `cbor:"3,keyasint,omitempty"`
	Image     []byte               `cbor:"4,keyasint,omitempty"`
	ChunkSize uint32               `cbor:"5,keyasint,omitempty"`
	Sources   []schemas.SourceHint `cbor:"6,keyasint,omitempty"`
	Seq       uint64               `cbor:"7,keyasint,omitempty"`
	Size      uint64               `cbor:"8,keyasint,omitempty"`
	// Slot is the candidate slot; SlotOpen reports that OpenCandidate
	// erased it for this image, so a resume must not erase it again.
	Slot     int  `cbor:"9,keyasint"`
	SlotOpen bool `cbor:"10,keyasint,omitempty"`
	// Counter is the report counters' persisted ceiling: every counter
	// used so far is at or below it, and the agent persists a new one
	// (counterLease above) before it uses a counter beyond it, so a
	// restart goes on above it.
	Counter uint64 `cbor:"11,keyasint"`
	// Attempts of the current update, and when the next may start (Unix ms).
	Attempts    uint32 `cbor:"12,keyasint,omitempty"`
	NextAttempt int64  `cbor:"13,keyasint,omitempty"`
	// Code and Text describe the last failure or deferral.
	Code schemas.ErrCode `cbor:"14,keyasint,omitempty"`
	Text string          `cbor:"15,keyasint,omitempty"`
	// Deferred holds the policy's reason while an update is deferred.
	Deferred string `cbor:"16,keyasint,omitempty"`
	// Done lists updates finished (confirmed, rolled back, failed or
	// skipped) as campaign "/" image hex, newest last.
	Done []string `cbor:"17,keyasint,omitempty"`
	// Source is the kind of the fetch source last in use.
	Source string `cbor:"18,keyasint,omitempty"`
	// Bytes is the number of bytes verified so far.
	Bytes uint64 `cbor:"19,keyasint,omitempty"`
	// Offline counts the fetch attempts in a row that failed only because
	// no source could be reached (fetcher.ErrUnreachable); they do not
	// count in Attempts, and shape the backoff until connectivity returns.
	Offline uint32 `cbor:"20,keyasint,omitempty"`
	// Deadline is the campaign's deadline from the signed notice, Unix
	// seconds (0 = none): the update is not started or resumed after it.
	Deadline int64 `cbor:"21,keyasint,omitempty"`
	// Key is the notice's wrapped content key (a COSE_recipient for this
	// device's key), for an encrypted image; useless without the key in
	// the device's root of trust.
	Key []byte `cbor:"30,keyasint,omitempty"`
	// Encrypted reports that the update's image is encrypted: its
	// candidate header carries the plaintext digest, which is not
	// persisted here (see isUpdateImage).
	Encrypted bool `cbor:"31,keyasint,omitempty"`
	// CipherSlot reports that the encrypted image's slot keeps its
	// ciphertext (Config.EncryptedSlots when the slot was opened): the
	// bootloader decrypts it as it installs it.
	CipherSlot bool `cbor:"40,keyasint,omitempty"`
	// Delta is the digest of the delta being staged and applied into Slot
	// (SlotOpen is then for it, and its progress is in the delta
	// directory); DeltaSize its size. Empty when the slot takes the full
	// image.
	Delta     []byte `cbor:"22,keyasint,omitempty"`
	DeltaSize uint64 `cbor:"23,keyasint,omitempty"`
	// DeltaFailed lists the deltas (hex digests) that failed during this
	// update: they are not tried again, the full image is.
	DeltaFailed []string `cbor:"24,keyasint,omitempty"`
	// Retry is the notice's Retry: install the image even if it failed
	// on this device before.
	Retry bool `cbor:"25,keyasint,omitempty"`
	// Component names the boot stage the update installs (Config.Stages),
	// from the manifest's component; empty for the application.
	Component string `cbor:"26,keyasint,omitempty"`
}

// key names an update for the Done list.
func key(campaign string, image []byte) string { return campaign + "/" + schemas.DigestHex(image) }

func (r *Record) done(k string) bool {
	for _, d := range r.Done {
		if d == k {
			return true
		}
	}
	return false
}

func (r *Record) markDone(k string) {
	if r.done(k) {
		return
	}
	r.Done = append(r.Done, k)
	if len(r.Done) > maxDone {
		r.Done = r.Done[len(r.Done)-maxDone:]
	}
}

// busy reports whether an update is in progress.
func (r *Record) busy() bool {
	switch r.State {
	case schemas.StateIdle, schemas.StateConfirmed, schemas.StateRolledBack, schemas.StateFailed, schemas.StateSkipped:
		return false
	}
	return true
}

// LoadState reads the state file in dir; a missing file is the idle state.
func LoadState(dir string) (Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{V: 1, Slot: -1}, nil
	}
	if err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrState, err)
	}
	var r Record
	if err := schemas.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %s: %v", ErrState, StateFile, err)
	}
	if r.V != 1 {
		return Record{}, fmt.Errorf("%w: %s version %d", ErrState, StateFile, r.V)
	}
	return r, nil
}

func saveState(dir string, r *Record, durable bool) error {
	b, err := schemas.Marshal(r)
	if err != nil {
		return fmt.Errorf("%w: encode: %v", ErrState, err)
	}
	if !durable {
		return atomicfile.WriteFileNoSync(filepath.Join(dir, StateFile), b, 0o600)
	}
	return atomicfile.WriteFile(filepath.Join(dir, StateFile), b, 0o600)
}
