// Package suit reads, writes, authenticates and runs firmcast's signed
// manifests: IETF SUIT envelopes as defined by draft-ietf-suit-manifest-34
// (CBOR tag 107), with COSE_Sign1 (ES256, ESP256, EdDSA, Ed25519) or
// COSE_Mac0 (HMAC 256/256) authentication blocks over the SHA-256 digest of
// the bstr-wrapped manifest (detached payload), and the use-before condition
// of draft-ietf-suit-update-management.
//
// Who does what:
//
//   - The operator runs `firmcast manifest create` (Create) offline, with a
//     Signer that may be a key file today and an HSM or cloud KMS tomorrow.
//     The envelope is then uploaded; no online key is needed.
//   - The publisher ships the envelope inside an UpdateNotice as opaque bytes.
//   - The device agent calls Verify with its TrustAnchors (several, so an
//     update can rotate them), then runs the manifest's command sequences
//     with a Processor against its own Target (slots, fetcher, invoker).
//     It must never act on an envelope that Verify did not return.
//
// Verification order (Verify): envelope shape (tag, keys, types, limits),
// then the digest of the bstr-wrapped manifest against the authentication
// wrapper, then at least one authentication block by a trusted key, then the
// manifest itself, then the digests of the severable members present in the
// envelope. Nothing inside the manifest is decoded before it is authenticated.
//
// Firmcast adds one custom parameter (ParamFirmcast, in SUIT's negative
// custom range) carrying the chunk size and the SHA-256 of the image's
// schemas.ChunkTable, so a device authenticates the chunk table, and through
// it every chunk, against the signed manifest before trusting a chunk.
//
// Decoding is strict and bounded like the rest of schemas/: duplicate map
// keys, indefinite lengths, trailing bytes, unknown critical elements and
// oversize inputs are refused with an error naming the element, wrapping one
// of the sentinels in errors.go.
//
// suit imports schemas and nothing else of firmcast's.
package suit
