// Package blockcode is firmcast's erasure code for chunk repair: the
// parity chunks a coded chunk table commits (schemas.ChunkTable keys 5 to
// 7, schemas.ParityChunk), made by the publisher and used by devices to
// rebuild the chunks they lost.
//
// Layout. An image of n chunks is cut into source blocks of K consecutive
// chunks (the last block may hold fewer, k' = n - (B-1)K). Each block has
// P parity chunks: Reed-Solomon over GF(2^8) with github.com/klauspost/
// reedsolomon's default systematic matrix, the block's k' source chunks as
// data shards and P parity shards, every shard ChunkSize bytes (the
// image's last chunk zero-padded). Any k' distinct chunks of a block,
// source or parity, rebuild it. K + P <= 256.
//
// Who does what.
//   - The publisher, once per image: Commit reads the image block by block
//     (holding one block, K chunks, at a time), computes the parity chunks
//     and returns the coded table that commits their SHA-256; that table's
//     digest is what the manifest signs for agents that speak coded repair.
//     Encoder.Parity recomputes a block's parity chunks to send them.
//   - A device: every parity chunk is checked against the signed table on
//     arrival (schemas.ChunkTable.VerifyParity, done by Collector.Add) and
//     dropped if it does not match, so a forged or corrupt symbol never
//     reaches a decode. Once a block holds enough verified symbols,
//     Decode rebuilds its missing source chunks.
//
// Device memory. Decode does not hold the block: it reads the source
// chunks the device already wrote back from the slot (an io.ReaderAt, chunk
// i at offset i*ChunkSize), one stripe of S bytes (a whole chunk by
// default) of one chunk at a time, and adds its multiple to each chunk it
// rebuilds. It holds one stripe, the parity chunks it uses (m x ChunkSize
// for m lost chunks) and the m rebuilt chunks until each is verified
// against the table and written (m x ChunkSize). DecodeMemory states it.
// At K = 128, 16 KiB chunks and m = 8 lost chunks in a block: 16 KiB +
// 256 KiB, whatever K. A Collector given a Scratch (a file, a scratch
// flash area) keeps the parity chunks there instead, from their arrival
// to the decode, which reads them back a stripe at a time too: then
// 16 KiB + 128 KiB (fetcher.Config.ParityInMemory says which a fetch
// uses; by default the scratch, a file in the fetch's state directory).
//
// Carousel order. Order interleaves blocks (chunk j of every block, then
// chunk j+1 of every block), so that a burst of losses on the broadcast
// spreads over many blocks instead of emptying one.
package blockcode
