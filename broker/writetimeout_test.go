package broker_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// stalledBroker accepts MQTT connections, answers the CONNECT with a
// CONNACK and then never reads again: a broker hung with its sockets
// open. It counts the connections made to it.
type stalledBroker struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startStalledBroker(t *testing.T) *stalledBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &stalledBroker{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				if _, err := c.Read(buf); err != nil { // the CONNECT (small: one read)
					return
				}
				// CONNACK: MQTT v5, no session, success, no properties.
				_, _ = c.Write([]byte{0x20, 0x03, 0x00, 0x00, 0x00})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

func (b *stalledBroker) connections() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// TestMQTTPublishToStalledBroker: a QoS 0 publish is a bare write, with
// neither a context nor a deadline in paho. Towards a broker that stops
// reading, the socket's buffers fill and the write blocks; without
// Config.WriteTimeout it blocked for ever, whatever the publish's
// context said, and every publish and the keep-alive behind it (a
// publisher's chunk servers, and its Run waiting for them, held for
// good). With it, the blocked write fails, the connection is made again
// and the publish goes out on the new one.
func TestMQTTPublishToStalledBroker(t *testing.T) {
	b := startStalledBroker(t)
	topics := testutil.UniqueTopics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, broker.Config{URL: "mqtt://" + b.ln.Addr().String(), Topics: topics, ClientID: "pub",
		WriteTimeout: 200 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		_ = tr.Close(cctx)
	})
	topic := schemas.Topic{MQTT: topics.Root() + "/stalled", NATS: "unused"}
	payload := make([]byte, 1<<20)
	done := make(chan error, 1)
	go func() {
		// Ten times what a loopback socket's buffers take: each write
		// that blocks fails after WriteTimeout, the connection is made
		// again, and the publish goes out on the new one.
		for range 30 {
			pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := tr.Publish(pctx, topic, payload, broker.PublishOptions{Family: broker.FamilyChunk})
			pcancel()
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("publish to a stalled broker: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("a publish to a broker that stopped reading blocked for good")
	}
	if n := b.connections(); n < 2 {
		t.Errorf("%d connections to the stalled broker, want the blocked one dropped and made again", n)
	}
}
