package bootctl

import (
	"bytes"
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
//	132    4  CRC-32 (IEEE) of bytes 0..131 (version 2: || bytes 176..303)
//	136   32  HMAC-SHA256(device key, bytes 0..135 || bytes 176..end)
//	176    -  signed SUIT envelope, if any (version 1)
//
// Header version 2 marks an encrypted slot (slotenc.go): the image bytes
// are AES-CTR ciphertext, the SHA-256 at 32 is the ciphertext's, and a
// 128-byte encryption block at 176 (covered by the CRC and the HMAC)
// carries the initial counter block and the content key with the
// plaintext's SHA-256, wrapped with the slot key derived from the
// device's KEK; the envelope follows it, at 304. Only candidate slots hold
// version 2 headers: the active region is always plaintext, version 1.
const (
	headerMagic    = "FCBH"
	headerVersion  = 1
	headerVersion2 = 2
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
	// Encrypted reports a slot that holds ciphertext (header version 2):
	// the bootloader decrypts it as it installs it. Digest is still the
	// plaintext's, unwrapped from the header with the device's KEK.
	Encrypted bool `json:"encrypted,omitempty"`
}

// Digest is a SHA-256 digest, shown in hex.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes the digest in hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// marshalHeader returns the header bytes followed by the envelope, tagged
// with key.
func marshalHeader(h Header, key, envelope []byte) ([]byte, error) {
	return marshalHeaderExt(h, nil, key, envelope)
}

// marshalHeaderExt is marshalHeader with an encryption block (header
// version 2) when ext is not nil; h.Digest is then the ciphertext's.
func marshalHeaderExt(h Header, ext, key, envelope []byte) ([]byte, error) {
	if len(h.Campaign) > MaxCampaignLen {
		return nil, fmt.Errorf("%w: campaign id is %d bytes, over %d", ErrInvalidOption, len(h.Campaign), MaxCampaignLen)
	}
	version := uint16(headerVersion)
	if ext != nil {
		if len(ext) != encBlockSize {
			return nil, fmt.Errorf("%w: encryption block of %d bytes, want %d", ErrInvalidOption, len(ext), encBlockSize)
		}
		version = headerVersion2
	}
	b := make([]byte, envelopeOffset+len(ext)+len(envelope))
	copy(b, headerMagic)
	binary.LittleEndian.PutUint16(b[4:], version)
	binary.LittleEndian.PutUint16(b[6:], uint16(len(h.Campaign)))
	binary.LittleEndian.PutUint64(b[8:], h.Version)
	binary.LittleEndian.PutUint64(b[16:], h.SecurityCounter)
	binary.LittleEndian.PutUint64(b[24:], h.Size)
	copy(b[32:64], h.Digest[:])
	copy(b[64:128], h.Campaign)
	binary.LittleEndian.PutUint32(b[128:], uint32(len(envelope)))
	copy(b[envelopeOffset:], ext)
	copy(b[envelopeOffset+len(ext):], envelope)
	binary.LittleEndian.PutUint32(b[132:], headerCRC(b[:132], ext))
	copy(b[136:168], headerTag(key, b[:136], b[envelopeOffset:]))
	for i := headerSize; i < envelopeOffset; i++ {
		b[i] = Erased
	}
	return b, nil
}

func headerCRC(fields, ext []byte) uint32 {
	return crc32.Update(crc32.ChecksumIEEE(fields), crc32.IEEETable, ext)
}

// parseHeader decodes the first headerSize bytes of b (for version 2,
// the encryption block too: b must then hold envelopeOffset+encBlockSize
// bytes) and checks magic, header version, field bounds and CRC
// (ErrNoHeader, ErrHeaderCorrupt). It does not check the tag; for version
// 2 it sets Encrypted and leaves the ciphertext digest in Digest.
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
	v := binary.LittleEndian.Uint16(b[4:])
	var ext []byte
	switch v {
	case headerVersion:
	case headerVersion2:
		if len(b) < envelopeOffset+encBlockSize {
			return Header{}, fmt.Errorf("%w: version 2 header of %d bytes, need %d", ErrHeaderCorrupt, len(b), envelopeOffset+encBlockSize)
		}
		ext = b[envelopeOffset : envelopeOffset+encBlockSize]
	default:
		return Header{}, fmt.Errorf("%w: header version %d, want %d or %d", ErrHeaderCorrupt, v, headerVersion, headerVersion2)
	}
	if got, want := headerCRC(b[:132], ext), binary.LittleEndian.Uint32(b[132:]); got != want {
		return Header{}, fmt.Errorf("%w: CRC %08x, header says %08x", ErrHeaderCorrupt, got, want)
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
		Encrypted:       v == headerVersion2,
	}
	copy(h.Digest[:], b[32:64])
	for _, c := range b[64+cl : 128] {
		if c != 0 {
			return Header{}, fmt.Errorf("%w: campaign id padding not zero", ErrHeaderCorrupt)
		}
	}
	return h, nil
}

// verifyTag checks the HMAC in raw (a marshalled header, with its
// encryption block and envelope) over the header fields and everything
// from envelopeOffset on.
func verifyTag(key, raw []byte) error {
	if !hmac.Equal(raw[136:168], headerTag(key, raw[:136], raw[envelopeOffset:])) {
		return ErrTagMismatch
	}
	return nil
}

func headerTag(key, fields, rest []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(fields)
	m.Write(rest)
	return m.Sum(nil)
}

// erasedBlock is erased bytes to compare against (bytes.Equal is
// vectorised; a byte loop is not).
var erasedBlock = bytes.Repeat([]byte{Erased}, 4096)

func isErased(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(erasedBlock))
		if !bytes.Equal(p[:n], erasedBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
