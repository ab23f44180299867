package delta

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gabstv/go-bsdiff/pkg/bsdiff"
)

// control is one bsdiff control triplet: add addLen difference bytes
// from the source, insert extraLen literal bytes, then move the source
// position by seek.
type control struct {
	addLen, extraLen, seek int64
}

// diffControls runs bsdiff (on the publisher, where memory is plenty:
// about 17 bytes per source byte) and returns its control triplets only.
// The difference and literal bytes are recomputed from source and target
// by Make, so nothing of bsdiff's output is trusted but its plan, and
// every step of the plan is checked against the images.
func diffControls(source, target []byte) (ctrls []control, err error) {
	if len(source) == 0 {
		return []control{{extraLen: int64(len(target))}}, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bsdiff panicked: %v", ErrDiff, r)
		}
	}()
	patch, err := bsdiff.Bytes(source, target)
	if err != nil {
		return nil, fmt.Errorf("%w: bsdiff: %w", ErrDiff, err)
	}
	return parseBSDIFF40(patch, len(target))
}

// parseBSDIFF40 reads the control block of a BSDIFF40 patch: a 32-byte
// header ("BSDIFF40", control block length, difference block length,
// target size, as bsdiff's sign-magnitude 64-bit integers), then the
// bzip2-compressed control triplets.
func parseBSDIFF40(p []byte, targetLen int) ([]control, error) {
	if len(p) < 32 || string(p[:8]) != "BSDIFF40" {
		return nil, fmt.Errorf("%w: not a BSDIFF40 patch", ErrDiff)
	}
	ctrlLen, newLen := offtin(p[8:]), offtin(p[24:])
	if ctrlLen < 0 || ctrlLen > int64(len(p)-32) || newLen != int64(targetLen) {
		return nil, fmt.Errorf("%w: BSDIFF40 header: control block %d bytes, target %d bytes", ErrDiff, ctrlLen, newLen)
	}
	r := bzip2.NewReader(bytes.NewReader(p[32 : 32+ctrlLen]))
	var ctrls []control
	var buf [24]byte
	for {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return ctrls, nil
			}
			return nil, fmt.Errorf("%w: BSDIFF40 control block: %w", ErrDiff, err)
		}
		ctrls = append(ctrls, control{offtin(buf[0:]), offtin(buf[8:]), offtin(buf[16:])})
	}
}

// offtin decodes bsdiff's sign-magnitude little-endian 64-bit integer.
func offtin(b []byte) int64 {
	v := binary.LittleEndian.Uint64(b)
	y := int64(v &^ (1 << 63))
	if v&(1<<63) != 0 {
		y = -y
	}
	return y
}
