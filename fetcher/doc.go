// Package fetcher fetches a firmware image chunk by chunk from the cheapest
// healthy source (broker chunks, NATS object store, HTTP ranges, a local
// file), checking every chunk against the signed chunk table before it is
// written, and failing over between sources without losing progress.
//
// # Roles and trust
//
// The signed SUIT manifest (verified by the caller, see schemas/suit) names
// the image: its SHA-256, its size, the chunk size and the SHA-256 of its
// chunk table (schemas.ChunkTable, deterministic CBOR). The caller hands
// these to fetcher as an Image. Nothing a Source returns is trusted:
//
//   - the chunk table is accepted only if its SHA-256 equals Image.TableDigest
//     and it describes Image (digest, size, chunk size);
//   - each chunk is accepted only if its SHA-256 equals its table entry; a
//     bad chunk is dropped, counted (Result.BadChunks) and asked for again,
//     never written to the Sink;
//   - with a coded chunk table (erasure-coded repair, internal/blockcode),
//     each parity chunk is accepted only if its SHA-256 equals the one the
//     table commits for its block and index; a bad one is dropped and
//     counted (BrokerSource.BadParity), never fed to a decode, and every
//     chunk rebuilt from parity is checked against its table entry like a
//     received one;
//   - the whole image digest is computed while streaming where chunks arrive
//     in order, and by reading the Sink back otherwise, and must equal
//     Image.Digest before Fetch reports success.
//
// # What survives a reset
//
// Progress lives in one file in the caller's state directory (Config.StateDir):
// the bitmap of chunks written and verified, the verified chunk table and the
// running SHA-256 state. It is persisted with write, fsync, rename every
// Config.PersistEvery chunks (after the Sink is synced), when a fetch starts
// and when it stops. On resume, chunks not in the bitmap that the Sink
// already holds intact (read back and checked against the table) are
// marked done without being fetched again, so a reset costs a read-back
// of at most one persistence interval, never a download.
//
// # Sources and the picker
//
// A Source says whether it can serve an image (Probe), serves the chunk
// table (Table) and streams a set of wanted chunks (Fetch) to a callback.
// A RepairSource (the broker source) also takes parity chunks when the
// table is coded: the fetcher hands it the table and the Sink (which must
// then implement io.ReaderAt), and it rebuilds a block's lost chunks by
// reading the chunks the block holds back from the Sink, a stripe at a
// time, instead of holding the block in memory. The parity chunks it keeps
// until their block rebuilds go to a scratch file in the state directory
// (removed when the fetch ends; Config.ParityInMemory keeps them in
// memory instead), read back a stripe at a time as well: a device holds
// no parity in RAM.
//
// A loss summary (a chunk request after a wave or a repair round) names
// the last end marker the device heard (schemas.ChunkRequest.Seen), so
// that the publisher knows which rounds reached the device before it
// asked and which were still on their way. A coded device sends it after
// a back-off spread exponentially over BrokerConfig.SummaryBackoff and
// shorter the more it lacks (summaryDelay): the publisher sizes a repair
// round by the first few and announces it, and a device whose need the
// announcement covers sends none. After a repair round's end marker a
// device still short waits a quarter of the back-off; so does one whose
// summary the publisher answered with nothing (counting a round already
// on its way, which crossed the summary), once that round's marker came.
//
// The broker source's receive path is bounded in bytes
// (BrokerConfig.QueueBytes, default 1 MiB; its handlers run inline on the
// transport's reader, broker.SubscribeOptions.Inline, so there is no
// second queue in front of it). A writer slower than the broadcast (a
// slow flash, a loaded machine) fills it. Over MQTT with a device's
// Receive Maximum (broker.DeviceReceiveMaximum), a chunk that finds it
// full waits for room while the writer is taking chunks: paho stops
// reading the socket and the broker holds the rest, as it does for any
// slow subscriber, and drops beyond its own queue. Otherwise (NATS, whose
// client reads on regardless; a writer stalled for takeStall) the chunks
// and parity chunks that do not fit are shed, and later waves, parity or
// a request repair them like any QoS 0 loss. Either way a slow device
// costs losses, never memory. Tables, wave end markers and repair
// announcements are never shed. Before anything is queued, the receive
// path drops what the fetch has no use for (useful.go): a chunk it holds
// already, and parity beyond what its block lacks, less the parity held
// and queued for it (a repair round is sized for the block's neediest
// device; each parity chunk within the need is checked against the
// signed table first, so forged ones take no good one's place). These
// are counted in BrokerSource.Skipped, not as losses. After a repair
// announcement for its blocks a device waits for the round's end marker;
// its idle timer is for a marker lost, and acts only once the broadcast
// stream has been quiet for Idle (a paced round, late on a loaded broker,
// is still on its way while parity for any block keeps arriving).
// A wave that pauses for BrokerConfig.WaveGap is not over either (its
// rest may be queued at the broker): the first pause asks only for the
// chunks missing before the last one it brought, in carousel order
// (blockcode.Position), which the broker, delivering the topic in order,
// has passed; a second pause with nothing between ends the wave.
// The fetch loop never waits on the
// network while chunks arrive: its chunk requests go out from a goroutine
// of their own (requests.go), as the agent's progress reports do, since
// a QoS 1 acknowledgement comes behind the chunks the broker queued.
// The picker ranks sources by expected cost: configured price per byte times
// the bytes still missing, plus the expected time (measured latency and
// throughput, exponentially averaged) weighted by Config.TimeValue, plus a
// failure penalty that decays with Config.PenaltyHalfLife on the injected
// Clock. A source that already has the image costs 0; one that cannot serve
// it is never tried. A Plan from the manifest can pin one source or give an
// ordered list (SUIT try-each). Each attempt is retried with exponential
// backoff, jitter and a cap (sethvargo/go-retry); when a source keeps
// failing the picker moves on, and the next source continues from the same
// bitmap. Every decision is logged (log/slog) and passed to Config.OnDecision.
//
// fetcher never imports publisher, deviceagent or bootctl: the candidate
// slot reaches it through the Sink interface defined here.
package fetcher
