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
//     Signer that is a key file today (NewKeySigner) and may be an HSM or a
//     cloud KMS tomorrow. The envelope is then uploaded; no online key is
//     needed. Seal does the same for any Manifest value (Encode gives the
//     signed bytes; NewSeverable makes severed members).
//   - The publisher ships the envelope inside an UpdateNotice as opaque
//     bytes, and signs the notice (SignNotice) with its notice key: the
//     campaign id, the target and the envelope are bound by that signature.
//     The device checks it (VerifyNotice) before anything else. Notice and
//     manifest signatures use the same SUIT_Authentication structure over
//     a detached SHA-256 digest; notice blocks carry the COSE external_aad
//     NoticeAAD, so one never passes for the other.
//   - The device agent calls Verify with its TrustAnchors (several, so an
//     update can rotate them), hands the signed image digest, size, chunk
//     size and chunk-table digest (Manifest.ChunkInfo) to the fetcher, which
//     authenticates the chunk table's bytes against that digest before it
//     trusts any chunk (fetcher.DecodeTable), then runs the
//     manifest's command sequences with a Processor against its own Target
//     (slots, sources, boot hand-off): Update (payload-fetch, install) and
//     Boot (validate, load, invoke). Anti-rollback (InstalledSeq) and expiry
//     (condition-use-before, injected clock) are the Processor's.
//     Nothing may act on a manifest that Verify did not return; Decode is
//     for display only and the Processor refuses its result.
//
// Verification order (Verify): envelope shape (tag, keys, types, limits),
// then the digest of the bstr-wrapped manifest against the authentication
// wrapper, then at least one authentication block by a trusted key, then the
// manifest itself, then the digests of the severable members present in the
// envelope. Nothing inside the manifest is decoded before it is authenticated.
//
// Firmcast adds custom parameters (in SUIT's negative custom range):
// ParamFirmcast carries the chunk size and the SHA-256 of the image's
// schemas.ChunkTable, so a device authenticates the chunk table, and through
// it every chunk, against the signed manifest before trusting a chunk;
// ParamSecurityVersion, optional, is the image's anti-rollback security
// version, the bootloader's counter (never the sequence number);
// ParamFirmcastCodedTable, optional, is the SHA-256 of the image's coded
// chunk table (parity hashes committed too) for devices that speak coded
// repair, while ParamFirmcast names the plain table older agents take.
//
// Decoding is strict and bounded like the rest of schemas/: duplicate map
// keys, indefinite lengths, trailing bytes, unknown critical elements and
// oversize inputs are refused with an error naming the element, wrapping one
// of the sentinels in errors.go. Encoding uses schemas' one deterministic
// encoder; a decoded canonical manifest re-encodes to the signed bytes.
//
// Encrypted payloads (draft-ietf-suit-firmware-encryption, encrypt.go):
// the sender encrypts each payload once with a fresh content key
// (NewContentCipher: AES-GCM for small content, AES-CTR for images) and
// wraps that key for each recipient device (KeyWrapper: its AES
// key-encryption key, or ECDH-ES to its public key); the manifest's
// parameter-encryption-info carries the algorithm, IV and recipients. The
// device's keys stay in its root of trust behind a KeyUnwrapper given to
// the Processor, which decrypts on fetch, copy and write and commits
// plaintext only once it authenticates (GCM tag, signed image digest).
//
// suit imports schemas and nothing else of firmcast's.
package suit
