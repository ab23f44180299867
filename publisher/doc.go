// Package publisher is the firmcast backend: the image store, the device
// registry, campaigns with phases, thresholds and abort, chunk serving, and
// the HTTP and NATS APIs.
//
// Who does what:
//
//   - Images (images.go, imagestore.go) are content-addressed by SHA-256
//     in a JetStream stream, one message per chunk (and the chunk table in
//     parts), so that any chunk is one direct get; the metadata record in
//     a KV bucket, written last, makes an image visible. GET
//     /images/{digest} (imagehttp.go) streams an image from there chunk by
//     chunk, with ranges, under Config.ImageAccess (an API key or a
//     device's credentials by default). A delta (delta.go) is stored as
//     an image of its own; the delta index (deltaindex.go: a KV bucket
//     of keys <image>.<delta>) finds the deltas based on an image without
//     reading every image's record.
//   - Devices (registry.go) live in a KV bucket: id, class, groups, tags and
//     the secret hashed (PBKDF2-SHA512, mosquitto's "$7$" format), so the
//     broker's auth hook and the mosquitto password file read the same hash.
//   - API keys (apikeys.go) are random tokens stored as a salted
//     HMAC-SHA256, with scopes read, campaign and admin; every campaign,
//     device and key operation is appended to a JetStream audit stream
//     (audit.go). Neither device secret hashes nor key hashes leave the
//     publisher (Device and APIKey carry none).
//   - Campaigns (campaign.go, engine.go, reports.go): the campaign record and
//     one record per (campaign, device) live in KV; all writes are
//     compare-and-set on the KV revision, so two publishers against the same
//     NATS never apply the same transition twice. Periodic work (opening
//     phases, pacing notices, timeouts, thresholds, broadcast waves) runs
//     only on the instance holding the leader lease; reports and chunk
//     requests are shared between instances (shared subscription / queue
//     group). Every instance keeps an in-memory index of per-device state fed
//     by a KV watch, so counters survive restarts and failover. The
//     per-device state can be spread over Config.Partitions buckets by
//     device (partition.go), so that its writes go to as many stream
//     leaders; one bucket by default. Then each partition has one owner
//     at a time (a lease per partition, taken over when it expires;
//     owner.go): only the owner's index holds its devices, the owner
//     opens their records, notifies, times out and reconciles them,
//     reports reaching another instance are forwarded to it, and it
//     keeps a count record per campaign that the leader sums to judge
//     thresholds, phases and completion.
//   - Chunks are delivered by one unit, delivery (delivery.go), which owns
//     the waves, requests, repair, parity and pacing state; the Publisher
//     holds one and hands it reports and chunk requests. It reads images
//     and asks about campaigns through two small interfaces (imageSource,
//     campaignSource), not the Publisher. Chunks (chunks.go) go out as
//     broadcast waves on the image's chunk topic
//     at QoS 0, and as answers to bitmap requests; chunks many devices miss
//     are broadcast again rather than sent to each. A wave goes round again,
//     only as far as devices that joined while it flowed missed, rather
//     than a second whole wave; it can be paced from the progress
//     designated receivers report while it flows (wavepace.go,
//     Config.WavePace), and its first chunk can wait, after its first
//     table copy, for its devices to report they took the table
//     (Config.WaveReady). With Config.CodedRepair
//     an uploaded image gets a coded chunk table (internal/blockcode), its
//     waves interleave its blocks, and repairs broadcast fresh parity
//     chunks, per block as many as the requester lacking most lacks
//     (less the parity of rounds its request crossed), at a few times
//     the rate the last wave pass went out at; agents of delivery
//     protocol 1 in the same campaign are sent the
//     image's plain table and repaired by chunks (tables.go). A
//     request is answered only to the device whose own request topic it
//     came on, if that device is notified in a campaign of the image,
//     within a rate and a byte budget per campaign (requests.go).
//   - The same operations are served as HTTP JSON under /api/v1 (http.go)
//     and as CBOR request/reply on schemas.Topics.API subjects (natsapi.go);
//     Client (client.go) is the Go client of the HTTP API the CLI uses.
//   - What an operator asks during a rollout (query.go): a campaign's
//     devices paged and filtered, failures by reason, the fleet summary,
//     images with the campaigns that use them. Live events (events.go,
//     events_http.go): the stream <ns>_events sources the campaign and
//     per-device state buckets, so one ordered stream carries every
//     change; GET /api/v1/events serves it as server-sent events,
//     coalesced and resumable by event id, and it is each device's report
//     history too. Console sessions (sessions.go): an API key signs in
//     once, the browser keeps a session cookie, changes need a CSRF
//     token; the operator console itself is package console. Every call
//     of the JSON API is also served over NATS (natscall.go);
//     api/openapi.yaml describes them.
//   - Manifests for campaigns created without an envelope are signed by a
//     ManifestSigner (signer.go); SUITSigner (suitsigner.go) builds them
//     with schemas/suit.
//   - DeviceAuthenticator (brokerauth.go) lets the embedded brokers
//     authenticate devices from the registry (broker.Authenticator), and
//     MosquittoPasswordLines exports the registry's hashes for mosquitto.
//
// Device traffic goes only through broker.Transport. State is persisted
// (KV compare-and-set) before its effect (a notice, a cleared notice).
//
// publisher never imports deviceagent, fetcher or bootctl: the device side
// and the backend meet only on the wire contract in schemas.
package publisher
