package schemas

import (
	"errors"
	"fmt"
)

// Digest is a SHA-256 digest as a chunk table lists them: on the wire a
// CBOR byte string of exactly DigestSize bytes, in memory the bytes
// themselves. A table's digests are then one allocation without
// pointers: as [][]byte an 8 MiB image's coded table was 640 objects
// and as many pointers per device (45 KB where 20 KB is digests), which
// the garbage collector marked at every cycle of a host simulating 500
// devices.
type Digest [DigestSize]byte

// UnmarshalCBOR implements cbor.Unmarshaler: data must be a byte string
// of DigestSize bytes in its shortest head (the only encoding Marshal
// writes), nothing else. Decode reports its error as ErrMalformed.
func (d *Digest) UnmarshalCBOR(data []byte) error {
	if len(data) < 1 || data[0]>>5 != 2 {
		return errors.New("digest is not a byte string")
	}
	if len(data) != 2+DigestSize || data[0] != 0x58 || data[1] != DigestSize {
		if _, size, n, ok := readHead(data); ok && uint64(len(data)-n) == size {
			return fmt.Errorf("digest is %d bytes, want %d", size, DigestSize)
		}
		return fmt.Errorf("digest is not a %d-byte string", DigestSize)
	}
	copy(d[:], data[2:])
	return nil
}
