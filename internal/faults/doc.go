// Package faults holds firmcast's fault scenarios: integration tests that
// run the production publisher, device agents and bootloader over real
// brokers the test owns (a mosquitto process and a nats-server process,
// both killed and restarted by their PID), inject one fault each, and
// assert the end state read from the devices themselves (bootctl's active
// image, the agent's persisted state) and the publisher's campaign.
//
// Who does what (all in the _test files):
//
//   - rig_test.go: the rig (the only one: every scenario shapes it with
//     a rigConfig): the brokers, a publisher (started through
//     internal/stack) that can be stopped and replaced by a new one over
//     the same NATS, and devices with simulated flash whose agents can be
//     killed and restarted one by one. Options: from one device (served
//     by answers to its own chunk requests) to a hundred (served by
//     broadcast waves), image and chunk size, a mosquitto that enforces
//     the generated access policy (every device logs in with its own
//     account), extra publisher and agent settings, dead devices, and
//     devices behind a cuttable link. Its checks read the end state from
//     the devices (bootloader, agent state file) and the publisher
//     (campaign counts, device reports, chunk egress metrics).
//   - transport_test.go: the fault hooks: a device-side wrapper around
//     broker.Transport that drops whole chunk messages or throttles their
//     delivery; a publisher-side wrapper that counts at the source
//     every chunk requested and sent, and flags chunks a device asked for
//     again after it had received them intact.
//   - proxy_test.go: a device's network link, a TCP proxy that can be
//     cut (connections closed, new ones refused) and restored.
//   - one file per scenario (restart, loss, slow and dead devices, cut
//     off, clock skew and replayed manifests, offline devices and broker
//     storage, power cuts).
//
// Faults are injected only through these wrappers, the brokers' processes
// and the agents' injected clocks; nothing else is faked. Every wait is
// bounded by a context deadline; no sleep stands in for a condition.
//
// faults imports publisher and deviceagent (it plays both sides); nothing
// imports faults.
package faults
