// Package broker carries firmcast messages over MQTT v5 (eclipse/paho.golang
// autopaho) and NATS (nats.go) behind one small Transport interface, and
// runs the embedded brokers (mochi-mqtt and nats-server with JetStream)
// that a single-machine installation uses. It also owns the broker access
// policy: the MQTT auth hook and its export as a mosquitto password and ACL
// file.
//
// broker imports schemas for topic names only. It never imports publisher,
// deviceagent, fetcher or bootctl.
package broker
