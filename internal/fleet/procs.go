package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/firmcast/firmcast/internal/brokerproc"
)

// ProcsConfig configures StartProcs. It is taken by value.
type ProcsConfig struct {
	// Procs is the number of child processes. Required.
	Procs int
	// Command returns the command of child i (0 <= i < Procs): this
	// program again, running ServeShare for the child's share of the
	// fleet (`firmcast sim share`). Its Path, Args and Env are used.
	// Required.
	Command func(i int) (*exec.Cmd, error)
	// Dir receives each child's stderr as share-<i>.log. Required.
	Dir string
	// UpTimeout bounds how long the children may take to bring their
	// devices up. Default 10 minutes.
	UpTimeout time.Duration
	// ReplyTimeout bounds the wait for a child's answer to stop or
	// outcome. Default 2 minutes.
	ReplyTimeout time.Duration
}

// Procs is a simulated fleet shared out among child processes, each
// running its share with ServeShare; it is a Sim. When one child fails
// (exits, or reports an error) every child is killed and Tally says why
// (Tally.Failed); Close stops them all. When this process dies, the
// children see their stdin close and stop too. Its methods are safe for
// concurrent use.
type Procs struct {
	cfg    ProcsConfig
	shares []*share

	mu      sync.Mutex
	failed  error
	closing bool
	stopped bool
}

// share is one child process.
type share struct {
	i    int
	proc *brokerproc.Process
	in   io.WriteCloser
	// replies carries the child's messages other than tallies.
	replies chan shareMsg
	// ended is closed when the child's output ended; err says why.
	ended chan struct{}
	err   error

	mu    sync.Mutex // guards tally and serializes requests
	tally Tally
	req   sync.Mutex
}

// StartProcs starts cfg.Procs children and returns once every child's
// devices are up, or the first error (every child killed): a child
// that failed, UpTimeout, or ctx's end.
func StartProcs(ctx context.Context, cfg ProcsConfig) (*Procs, error) {
	if cfg.Procs < 1 || cfg.Command == nil || cfg.Dir == "" {
		return nil, errors.New("fleet: procs need a count, a command and a directory")
	}
	if cfg.UpTimeout <= 0 {
		cfg.UpTimeout = 10 * time.Minute
	}
	if cfg.ReplyTimeout <= 0 {
		cfg.ReplyTimeout = 2 * time.Minute
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	p := &Procs{cfg: cfg}
	for i := range cfg.Procs {
		s, err := p.start(ctx, i)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.mu.Lock()
		p.shares = append(p.shares, s)
		p.mu.Unlock()
	}
	up, cancel := context.WithTimeout(ctx, cfg.UpTimeout)
	defer cancel()
	for _, s := range p.shares {
		if _, err := s.await(up, func(m shareMsg) bool { return m.Up != nil }); err != nil {
			p.fail(err)
			err = p.err()
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// start starts child i and the goroutine that reads its output.
func (p *Procs) start(ctx context.Context, i int) (*share, error) {
	cmd, err := p.cfg.Command(i)
	if err != nil {
		return nil, err
	}
	// The child's stdout is a pipe of our own, not cmd.StdoutPipe:
	// brokerproc waits for the process at once, and Wait would close
	// StdoutPipe's reader before its last lines were read.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s := &share{i: i, replies: make(chan shareMsg, 4), ended: make(chan struct{})}
	name := fmt.Sprintf("sim share %d/%d", i+1, p.cfg.Procs)
	s.proc, err = brokerproc.Start(ctx, brokerproc.Spec{
		Name: name, Bin: cmd.Path, Args: cmd.Args[1:], LogPath: filepath.Join(p.cfg.Dir, fmt.Sprintf("share-%d.log", i+1)),
		Prepare: func(c *exec.Cmd) (err error) {
			c.Env, c.Stdout = cmd.Env, w
			s.in, err = c.StdinPipe()
			return err
		},
	})
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	go p.read(s, r)
	return s, nil
}

// read decodes child s's output until it ends.
func (p *Procs) read(s *share, r *os.File) {
	defer r.Close()
	dec := json.NewDecoder(r)
	for {
		var m shareMsg
		if err := dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Tally != nil:
			s.mu.Lock()
			s.tally = *m.Tally
			s.mu.Unlock()
		case m.Error != "":
			s.err = fmt.Errorf("%s: %s", s.proc.Name(), m.Error)
		default:
			s.replies <- m
		}
	}
	// The output ends when the child exits (or closes it): unless this
	// process is closing them, that is a failure of the whole run.
	select {
	case <-s.proc.Done():
	case <-time.After(5 * time.Second):
	}
	if s.err == nil {
		s.err = fmt.Errorf("%s exited (log %s): %s", s.proc.Name(), s.proc.LogPath(), tail(s.proc.Log(), 2000))
	}
	close(s.ended)
	p.mu.Lock()
	closing := p.closing
	p.mu.Unlock()
	if !closing {
		p.fail(s.err)
	}
}

// tail returns the last n bytes of s, trimmed.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	if s == "" {
		s = "(no output)"
	}
	return s
}

// fail records the run's first failure and kills every child.
func (p *Procs) fail(err error) {
	p.mu.Lock()
	first := p.failed == nil
	if first {
		p.failed = err
	}
	shares := p.shares
	p.mu.Unlock()
	if first {
		for _, s := range shares {
			s.proc.Stop()
		}
	}
}

// err is the run's first failure (wrapping ErrSimFailed), or nil.
func (p *Procs) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrSimFailed, p.failed)
}

// await waits for the first reply of s that want accepts.
func (s *share) await(ctx context.Context, want func(shareMsg) bool) (shareMsg, error) {
	for {
		select {
		case m := <-s.replies:
			if want(m) {
				return m, nil
			}
		case <-s.ended:
			return shareMsg{}, s.err
		case <-ctx.Done():
			return shareMsg{}, fmt.Errorf("%s: no answer: %w", s.proc.Name(), ctx.Err())
		}
	}
}

// request sends c to s and waits for the reply that want accepts.
func (p *Procs) request(s *share, c shareCmd, want func(shareMsg) bool) (shareMsg, error) {
	s.req.Lock()
	defer s.req.Unlock()
	b, err := json.Marshal(c)
	if err != nil {
		return shareMsg{}, err
	}
	if _, err := s.in.Write(append(b, '\n')); err != nil {
		select {
		case <-s.ended:
			return shareMsg{}, s.err
		default:
		}
		return shareMsg{}, fmt.Errorf("%s: %w", s.proc.Name(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ReplyTimeout)
	defer cancel()
	return s.await(ctx, want)
}

// each runs fn for every child at once and joins the errors.
func (p *Procs) each(fn func(*share) error) error {
	errs := make([]error, len(p.shares))
	var wg sync.WaitGroup
	for i, s := range p.shares {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(s)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Tally adds up the children's latest tallies; Failed says why the run
// failed, if it did.
func (p *Procs) Tally() Tally {
	t := Tally{States: map[string]int{}}
	for _, s := range p.shares {
		s.mu.Lock()
		t.Add(s.tally)
		s.mu.Unlock()
	}
	p.mu.Lock()
	if p.failed != nil {
		t.Failed = p.failed.Error()
	}
	p.mu.Unlock()
	return t
}

// Stop has every child stop its agents and waits for them (each at
// most ReplyTimeout). A child that does not answer fails the run.
func (p *Procs) Stop() {
	p.mu.Lock()
	done := p.stopped
	p.stopped = true
	p.mu.Unlock()
	if done {
		return
	}
	err := p.each(func(s *share) error {
		_, err := p.request(s, shareCmd{Stop: true}, func(m shareMsg) bool { return m.Stopped })
		return err
	})
	if err != nil {
		p.fail(err)
	}
}

// Outcome adds up the children's outcomes; call it after Stop. A child
// that failed is missing from the sum, and the error says so.
func (p *Procs) Outcome(v2 [32]byte) (Outcome, error) {
	outs := make([]Outcome, len(p.shares))
	err := p.each(func(s *share) error {
		m, err := p.request(s, shareCmd{Outcome: hex.EncodeToString(v2[:])}, func(m shareMsg) bool { return m.Outcome != nil })
		if err == nil {
			outs[s.i] = *m.Outcome
		}
		return err
	})
	o := Outcome{FailedBy: map[string]int{}}
	for _, u := range outs {
		o.Add(u)
	}
	if err != nil {
		return o, fmt.Errorf("fleet: outcome: %w", err)
	}
	if err := p.err(); err != nil {
		return o, err
	}
	return o, nil
}

// ProcUsage is what the children used, read while they run.
type ProcUsage struct {
	Procs int `json:"procs"`
	// CPUSeconds is the children's user+system CPU time, summed.
	CPUSeconds float64 `json:"cpu_seconds"`
	// PeakRSS sums the children's resident set high-water marks (bytes).
	PeakRSS int64 `json:"peak_rss_bytes"`
}

// Usage reads the children's CPU time and peak memory (Linux); call it
// before Close. Children that exited are left out.
func (p *Procs) Usage() ProcUsage {
	u := ProcUsage{Procs: len(p.shares)}
	for _, s := range p.shares {
		pid := s.proc.PID()
		if cpu, err := brokerproc.ProcCPU(pid); err == nil {
			u.CPUSeconds += cpu
		}
		if _, hwm, err := brokerproc.ProcMem(pid); err == nil {
			u.PeakRSS += hwm
		}
	}
	return u
}

// Close closes the children's stdin, so that they stop their agents and
// exit, waits for them (10s at most each) and kills those still running.
// Safe to call more than once.
func (p *Procs) Close() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	for _, s := range p.shares {
		_ = s.in.Close()
	}
	for _, s := range p.shares {
		select {
		case <-s.proc.Done():
		case <-time.After(10 * time.Second):
		}
		s.proc.Stop()
		<-s.ended
	}
}
