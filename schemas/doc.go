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
// Every message carries a format version. Decoding is strict and bounded:
// duplicate map keys, indefinite lengths, tags, unknown fields and oversize
// inputs are rejected with an error that names the message and the field.
//
// schemas imports no other firmcast package; everything else imports it.
package schemas
