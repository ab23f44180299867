// Package jsensure creates firmcast's JetStream streams, key-value buckets
// and object stores in a way that old servers survive.
//
// nats.go's CreateOrUpdate* functions send a STREAM.UPDATE first and a
// STREAM.CREATE only when the stream is missing. When several clients
// start at once (two publisher replicas, or many of them), one client's
// update can reach the server while another's create is still being
// applied, and nats-server 2.9.10 (Debian's) panics on that
// ((*stream).updateWithAdvisory). So this package never starts with an
// update:
//
//  1. It sends a create. A create of an existing stream with the same
//     configuration succeeds without changing anything (the server
//     compares), so replicas starting together all succeed.
//  2. When the server answers "already in use with a different
//     configuration", it reads the stream's configuration and compares it
//     with the wanted one after normalising the server's defaults: a field
//     the wanted configuration leaves at its zero value takes the
//     server's value (MaxMsgs -1, Duplicates 2m, …), metadata keys the
//     server adds are ignored (Differs).
//  3. Only when a field really differs (an upgrade that changes a
//     setting) does it send an update, to a stream that then exists and
//     is complete.
//
// Only the backend (the publisher, the embedded broker's own connection)
// calls this package; devices never create or update streams, consumers
// or buckets.
package jsensure
