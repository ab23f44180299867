package testutil

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
)

// RawMQTT is one MQTT v5 connection made with paho directly, with no
// reconnection: for attacks broker.Transport cannot express (a will, the
// client id of another identity) and to see a broker drop a client.
type RawMQTT struct {
	c    *paho.Client
	conn net.Conn
	// lost is closed when the broker disconnects the client or the
	// connection fails; why says how.
	lost     chan struct{}
	lostOnce sync.Once
	why      string
}

// ConnectRawMQTT connects to brokerURL (mqtt://host:port, or mqtts://
// with tlsCfg) with cp, setting the user name and password flags when
// cp has a user name, keep-alive 30 s and clean start. The broker's
// refusal is returned as an error naming the CONNACK reason code; other
// failures fail the test. The connection is closed at cleanup.
func ConnectRawMQTT(t testing.TB, brokerURL string, tlsCfg *tls.Config, cp *paho.Connect) (*RawMQTT, error) {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("ConnectRawMQTT: %v", err)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	var conn net.Conn
	if u.Scheme == "mqtts" {
		conn, err = tls.DialWithDialer(d, "tcp", u.Host, tlsCfg)
	} else {
		conn, err = d.Dial("tcp", u.Host)
	}
	if err != nil {
		t.Fatalf("ConnectRawMQTT %s: %v", brokerURL, err)
	}
	r := &RawMQTT{conn: conn, lost: make(chan struct{})}
	r.c = paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn),
		OnServerDisconnect: func(d *paho.Disconnect) {
			r.drop(fmt.Sprintf("server sent DISCONNECT 0x%02x", d.ReasonCode))
		},
		OnClientError: func(err error) { r.drop(err.Error()) },
	})
	if cp.Username != "" {
		cp.UsernameFlag, cp.PasswordFlag = true, true
	}
	cp.KeepAlive, cp.CleanStart = 30, true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := r.c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ca != nil {
			return nil, fmt.Errorf("refused: CONNACK 0x%02x: %w", ca.ReasonCode, err)
		}
		t.Fatalf("ConnectRawMQTT %s as %q: %v", brokerURL, cp.ClientID, err)
	}
	t.Cleanup(func() { conn.Close() })
	return r, nil
}

func (r *RawMQTT) drop(why string) {
	r.lostOnce.Do(func() {
		r.why = why
		close(r.lost)
	})
}

// Lost is closed when the broker disconnects the client or the
// connection fails.
func (r *RawMQTT) Lost() <-chan struct{} { return r.lost }

// Abort closes the TCP connection without DISCONNECT: the broker then
// publishes the client's will, if it kept one.
func (r *RawMQTT) Abort() { r.conn.Close() }

// Alive reports whether the connection still works: a QoS 1 publish of
// "alive?" to topic is acknowledged, and the broker has not dropped the
// client. It waits at most 5 seconds.
func (r *RawMQTT) Alive(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	acked := make(chan error, 1)
	go func() {
		_, err := r.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("alive?")})
		acked <- err
	}()
	select {
	case err := <-acked:
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	case <-r.lost:
		return fmt.Errorf("dropped: %s", r.why)
	}
	select {
	case <-r.lost:
		return fmt.Errorf("dropped: %s", r.why)
	default:
		return nil
	}
}
