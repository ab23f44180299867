package publisher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// An image uploaded with Config.CodedRepair is stored with its coded
// chunk table (schemas.ChunkTable with Block > 0: the chunk hashes and
// the parity hashes). It is served with two tables, chosen by the
// delivery protocol the device speaks (schemas.ChunkRequest.Protocol):
//
//   - the coded table, to devices of schemas.ProtocolCoded, which take
//     parity chunks and are repaired with parity;
//   - the plain table (the coded one without keys 5 to 7: the same chunk
//     hashes, exactly what schemas.BuildChunkTable makes for the image),
//     to devices of schemas.ProtocolPlain, the previous agents, which
//     cannot decode a coded table and are repaired by chunks
//     (re-broadcast or unicast), in the same campaign and wave.
//
// The signed manifest commits both: the firmcast chunk parameter
// (suit.ParamFirmcast, the one agents of protocol 1 read) names the plain
// table's digest, as it always did, and suit.ParamFirmcastCodedTable the
// coded table's (see manifestTables). A device authenticates whichever
// table it takes against the digest the manifest signs for it, so a
// forged parity hash is refused like a forged chunk hash.

// plainTable returns the plain form of t: its chunk hashes without the
// parity commitment (t itself when t is not coded).
func plainTable(t *schemas.ChunkTable) *schemas.ChunkTable {
	if !t.Coded() {
		return t
	}
	c := *t
	c.Block, c.ParityPerBlock, c.Parity = 0, 0, nil
	return &c
}

// plainTableBytes returns the encoding of d's plain table (d.tableBytes
// when d is not coded), computed once per image and kept in its wave
// state.
func (dl *delivery) plainTableBytes(d *imageData) ([]byte, error) {
	if !d.table.Coded() {
		return d.tableBytes, nil
	}
	w := dl.waveFor(d.info.Digest)
	dl.waveMu.Lock()
	b := w.plain
	dl.waveMu.Unlock()
	if b != nil {
		return b, nil
	}
	b, err := schemas.Encode(plainTable(d.table))
	if err != nil {
		return nil, fmt.Errorf("publisher: plain chunk table of %s: %w", d.info.Digest, err)
	}
	dl.waveMu.Lock()
	w.plain = b
	dl.waveMu.Unlock()
	return b, nil
}

// tableFor returns the encoded chunk table a device of delivery protocol
// proto is sent for d: the coded table to devices that speak coded
// repair, the plain one to the others.
func (dl *delivery) tableFor(d *imageData, proto int) ([]byte, error) {
	if speaksCoded(proto) {
		return d.tableBytes, nil
	}
	return dl.plainTableBytes(d)
}

// speaksCoded reports whether a device of delivery protocol proto takes
// coded tables and parity repair.
func speaksCoded(proto int) bool { return proto >= schemas.ProtocolCoded }

// manifestTables returns the chunk-table digests a manifest for img
// signs: plain, the SHA-256 of its plain table (suit.ParamFirmcast, for
// every agent), and coded, the SHA-256 of its coded table
// (suit.ParamFirmcastCodedTable), nil when img is not coded.
func (p *Publisher) manifestTables(ctx context.Context, img Image) (plain, coded []byte, err error) {
	d, err := p.loadImage(ctx, img.Digest)
	if err != nil {
		return nil, nil, err
	}
	if !d.table.Coded() {
		sum, _ := hex.DecodeString(img.TableDigest)
		return sum, nil, nil
	}
	pb, err := p.dl.plainTableBytes(d)
	if err != nil {
		return nil, nil, err
	}
	ps, cs := sha256.Sum256(pb), sha256.Sum256(d.tableBytes)
	return ps[:], cs[:], nil
}
