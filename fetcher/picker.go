package fetcher

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Clock is the time source of the picker (measurements, penalty decay).
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// PlanMode says how a manifest constrains the choice of source.
type PlanMode uint8

const (
	// PlanRank ranks every source that can serve by expected cost.
	PlanRank PlanMode = iota
	// PlanPinned uses only the sources named in Plan.Names (normally one).
	PlanPinned
	// PlanOrdered tries the sources named in Plan.Names in that order
	// (SUIT try-each); sources not named are not tried.
	PlanOrdered
)

// Plan is the manifest's constraint on source choice. Names match a
// Source's Name, or its Kind.
type Plan struct {
	Mode  PlanMode
	Names []string
}

// Candidate is one ranked source with its expected cost and the reasons.
type Candidate struct {
	Source string
	Kind   string
	// Availability is what the source's probe said.
	Availability Availability
	// Cost is the expected cost of fetching the remaining bytes from this
	// source (0 = already have it); +Inf = cannot serve.
	Cost float64
	// Reason explains the cost ("price 0.000 + time 1.2s + penalty 3.0").
	Reason string
}

// Decision records one choice of the picker, for logs and reports.
type Decision struct {
	Time time.Time
	// Chosen is the source picked ("" when none is left).
	Chosen string
	// Why is a one-line reason ("cheapest", "pinned by manifest",
	// "failover after http-cdn failed: ...", "already have it").
	Why string
	// Ranking is the full ranking at the time of the decision.
	Ranking []Candidate
}

func (d Decision) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chose %q (%s)", d.Chosen, d.Why)
	for _, c := range d.Ranking {
		fmt.Fprintf(&b, "; %s: %s", c.Source, c.Reason)
	}
	return b.String()
}

// prior throughput (bytes/s) and latency by kind, before any measurement.
var priors = map[string]struct {
	bps     float64
	latency time.Duration
}{
	"file":     {200e6, time.Millisecond},
	"http":     {10e6, 100 * time.Millisecond},
	"objstore": {20e6, 50 * time.Millisecond},
	"broker":   {5e6, 200 * time.Millisecond},
}

type sourceStats struct {
	bps      float64 // EWMA throughput
	latency  float64 // EWMA seconds to first chunk
	measured bool
	penalty  float64 // value at penaltyAt
	penAt    time.Time
	failures int
}

// Picker ranks sources by expected cost. It remembers measurements and
// failures across fetches. It is safe for concurrent use.
type Picker struct {
	clock     Clock
	timeValue float64
	penalty   float64
	halfLife  time.Duration

	mu    sync.Mutex
	stats map[string]*sourceStats
}

// ewmaWeight is the weight of a new measurement.
const ewmaWeight = 0.3

func newPicker(clock Clock, timeValue, penalty float64, halfLife time.Duration) *Picker {
	return &Picker{clock: clock, timeValue: timeValue, penalty: penalty, halfLife: halfLife, stats: map[string]*sourceStats{}}
}

func (p *Picker) st(name string) *sourceStats {
	s := p.stats[name]
	if s == nil {
		s = &sourceStats{}
		p.stats[name] = s
	}
	return s
}

// Observe records a transfer of n bytes that took d, whose first chunk
// arrived after first.
func (p *Picker) Observe(name string, n int64, d, first time.Duration) {
	if n <= 0 || d <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.st(name)
	bps := float64(n) / d.Seconds()
	if !s.measured {
		s.bps, s.latency, s.measured = bps, first.Seconds(), true
		return
	}
	s.bps += ewmaWeight * (bps - s.bps)
	s.latency += ewmaWeight * (first.Seconds() - s.latency)
}

// Fail records a failure of the source; its penalty grows by the
// configured amount and then decays with the configured half-life.
func (p *Picker) Fail(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.st(name)
	now := p.clock.Now()
	s.penalty = p.decayed(s, now) + p.penalty
	s.penAt = now
	s.failures++
}

func (p *Picker) decayed(s *sourceStats, now time.Time) float64 {
	if s.penalty == 0 || p.halfLife <= 0 {
		return 0
	}
	dt := now.Sub(s.penAt)
	if dt <= 0 {
		return s.penalty
	}
	return s.penalty * math.Exp2(-dt.Seconds()/p.halfLife.Seconds())
}

// cost returns the expected cost of fetching remaining bytes from src.
func (p *Picker) cost(src Source, avail Availability, remaining uint64) Candidate {
	c := Candidate{Source: src.Name(), Kind: src.Kind(), Availability: avail}
	switch avail {
	case CannotServe:
		c.Cost, c.Reason = math.Inf(1), "cannot serve"
		return c
	case HaveIt:
		c.Cost, c.Reason = 0, "already have it"
		return c
	}
	p.mu.Lock()
	s := p.st(src.Name())
	bps, lat, how := s.bps, s.latency, "measured"
	if !s.measured {
		pr, ok := priors[src.Kind()]
		if !ok {
			pr = priors["http"]
		}
		bps, lat, how = pr.bps, pr.latency.Seconds(), "prior"
	}
	pen := p.decayed(s, p.clock.Now())
	p.mu.Unlock()
	price := src.Price() * float64(remaining)
	secs := lat + float64(remaining)/bps
	c.Cost = price + p.timeValue*secs + pen
	c.Reason = fmt.Sprintf("cost %.4g = price %.4g + time %.3gs (%s %.3g MB/s, latency %.3gs) x %.3g + penalty %.3g",
		c.Cost, price, secs, how, bps/1e6, lat, p.timeValue, pen)
	return c
}

// rank orders the sources that can serve, by plan and expected cost.
// Sources in skip are left out. Cannot-serve sources are listed last with
// +Inf cost, for the record; callers stop at them.
func (p *Picker) rank(plan Plan, srcs []Source, avail map[string]Availability, remaining uint64, skip map[string]bool) []Candidate {
	var out []Candidate
	pos := map[string]int{}
	for i, n := range plan.Names {
		if _, ok := pos[n]; !ok {
			pos[n] = i
		}
	}
	planPos := func(c Candidate) (int, bool) {
		if i, ok := pos[c.Source]; ok {
			return i, true
		}
		i, ok := pos[c.Kind]
		return i, ok
	}
	for _, s := range srcs {
		if skip[s.Name()] {
			continue
		}
		c := p.cost(s, avail[s.Name()], remaining)
		if plan.Mode != PlanRank {
			if _, ok := planPos(c); !ok && avail[s.Name()] != HaveIt {
				c.Cost, c.Reason = math.Inf(1), "not in the manifest's source list"
			}
		}
		out = append(out, c)
	}
	key := func(c Candidate) (int, int, float64) {
		switch {
		case c.Availability == HaveIt:
			return 0, 0, 0
		case math.IsInf(c.Cost, 1):
			return 2, 0, 0
		case plan.Mode == PlanRank:
			return 1, 0, c.Cost
		}
		i, _ := planPos(c)
		return 1, i, c.Cost
	}
	sort.SliceStable(out, func(i, j int) bool {
		a1, a2, a3 := key(out[i])
		b1, b2, b3 := key(out[j])
		if a1 != b1 {
			return a1 < b1
		}
		if a2 != b2 {
			return a2 < b2
		}
		return a3 < b3
	})
	return out
}
