// Package publisher is the firmcast backend: the image store, the device
// registry, campaigns with phases, thresholds and abort, chunk serving, and
// the HTTP and NATS APIs.
//
// publisher never imports deviceagent, fetcher or bootctl: the device side
// and the backend meet only on the wire contract in schemas.
package publisher
