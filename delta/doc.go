// Package delta makes and applies delta updates: a delta turns one
// firmware image (the source, or precursor) into another (the target) in
// far fewer bytes than the target when the two differ a little. It
// follows Mbed/Pelion's arm-patch-stream (a stream-structured bsdiff,
// compressed in pieces, applied with bounded memory) in a format of our
// own, because BSDIFF40 as such cannot be applied in bounded memory: its
// three bzip2 streams must be read in parallel, and go-bsdiff's bspatch
// reads the source and the patch whole and allocates the target size from
// an unauthenticated header.
//
// # Who does what
//
//   - The publisher calls Make with the source and target images (the
//     plaintext, before any encryption). bsdiff (github.com/gabstv/go-bsdiff)
//     decides which target ranges are copied from where in the source;
//     Make recomputes the bytes from the images and writes the delta:
//     a header naming the source (size and SHA-256) and the target (size
//     and SHA-256), a frame table (for each frame: offset, lengths,
//     SHA-256) and the header's own SHA-256, then the frames. Each frame
//     makes a fixed span of the target (64 KiB by default) from a list of
//     operations ("add these differences to the source at offset o",
//     "insert these bytes"), zstd-compressed on its own, so any frame
//     decodes without the others. The same inputs give the same bytes
//     (with the same versions of this package, go-bsdiff and zstd).
//     The delta is then published like any image: its own signed digest
//     and chunk table.
//   - The device checks the precursor before it downloads: the header
//     alone (ParseHeader on the first HeaderSize bytes, then
//     Header.CheckSource with the active image's size and digest) says
//     whether the delta applies. It stages the delta as chunks arrive, in
//     any order, in storage of its own (a file, the candidate's staging
//     area); once every chunk is verified it calls Open on the staged
//     bytes and Patch.Apply, which reads the source from the active slot
//     (an io.ReaderAt), writes the target into the candidate slot (an
//     io.WriterAt) frame by frame, and returns the target's digest. The
//     caller commits the candidate only if that digest is the one the
//     manifest signs (bootctl's Commit hashes the slot again).
//
// Format details are in format.go; the checkpoint's in checkpoint.go.
//
// # What is checked, and when
//
// Everything a device reads is bounded before it is allocated: the header
// is fixed-size; the table is streamed through a 48-byte buffer, and its
// length is bounded by the delta's size; a frame's stored and raw lengths
// are bounded by the frame size (at most 128 KiB), and Apply allocates
// its buffers once, whatever the image size. Open checks the header and
// table (their digest, frames contiguous, lengths in bounds). Apply
// hashes the source first (a wrong source is refused before anything is
// written), checks each frame's SHA-256 before decompressing it and each
// operation before running any of the frame's, and checks the output's
// SHA-256 at the end: a corrupted delta stops with an error and never
// yields a result to commit.
//
// # What survives a reset
//
// The staged delta and the candidate's bytes are the caller's storage,
// and so are checkpoints: Apply hands a Checkpoint (the delta's ID, the
// number of frames done, the SHA-256 state of their output) to the
// caller's SaveFunc after each frame (or every n), once that frame's
// output was written; the caller persists it (write, fsync, rename) with
// MarshalBinary. After a reset, WithResume continues from the last
// checkpoint: the frames it counts are not read again, a frame that was
// half written is written again whole (the same bytes), and the result's
// digest covers the whole target. Apply holds nothing else across calls.
package delta
