package broker_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestShutdownStuckClient: a client that subscribes and then reads
// nothing blocks mochi's writes to it (its socket is full, its queue of
// pending writes too, so the broker drops what follows); Shutdown still
// returns within seconds, having ended every goroutine of the broker
// (TestMain's goroutine-leak check). Before, mochi's Close waited for
// ever on that client's write lock and Shutdown left it after 10 s.
func TestShutdownStuckClient(t *testing.T) {
	srv, err := broker.NewMQTTServer(broker.MQTTServerConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	shut := false
	defer func() {
		if !shut {
			srv.Shutdown()
		}
	}()
	topics := testutil.UniqueTopics(t)
	topic, _ := topics.Report("dev1")
	stuck := dialStuckClient(t, srv.Addr(), topic.MQTT)
	defer stuck.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub, err := broker.Dial(ctx, broker.Config{URL: srv.URL(), Topics: topics, ClientID: "pub"})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	payload := make([]byte, 16<<10)
	for n := 0; srv.Dropped() == 0; n++ {
		if n == 20000 { // 320 MiB: far past any socket buffer and the 1024 pending writes
			t.Fatalf("the broker dropped nothing for the stuck client after %d messages", n)
		}
		if err := pub.Publish(ctx, topic, payload, broker.PublishOptions{Family: broker.FamilyChunk}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	srv.Shutdown()
	shut = true
	d := time.Since(start)
	t.Logf("Shutdown took %v", d)
	if d > 5*time.Second {
		t.Fatalf("Shutdown took %v with a stuck client", d)
	}
}

// dialStuckClient connects to the MQTT broker at addr with a small
// receive buffer, subscribes to filter (MQTT 3.1.1, QoS 0), waits for
// the CONNACK and SUBACK, and from then on reads nothing.
func dialStuckClient(t *testing.T, addr, filter string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "stuck", Clean: true, Keepalive: 600}}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}}
	if err := errors.Join(connect.ConnectEncode(&b), sub.SubscribeEncode(&b)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	// CONNACK (20 02 00 00) then SUBACK (90 03 00 01 00).
	ack := make([]byte, 9)
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 0}; !bytes.Equal(ack, want) {
		t.Fatalf("connack and suback % x, want % x", ack, want)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn
}
