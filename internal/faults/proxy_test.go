package faults

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

// linkProxy is a device's network link to the broker: a TCP proxy on a
// loopback port. cut closes every connection through it and refuses new
// ones (accepted, then closed at once: the device's reconnection attempts
// fail) until restore. It never alters bytes, so MQTT framing is intact.
// A throttled link forwards toward the device at a limited rate: what the
// broker sent beyond it waits upstream (in the broker and the proxy's
// socket buffers) and is lost with a cut, as on a slow radio link.
type linkProxy struct {
	ln       net.Listener
	upstream string
	down     *rate.Limiter // toward the device; nil: unthrottled
	cutOff   atomic.Bool
	refused  atomic.Int64 // connections refused while cut
	accepted atomic.Int64 // connections forwarded

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// startProxy listens on a free loopback port and forwards to upstream
// (host:port) until the test ends, toward the device at down bytes per
// second (0: unthrottled).
func startProxy(t *testing.T, upstream string, down int) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, upstream: upstream, conns: map[net.Conn]bool{}}
	if down > 0 {
		p.down = rate.NewLimiter(rate.Limit(down), 8<<10)
	}
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
		go p.pipe(c, u, p.down)
		go p.pipe(u, c, nil)
	}
}

func (p *linkProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = true
	}
}

// pipe copies src to dst, at most at lim's rate when lim is not nil,
// until either side closes.
func (p *linkProxy) pipe(dst, src net.Conn, lim *rate.Limiter) {
	defer p.wg.Done()
	if lim == nil {
		_, _ = io.Copy(dst, src)
	} else {
		buf := make([]byte, lim.Burst())
		for {
			n, err := src.Read(buf)
			// A wait is at most one burst long: a cut ends the copy soon
			// after, at the write.
			if n > 0 && (lim.WaitN(context.Background(), n) != nil || writeAll(dst, buf[:n]) != nil) {
				break
			}
			if err != nil {
				break
			}
		}
	}
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

// unthrottle lifts the link's throttle.
func (p *linkProxy) unthrottle() {
	if p.down != nil {
		p.down.SetLimit(rate.Inf)
	}
}

func (p *linkProxy) close() {
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}

func writeAll(w io.Writer, b []byte) error {
	_, err := w.Write(b) // net.Conn writes all of b or fails
	return err
}
