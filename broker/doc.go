// Package broker carries firmcast messages over MQTT v5 (eclipse/paho.golang
// autopaho) and NATS (nats.go) behind one small Transport interface, and
// runs the embedded brokers (mochi-mqtt and nats-server with JetStream)
// that a single-machine installation uses. It also owns the broker access
// policy: the MQTT auth hook, the NATS permissions, their export as a
// mosquitto password and ACL file, and the HTTP auth hook an external
// broker (EMQX) asks.
//
// Who does what:
//
//   - transport.go: the Transport interface, message families, the topic
//     Dialect each transport speaks (Transport.Dialect: the form a reply
//     address is given in), sentinels. A handler copies a payload it keeps
//     unless Message.Owned says it was allocated for it alone (nats.go's
//     are; paho's MQTT payloads are not marked, and the fetcher copies
//     them into its pool).
//   - dial.go: Dial(ctx, Config) picks the transport from the URL scheme
//     (mqtt://, mqtts:// → MQTTTransport; nats://, tls:// → NATSTransport),
//     takes user/password from the URL or Config, and waits for the first
//     connection. Both transports reconnect by themselves afterwards.
//   - mqtt.go: MQTT v5. QoS per family (chunks 0, everything else 1),
//     retained notices, short session expiry (0 for shared-subscription
//     members), response topic + correlation data for request/reply,
//     RequestProblemInfo on every CONNECT (mochi strips user properties
//     otherwise), subscription identifiers to route deliveries. Every
//     write to the connection has a deadline (Config.WriteTimeout): a
//     QoS 0 publish is a bare write paho gives no context, and would
//     block for good towards a broker that stopped reading.
//   - nats.go: NATS core pub/sub, queue groups, request/reply.
//   - nats_notice.go: retained notices on NATS, in a JetStream stream
//     keeping the last message per notice subject (NoticeStream, created
//     by the backend only); a device reads its own by a core
//     subscription plus a direct get named by its notice subject, with no
//     consumer, using only features NATS 2.9.10 also has.
//   - dispatch.go: each subscription's handler runs on its own goroutine,
//     in order, so the network readers never wait for a handler; a chunk
//     subscription's queue is bounded (chunks and parity chunks beyond it,
//     or beyond SubscribeOptions.MaxQueuedBytes, are dropped, to be
//     repaired), other messages are always queued. An Inline subscription
//     has neither: its handler, which must return at once or wait only to
//     push back on the broker, runs on the reader (the fetcher's chunk
//     subscriptions, the agent's notice subscriptions, the publisher's
//     wave echo; a retained notice read on NATS calls it from the read's
//     goroutine, one call at a time with the live ones).
//     MQTTTransport.ReceiveQueue is paho's queue before the socket stops
//     being read (Config.ReceiveMaximum; DeviceReceiveMaximum for
//     devices).
//   - server_mqtt.go, server_nats.go: embedded brokers with the
//     nats-server embedding shape: NewXServer(cfg) → Start (non-blocking)
//     → Ready(ctx) → Shutdown (idempotent); port 0 picks a free port and
//     URL reports it; no signal handling. The embedded MQTT broker
//     delivers at QoS 0 only and keeps no session past a disconnect (mochi
//     v2.7.9 deadlocks on a client with QoS 1 messages in flight towards
//     it; deadlock_test.go), binds client ids to identities and refuses
//     device wills.
//   - auth.go: Identity, Role, the Authenticator interface (the backend's
//     device registry implements it too) and an in-memory CredentialStore
//     with hashed secrets; the credentials file format.
//   - acl.go: Policy, the access rules on topic names, shared by the mochi
//     auth hook, NATSPermissions and the mosquitto export.
//   - mosquitto.go: MosquittoConfig writes passwd ($7$ PBKDF2-SHA512),
//     acl (pattern lines on %u) and a conf snippet with the queue limits.
//   - httphook.go: HTTPHook answers an external broker's HTTP
//     authentication and authorization (EMQX 5's shape: POST
//     HookAuthnPath / HookAuthzPath, JSON {"result":"allow"|"deny"}),
//     behind a shared bearer secret, from an Authenticator and an
//     IdentityLookup, deciding with Policy; failed authentications are
//     bounded per user name.
//   - natsconfig.go: NATSConfig writes the accounts, users (bcrypt) and
//     role permissions (NATSPermissions) for an external nats-server.
//
// Roles (auth.go): backend, the publisher's own identity (everything
// under the root; on NATS the JetStream state); service, a campaign API
// caller (on NATS its API requests and own inbox only; nothing on MQTT);
// device, one device (its own topics).
//
// Topic names always come from schemas.Topics. broker imports schemas for
// topic names and internal/jsensure to create the notice stream (and
// nothing else of ours); it never imports publisher, deviceagent, fetcher
// or bootctl.
package broker
