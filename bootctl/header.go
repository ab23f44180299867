package bootctl

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
)

// Header wire format (little endian), modelled on the Mbed bootloader's
// metadata header, at the start of every image region:
//
//	off  len  field
//	  0    4  magic "FCBH"
//	  4    2  header version (1)
//	  6    2  campaign id length (0..64)
//	  8    8  firmware version (the manifest's SUIT sequence number)
//	 16    8  security counter (anti-rollback, separate from the version)
//	 24    8  image size in bytes
//	 32   32  SHA-256 of the image
//	 64   64  campaign id, zero padded
//	128    4  envelope length (0 unless secure-boot mode)
//	132    4  CRC-32 (IEEE) of bytes 0..131
//	136   32  HMAC-SHA256(device key, bytes 0..135 || envelope)
//	176    -  signed SUIT envelope, if any
const (
	headerMagic    = "FCBH"
	headerVersion  = 1
	headerSize     = 168
	envelopeOffset = 176
	// MaxCampaignLen bounds Header.Campaign.
	MaxCampaignLen = 64
)

// Header is the metadata of one stored image.
type Header struct {
	// Version is the firmware version: the manifest's SUIT sequence number.
	Version uint64 `json:"version"`
	// SecurityCounter is compared with the anti-rollback floor.
	SecurityCounter uint64 `json:"security_counter"`
	// Size is the image size in bytes.
	Size uint64 `json:"size"`
	// Digest is the SHA-256 of the image.
	Digest Digest `json:"digest"`
	// Campaign is the campaign that delivered the image, if any.
	Campaign string `json:"campaign,omitempty"`
	// EnvelopeLen is the length of the stored signed envelope.
	EnvelopeLen uint32 `json:"envelope_len,omitempty"`
}

// Digest is a SHA-256 digest, shown in hex.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes the digest in hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// marshalHeader returns the header bytes followed by the envelope, tagged
// with key.
func marshalHeader(h Header, key, envelope []byte) ([]byte, error) {
	if len(h.Campaign) > MaxCampaignLen {
		return nil, fmt.Errorf("%w: campaign id is %d bytes, over %d", ErrInvalidOption, len(h.Campaign), MaxCampaignLen)
	}
	b := make([]byte, envelopeOffset+len(envelope))
	copy(b, headerMagic)
	binary.LittleEndian.PutUint16(b[4:], headerVersion)
	binary.LittleEndian.PutUint16(b[6:], uint16(len(h.Campaign)))
	binary.LittleEndian.PutUint64(b[8:], h.Version)
	binary.LittleEndian.PutUint64(b[16:], h.SecurityCounter)
	binary.LittleEndian.PutUint64(b[24:], h.Size)
	copy(b[32:64], h.Digest[:])
	copy(b[64:128], h.Campaign)
	binary.LittleEndian.PutUint32(b[128:], uint32(len(envelope)))
	binary.LittleEndian.PutUint32(b[132:], crc32.ChecksumIEEE(b[:132]))
	copy(b[136:168], headerTag(key, b[:136], envelope))
	for i := headerSize; i < envelopeOffset; i++ {
		b[i] = Erased
	}
	copy(b[envelopeOffset:], envelope)
	return b, nil
}

// parseHeader decodes the first headerSize bytes of b and checks magic,
// header version, field bounds and CRC (ErrNoHeader, ErrHeaderCorrupt).
// It does not check the tag.
func parseHeader(b []byte) (Header, error) {
	if len(b) < headerSize {
		return Header{}, fmt.Errorf("%w: %d bytes, need %d", ErrHeaderCorrupt, len(b), headerSize)
	}
	if isErased(b[:headerSize]) {
		return Header{}, ErrNoHeader
	}
	if string(b[:4]) != headerMagic {
		return Header{}, fmt.Errorf("%w: magic %x", ErrHeaderCorrupt, b[:4])
	}
	if got, want := crc32.ChecksumIEEE(b[:132]), binary.LittleEndian.Uint32(b[132:]); got != want {
		return Header{}, fmt.Errorf("%w: CRC %08x, header says %08x", ErrHeaderCorrupt, got, want)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != headerVersion {
		return Header{}, fmt.Errorf("%w: header version %d, want %d", ErrHeaderCorrupt, v, headerVersion)
	}
	cl := int(binary.LittleEndian.Uint16(b[6:]))
	if cl > MaxCampaignLen {
		return Header{}, fmt.Errorf("%w: campaign id length %d over %d", ErrHeaderCorrupt, cl, MaxCampaignLen)
	}
	h := Header{
		Version:         binary.LittleEndian.Uint64(b[8:]),
		SecurityCounter: binary.LittleEndian.Uint64(b[16:]),
		Size:            binary.LittleEndian.Uint64(b[24:]),
		Campaign:        string(b[64 : 64+cl]),
		EnvelopeLen:     binary.LittleEndian.Uint32(b[128:]),
	}
	copy(h.Digest[:], b[32:64])
	for _, c := range b[64+cl : 128] {
		if c != 0 {
			return Header{}, fmt.Errorf("%w: campaign id padding not zero", ErrHeaderCorrupt)
		}
	}
	return h, nil
}

// verifyTag checks the HMAC in raw (a marshalled header) over the header
// and envelope.
func verifyTag(key, raw, envelope []byte) error {
	if !hmac.Equal(raw[136:168], headerTag(key, raw[:136], envelope)) {
		return ErrTagMismatch
	}
	return nil
}

func headerTag(key, fields, envelope []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(fields)
	m.Write(envelope)
	return m.Sum(nil)
}

func isErased(p []byte) bool {
	for _, c := range p {
		if c != Erased {
			return false
		}
	}
	return true
}
