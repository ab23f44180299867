package delta

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Checkpoint is Apply's progress: the first Frames frames of the delta
// with ID Delta are in the target, and Hash is the SHA-256 state of their
// output (crypto/sha256's MarshalBinary). Apply hands one to its save
// function after each frame; WithResume continues from one.
type Checkpoint struct {
	Delta  Digest `json:"delta"`
	Frames int    `json:"frames"`
	Hash   []byte `json:"hash"`
}

// Checkpoint binary form (MarshalBinary), little endian:
//
//	off  len  field
//	  0    4  magic "FCDC"
//	  4    4  frames done
//	  8   32  delta ID
//	 40    2  hash state length n (<= maxHashState)
//	 42    n  hash state
//	42+n   4  CRC-32 (IEEE) of bytes [0, 42+n)
const (
	checkpointMagic = "FCDC"
	maxHashState    = 256
)

// MarshalBinary encodes the checkpoint. Errors wrap ErrCheckpoint.
func (c Checkpoint) MarshalBinary() ([]byte, error) {
	if len(c.Hash) > maxHashState || c.Frames < 0 || int64(c.Frames) > 1<<32-1 {
		return nil, fmt.Errorf("%w: %d frames, %d-byte hash state", ErrCheckpoint, c.Frames, len(c.Hash))
	}
	b := make([]byte, 0, 46+len(c.Hash))
	b = append(b, checkpointMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(c.Frames))
	b = append(b, c.Delta[:]...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(c.Hash)))
	b = append(b, c.Hash...)
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b)), nil
}

// UnmarshalBinary decodes a checkpoint MarshalBinary wrote. It checks the
// form only (magic, lengths, CRC); Apply checks that the checkpoint
// belongs to its delta. Errors wrap ErrCheckpoint.
func (c *Checkpoint) UnmarshalBinary(b []byte) error {
	if len(b) < 46 || string(b[:4]) != checkpointMagic {
		return fmt.Errorf("%w: not a checkpoint (%d bytes)", ErrCheckpoint, len(b))
	}
	n := int(binary.LittleEndian.Uint16(b[40:]))
	if n > maxHashState || len(b) != 46+n {
		return fmt.Errorf("%w: %d bytes with a %d-byte hash state", ErrCheckpoint, len(b), n)
	}
	if crc32.ChecksumIEEE(b[:42+n]) != binary.LittleEndian.Uint32(b[42+n:]) {
		return fmt.Errorf("%w: CRC mismatch", ErrCheckpoint)
	}
	var d Checkpoint
	d.Frames = int(binary.LittleEndian.Uint32(b[4:]))
	copy(d.Delta[:], b[8:40])
	d.Hash = append([]byte(nil), b[42:42+n]...)
	*c = d
	return nil
}
