package faults

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// linkProxy is a device's network link to the broker: a TCP proxy on a
// loopback port. cut closes every connection through it and refuses new
// ones (accepted, then closed at once: the device's reconnection attempts
// fail) until restore. It never alters bytes, so MQTT framing is intact.
type linkProxy struct {
	ln       net.Listener
	upstream string
	cutOff   atomic.Bool
	refused  atomic.Int64 // connections refused while cut
	accepted atomic.Int64 // connections forwarded

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// startProxy listens on a free loopback port and forwards to upstream
// (host:port) until the test ends.
func startProxy(t *testing.T, upstream string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, upstream: upstream, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's MQTT URL.
func (p *linkProxy) URL() string { return "mqtt://" + p.ln.Addr().String() }

func (p *linkProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.cutOff.Load() {
			p.refused.Add(1)
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.accepted.Add(1)
		p.track(c, u)
		p.wg.Add(2)
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

func (p *linkProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = true
	}
}

func (p *linkProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every open connection and refuses new ones until restore.
func (p *linkProxy) cut() {
	p.cutOff.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *linkProxy) restore() { p.cutOff.Store(false) }

func (p *linkProxy) close() {
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}
