// Package schemas is firmcast's wire contract: the CBOR messages that cross
// a broker (update notice, chunk request, chunk, chunk table, device report,
// campaign command and reply), the one deterministic encoder and the one
// strict decoder used for them, and the topic and subject names of both
// transports (MQTT v5 and NATS).
//
// Who does what: the publisher writes notices, chunk tables and chunks and
// reads reports and chunk requests; the device agent does the reverse. The
// signed SUIT manifest travels inside a notice as opaque bytes and is decoded
// by the sub-package schemas/suit.
//
// Two signatures reach a device. The firmware signer (the operator's
// offline key, or the server's) signs the SUIT manifest: what the image is.
// The campaign authority (the publisher's notice key) signs every notice
// (UpdateNotice.Auth over UpdateNotice.SignedBytes, made and checked by
// schemas/suit): that this campaign sends this envelope to this device or
// class. A device acts on nothing in a notice before that signature and
// the target check pass, so a forged, replayed or misrouted notice cannot
// name a campaign, and a refusal of one is reported as a security event
// (DeviceReport.Security), never as the outcome of the campaign it names. A chunk table's digest (ChunkTable.Digest)
// is what the manifest signs, so a device checks the table against the
// manifest and every chunk against the table (ChunkTable.VerifyChunk) before
// writing it.
//
// Files: messages.go (types, enums, limits), validate.go (each type's
// contract), codec.go (Encode, Decode), cbor.go (the encoding and decoding
// modes), chunktable.go (building and checking chunk tables, digest hex),
// bitmap.go (chunk bitmaps and ranges), topics.go (topic and subject
// names), errors.go (sentinels). firmcast.cddl describes every message;
// testdata/*.json holds vectors as hex and CBOR diagnostic notation.
//
// Every message carries a format version in key 0 and is a map with small
// integer keys. Encoding is Core Deterministic CBOR; decoding is strict and
// bounded: a per-type size cap before decoding, then duplicate map keys,
// indefinite lengths, tags, unknown fields, trailing bytes, excess nesting,
// array and map sizes, and any encoding other than the deterministic one
// are rejected, then each field is validated. Errors wrap ErrTooLarge,
// ErrVersion, ErrMalformed or ErrInvalid and name the message and field.
//
// schemas imports no other firmcast package; everything else imports it.
package schemas
