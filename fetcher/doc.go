// Package fetcher fetches a firmware image chunk by chunk from the cheapest
// healthy source (broker chunks, NATS object store, HTTP ranges, a local
// file), checking every chunk against the signed chunk table before it is
// written, and failing over between sources without losing progress.
//
// fetcher never imports publisher.
package fetcher
