package deviceagent

import (
	"context"
	"sync"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// progressReports sends a download's progress reports from a goroutine of
// its own, so that the fetching goroutine never waits on the network for
// them. A report is a QoS 1 publish: its acknowledgement comes on the
// device's one connection behind whatever the broker has queued for the
// device, a broadcast wave's chunks included, and while the fetching
// goroutine waited for it nothing took chunks off the receive buffer,
// which shed them (at 200 devices on 2 cores, about half of a wave).
// Each report carries the progress and time at which it was posted; at
// most progressQueue wait, the oldest dropped beyond.
type progressReports struct {
	mu      sync.Mutex
	pending []progressAt
	closing bool // stop called: send what is pending, then end

	wake chan struct{}
	done chan struct{}
}

// progressAt is the progress a report carries: bytes done at time.
type progressAt struct {
	bytes uint64
	time  time.Time
}

// progressQueue bounds the progress reports waiting to be sent.
const progressQueue = 8

// startProgressReports starts the reporting goroutine of one download;
// stop ends it.
func (a *Agent) startProgressReports(ctx context.Context) *progressReports {
	p := &progressReports{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
			for {
				p.mu.Lock()
				if len(p.pending) == 0 {
					closing := p.closing
					p.mu.Unlock()
					if closing {
						return
					}
					break
				}
				at := p.pending[0]
				p.pending = p.pending[1:]
				p.mu.Unlock()
				a.mu.Lock()
				campaign := a.st.Campaign
				a.mu.Unlock()
				_ = a.sendReport(ctx, campaign, schemas.StateDownloading, schemas.CodeNone, "", false, &at)
			}
		}
	}()
	return p
}

// post queues a progress report of bytes done at t; it never blocks.
func (p *progressReports) post(bytes uint64, t time.Time) {
	p.mu.Lock()
	if len(p.pending) == progressQueue {
		p.pending = p.pending[1:]
	}
	p.pending = append(p.pending, progressAt{bytes: bytes, time: t})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// stop sends the reports still queued, ends the goroutine and waits for
// it, so that the reports after stop (the download's state) come after
// them, in counter order.
func (p *progressReports) stop() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	<-p.done
}
