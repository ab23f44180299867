// Package deviceagent is the on-device update client (the "update client"
// of the Mbed OS design): it receives update notices, verifies the signed
// SUIT manifest against its trust anchors, fetches the image through
// fetcher straight into a bootctl candidate slot, has the bootloader
// install it, and confirms the new image after its health check.
//
// # Notices
//
// A notice is trusted only once its signature by the campaign authority
// (Config.NoticeTrust, by default Config.Trust) verifies over every field
// and it names this device (or, as a class announcement, its class): the
// campaign id, the target and the envelope are the publisher's. Before
// that nothing in it is recorded or marked done, and its campaign is never
// named in a report: a notice that fails is a security event, reported as
// a rate-limited security report (schemas.DeviceReport.Security; three at
// once, then one per Config.SecurityInterval, the rest counted). So a
// forged, replayed or misrouted notice can neither block, fail nor stall
// the campaign it names. The SUIT envelope inside is then verified against
// Config.Trust (the firmware signer): an authentic notice whose envelope
// does not verify is that campaign's failure.
//
// # Sources
//
// Where to fetch an image comes from what the device trusts: the signed
// manifest's URIs (http(s) within Config.URLPrefixes, file:// only inside
// Config.FileDirs, opened through os.OpenInRoot) and the device's own
// configuration (the broker, the object store, Config.Sources). A notice's
// source hints only price a kind. HTTP sources have connect, header and
// read timeouts (fetcher.NewHTTPClient, fetcher.HTTPReadTimeout).
//
// # Broker failures
//
// Run never stops on a broker error: subscribing to the notice topics (on
// NATS, the consumer behind it) is tried again with backoff (go-retry,
// Config.RetryBase to RetryCap, with jitter) until it is through, and the
// agent then reports its state; the health check's report is tried a few
// times before the new image is judged unhealthy; any other report lost to
// a broker error is followed by the state report sent on reconnection.
//
// # State machine
//
//	idle → notified → manifest-verified → downloading → candidate-verified
//	     → staged → rebooting → trial → confirmed
//	                                  ↘ rolled-back / failed
//
// Each state is persisted in StateDir (write, fsync, rename) before the
// effect it leads to, so a crash or power cut at any point resumes where
// it was: the download continues from fetcher's persisted bitmap in the
// same slot (bootctl.ResumeCandidate), a staged candidate is committed or
// booted again, a trial image is checked and confirmed. Terminal outcomes
// are remembered per campaign and image, so a retained notice is never
// downloaded in a loop.
//
// A failed step that may succeed later is tried again with backoff, up to
// Config.MaxAttempts. A fetch that failed only because no source could be
// reached (fetcher.ErrUnreachable: the device is offline) is not counted:
// the agent waits, with the same bounded backoff or until the transport
// reconnects, and resumes from the persisted progress.
//
// # Reports
//
// Every state change, and progress every Config.ProgressStep percent and
// at least every Config.ProgressInterval while chunks arrive, is
// published as a schemas.DeviceReport on the device's report topic with a
// per-device monotonic counter (persisted before publishing). On every
// start the agent reports its actual active version and state, read from
// bootctl, so the backend can reconcile its view. A genuine notice that
// arrives while another update is in progress is answered with a deferred
// report (code conflict) for its campaign. Failures carry a
// specific schemas.ErrCode (signature, untrusted-key, class-mismatch,
// rollback, size, digest, chunk-table, no-source, slot-full, boot-failed
// with the bootloader's reason, ...).
//
// # Memory
//
// The agent never holds the image: chunks are verified against the signed
// chunk table and written to the slot as they arrive (at most a window of
// requested chunks is in flight), buffers are reused, and the whole-image
// SHA-256 is computed by bootctl while it reads the slot back to commit
// the candidate. Memory does not grow with the image size.
//
// # Embedding
//
// An Agent is a value built by New and driven by Run; many agents can run
// in one process (the fleet simulator). The caller owns the transport and
// the bootctl device.
//
// deviceagent never imports publisher.
package deviceagent
