package stack_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go"

	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

// TestRemovedDeviceDisconnected: removing a device through the API ends
// its live sessions on both embedded brokers of the stack (the stack
// wires publisher.Config.OnDeviceRemoved to their Disconnect and drops
// any account of the device), and it cannot connect again; another device
// keeps its sessions.
func TestRemovedDeviceDisconnected(t *testing.T) {
	st := stacktest.Start(t, stack.Config{Topics: testutil.UniqueTopics(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	secrets := map[string]string{}
	for _, id := range []string{"dev-gone", "dev-stays"} {
		_, s, err := st.Pub.AddDevice(ctx, st.Admin, publisher.NewDevice{ID: id, Class: "c"})
		if err != nil {
			t.Fatal(err)
		}
		secrets[id] = s
	}
	// Each device holds one MQTT session and one NATS connection; its
	// channels close when either ends.
	type session struct{ mqtt, nats chan struct{} }
	open := func(id string) (session, error) {
		s := session{make(chan struct{}), make(chan struct{})}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(st.MQTTURL, "mqtt://"))
		if err != nil {
			return s, err
		}
		var once atomic.Bool
		gone := func() {
			if once.CompareAndSwap(false, true) {
				close(s.mqtt)
			}
		}
		c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn), OnServerDisconnect: func(*paho.Disconnect) { gone() }, OnClientError: func(error) { gone() }})
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, UsernameFlag: true, PasswordFlag: true,
			Username: id, Password: []byte(secrets[id])})
		if err != nil || ca.ReasonCode != 0 {
			conn.Close()
			return s, errors.New("mqtt connect refused")
		}
		t.Cleanup(func() { conn.Close() })
		nc, err := nats.Connect(st.NATSURL, nats.UserInfo(id, secrets[id]), nats.NoReconnect(),
			nats.ClosedHandler(func(*nats.Conn) { close(s.nats) }))
		if err != nil {
			return s, err
		}
		t.Cleanup(nc.Close)
		return s, nil
	}
	gone, err := open("dev-gone")
	if err != nil {
		t.Fatal(err)
	}
	stays, err := open("dev-stays")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Pub.RemoveDevice(ctx, st.Admin, "dev-gone"); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan struct{}{"mqtt": gone.mqtt, "nats": gone.nats} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Errorf("the removed device's %s session is still open", name)
		}
	}
	select {
	case <-stays.mqtt:
		t.Error("another device's MQTT session was closed")
	case <-stays.nats:
		t.Error("another device's NATS connection was closed")
	default:
	}
	if _, err := open("dev-gone"); err == nil {
		t.Error("the removed device connected again")
	}
}
