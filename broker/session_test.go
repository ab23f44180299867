package broker_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// halfDeadProxy forwards TCP connections to target until cut: then it
// closes the client side of every connection but keeps the broker side
// open, reading and keeping what the broker sends (the broker sees a
// live connection, as with a client whose network vanished), and holds
// new connections until release.
type halfDeadProxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	cut      bool
	release  chan struct{}
	clients  []net.Conn
	upstream []net.Conn
	stale    bytes.Buffer // what the broker sent after the cut
	grew     chan struct{}
}

func newHalfDeadProxy(t *testing.T, target string) *halfDeadProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &halfDeadProxy{ln: ln, target: target, release: make(chan struct{}), grew: make(chan struct{}, 1)}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range append(p.clients, p.upstream...) {
			c.Close()
		}
	})
	go p.accept()
	return p
}

func (p *halfDeadProxy) addr() string { return p.ln.Addr().String() }

func (p *halfDeadProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.serve(c)
	}
}

func (p *halfDeadProxy) serve(c net.Conn) {
	p.mu.Lock()
	wait := p.release
	cut := p.cut
	p.mu.Unlock()
	if cut {
		<-wait
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.clients, p.upstream = append(p.clients, c), append(p.upstream, up)
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c) }() // ends when the client side is closed; up stays open
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if p.cut && !cut {
				p.stale.Write(buf[:n])
				select {
				case p.grew <- struct{}{}:
				default:
				}
			} else {
				_, _ = c.Write(buf[:n])
			}
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// cutClients closes the client side of every connection; the broker side
// stays open. New connections wait for releaseClients.
func (p *halfDeadProxy) cutClients() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.clients {
		c.Close()
	}
}

func (p *halfDeadProxy) releaseClients() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.release)
}

// awaitStale waits until the broker has sent b on a cut connection.
func (p *halfDeadProxy) awaitStale(b []byte, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ok := bytes.Contains(p.stale.Bytes(), b)
		p.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-p.grew:
		case <-deadline.C:
			return false
		}
	}
}

// TestEmbeddedMQTTTakeoverBringsRetainedNotice: a device's network
// vanishes while the broker still holds its connection; the backend
// publishes the device's (retained) notice, which the broker writes to
// that dead connection; the device reconnects, taking its session over,
// and resubscribes asking for retained messages only if the broker had
// lost the subscription (retain handling 1). The embedded broker delivers
// at QoS 0 (nothing is re-sent from a taken-over session), so it must drop
// the old session's subscriptions and let the resubscription bring the
// retained notice: the device must receive it.
func TestEmbeddedMQTTTakeoverBringsRetainedNotice(t *testing.T) {
	const dev, devSecret = "dev-t", "secret-dev-t-0123456789"
	accounts := []broker.Account{
		{Identity: broker.Identity{Username: "backend", Role: broker.RoleBackend}, Secret: "secret-backend-0123456789"},
		{Identity: broker.Identity{Username: dev, Role: broker.RoleDevice}, Secret: devSecret},
	}
	topics := testutil.UniqueTopics(t)
	srv := testutil.StartMochi(t, broker.MQTTServerConfig{Auth: testutil.CredentialStore(t, accounts), Topics: topics})
	proxy := newHalfDeadProxy(t, srv.Addr())
	backend := testutil.Dial(t, broker.Config{URL: srv.URL(), Topics: topics, ClientID: "publisher", Username: "backend", Password: "secret-backend-0123456789"})
	device := testutil.Dial(t, broker.Config{URL: "mqtt://" + proxy.addr(), Topics: topics, ClientID: dev, Username: dev, Password: devSecret,
		ReconnectMax: 100 * time.Millisecond})
	notice, _ := topics.Notice(dev)
	got := newPayloads()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := device.Subscribe(ctx, notice, got.add, broker.SubscribeOptions{Family: broker.FamilyNotice, Retained: true}); err != nil {
		t.Fatal(err)
	}
	if err := backend.Publish(ctx, notice, []byte("notice-1"), broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if !got.await("notice-1", 10*time.Second) {
		t.Fatal("notice-1 not delivered on a live connection")
	}
	proxy.cutClients()
	if err := backend.Publish(ctx, notice, []byte("notice-2"), broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if !proxy.awaitStale([]byte("notice-2"), 10*time.Second) {
		t.Fatal("the broker did not send notice-2 to the device's old connection")
	}
	proxy.releaseClients()
	if !got.await("notice-2", 15*time.Second) {
		t.Fatal("after taking its session over, the device never received the retained notice-2 (sent only to its dead connection)")
	}
}

// payloads records the payloads a handler received.
type payloads struct {
	mu   sync.Mutex
	seen map[string]bool
	more chan struct{}
}

func newPayloads() *payloads { return &payloads{seen: map[string]bool{}, more: make(chan struct{}, 1)} }

func (p *payloads) add(_ context.Context, m broker.Message) {
	p.mu.Lock()
	p.seen[string(m.Payload)] = true
	p.mu.Unlock()
	select {
	case p.more <- struct{}{}:
	default:
	}
}

func (p *payloads) has(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[s]
}

// await reports whether s arrives within d.
func (p *payloads) await(s string, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for !p.has(s) {
		select {
		case <-p.more:
		case <-deadline.C:
			return false
		}
	}
	return true
}
