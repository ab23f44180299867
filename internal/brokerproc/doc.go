// Package brokerproc supervises broker processes that this process owns:
// mosquitto and the machine's nats-server binary (Debian's 2.9), or any
// command (the embedded broker run apart by `firmcast bench idle`). It
// picks a free port, writes the configuration, waits until the port
// accepts connections, reads the process's memory and CPU, restarts it on
// the same port, and kills it by its PID. It never touches the machine's
// shared brokers.
//
// internal/stack builds firmcast's backend on top of the brokers; this
// package sits below it (it imports only broker and schemas) so that every
// package's tests can start broker processes through internal/testutil,
// the publisher's own internal tests included. Errors are returned; the
// testutil wrappers turn them into t.Fatal.
package brokerproc
