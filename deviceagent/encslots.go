package deviceagent

import (
	"context"
	"fmt"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/fetcher"
	"github.com/firmcast/firmcast/schemas"
)

// Encrypted slots (issue 17, at rest; Config.EncryptedSlots). By default
// an encrypted image is decrypted where each chunk lands (decryptSink)
// and the candidate slot holds plaintext. With encrypted slots the slot
// keeps the ciphertext exactly as fetched (each chunk checked against the
// signed ciphertext table), and Commit hands bootctl the content key and
// counter block (bootctl.SlotEncryption): bootctl checks, in one pass,
// the slot against the signed ciphertext digest and its decryption
// against the signed plaintext digest, then seals the slot with the key
// wrapped by a key derived from the device's KEK (its root of trust);
// the bootloader decrypts as it installs. Whether an update keeps its
// ciphertext is decided when its slot is opened and persisted
// (Record.CipherSlot), so a restart resumes the slot the way it began.

// checkEncryptedSlots refuses Config.EncryptedSlots on a device whose
// bootloader cannot keep encrypted slots (no KEK, or secure-boot mode).
func checkEncryptedSlots(cfg Config) error {
	if cfg.EncryptedSlots && !cfg.Boot.SupportsEncryptedSlots() {
		return fmt.Errorf("%w: encrypted slots need a KEK in the bootloader's root of trust and no secure-boot mode", ErrConfig)
	}
	return nil
}

// keepsCiphertext reports whether the update whose slot is being opened
// keeps its ciphertext in the slot. a.mu must be held.
func (a *Agent) keepsCiphertextLocked() bool { return a.st.Encrypted && a.cfg.EncryptedSlots }

// candidateSink is the fetcher's sink for the candidate: the slot as is
// (a plain image, or an encrypted one kept encrypted), or the slot behind
// decryptSink.
func (a *Agent) candidateSink(cand *bootctl.Candidate, u *encUpdate) fetcher.Sink {
	s := slotSink{cand, a.cfg.Boot.Flash()}
	a.mu.Lock()
	keep := a.st.CipherSlot
	a.mu.Unlock()
	if u == nil || keep {
		return s
	}
	// Each chunk is checked against the signed ciphertext table, then
	// decrypted where it lands.
	return newDecryptSink(s, u.cc)
}

// slotEncryption is CandidateInfo.Encryption for the update st: nil
// unless its slot keeps the ciphertext. The ciphertext digest is st.Image,
// which verify checked against the signed manifest.
func (a *Agent) slotEncryption(ctx context.Context, st Record) (*bootctl.SlotEncryption, error) {
	if !st.Encrypted || !st.CipherSlot {
		return nil, nil
	}
	u, err := a.encrypted(ctx)
	if err != nil {
		return nil, err
	}
	if u == nil {
		return nil, permanent(schemas.CodeMalformed, fmt.Errorf("the update's manifest lost its encryption parameter"))
	}
	key, iv, err := u.cc.CTRKey()
	if err != nil {
		return nil, permanent(schemas.CodeUnsupported, err)
	}
	if len(iv) != 16 || len(st.Image) != 32 {
		return nil, permanent(schemas.CodeMalformed, fmt.Errorf("counter block of %d bytes, ciphertext digest of %d", len(iv), len(st.Image)))
	}
	e := &bootctl.SlotEncryption{Key: key}
	copy(e.IV[:], iv)
	copy(e.CiphertextDigest[:], st.Image)
	return e, nil
}
