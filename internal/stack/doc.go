// Package stack assembles and runs firmcast's backend, the one place that
// does: `firmcast serve`, the demo, sim and bench (internal/fleet) and the
// integration tests (through internal/stacktest) all build it here.
//
// Who does what:
//
//   - Start (stack.go) starts the brokers, embedded (mochi MQTT v5 and
//     nats-server with JetStream, in this process) or external (given by
//     URL), one publisher and, optionally, its HTTP API. With embedded
//     brokers it authenticates clients with Auth: devices registered with
//     the publisher from its registry (publisher.DeviceAuthenticator),
//     every other account from Config.Accounts; Open turns
//     authentication off (development only). With BrokerHookListen it
//     serves the same authentication and the access policy to an
//     external broker over HTTP (broker.HTTPHook: EMQX 5 HTTP
//     authentication and authorization).
//   - StartInstance (instance.go) connects one publisher to its brokers
//     (JetStream state on NATS; device traffic on the MQTT broker, NATS,
//     or both through a fan-out transport), runs it, and stops it cleanly
//     (Stop) or as a crash would (Crash). Tests and clustered set-ups run
//     several instances over the same brokers.
//
// Broker processes (mosquitto, nats-server) that a run owns are started
// and supervised by internal/brokerproc, one level below (the publisher's
// own tests need them, and the stack imports the publisher).
//
// Errors are returned, never fatal: internal/stacktest wraps each entry
// point with t.Fatal for tests.
package stack
