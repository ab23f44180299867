package fetcher

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"
)

type stubSource struct {
	name, kind string
	price      float64
}

func (s stubSource) Name() string   { return s.name }
func (s stubSource) Kind() string   { return s.kind }
func (s stubSource) Price() float64 { return s.price }
func (s stubSource) Probe(context.Context, Image) (Availability, error) {
	return CanServe, nil
}
func (s stubSource) Table(context.Context, Image) ([]byte, error) { return nil, ErrCannotServe }
func (s stubSource) Fetch(context.Context, Image, Chunks, Deliver) error {
	return ErrCannotServe
}

func TestPickerRank(t *testing.T) {
	const mib = 1 << 20
	lan := stubSource{"lan", "http", 0}
	cell := stubSource{"cell", "http", 1e-6} // 1 unit per MB
	usb := stubSource{"usb", "file", 0}
	bro := stubSource{"broker", "broker", 1e-7}
	all := []Source{cell, lan, usb, bro}
	canAll := map[string]Availability{"lan": CanServe, "cell": CanServe, "usb": CanServe, "broker": CanServe}
	with := func(m map[string]Availability, k string, a Availability) map[string]Availability {
		out := map[string]Availability{}
		for kk, v := range m {
			out[kk] = v
		}
		out[k] = a
		return out
	}
	cases := []struct {
		name  string
		plan  Plan
		avail map[string]Availability
		setup func(p *Picker, c *fakeClock)
		want  []string // order of servable sources
		inf   []string // listed as unusable
	}{
		{name: "free local file first, metered last", avail: canAll,
			want: []string{"usb", "lan", "broker", "cell"}},
		{name: "measured slow lan loses to the broker", avail: canAll,
			setup: func(p *Picker, _ *fakeClock) {
				p.Observe("lan", 1<<10, 10*time.Second, time.Second) // 100 B/s
			},
			want: []string{"usb", "broker", "cell", "lan"}},
		{name: "failure penalty pushes a source down", avail: canAll,
			setup: func(p *Picker, _ *fakeClock) { p.Fail("usb"); p.Fail("usb") },
			want:  []string{"lan", "broker", "usb", "cell"}},
		{name: "penalty decays", avail: canAll,
			setup: func(p *Picker, c *fakeClock) { p.Fail("usb"); c.Advance(2 * time.Hour) },
			want:  []string{"usb", "lan", "broker", "cell"}},
		{name: "already have it costs 0", avail: with(canAll, "cell", HaveIt),
			want: []string{"cell", "usb", "lan", "broker"}},
		{name: "cannot serve is never ranked", avail: with(canAll, "usb", CannotServe),
			want: []string{"lan", "broker", "cell"}, inf: []string{"usb"}},
		{name: "pinned", plan: Plan{Mode: PlanPinned, Names: []string{"cell"}}, avail: canAll,
			want: []string{"cell"}, inf: []string{"usb", "lan", "broker"}},
		{name: "pinned by kind", plan: Plan{Mode: PlanPinned, Names: []string{"http"}}, avail: canAll,
			want: []string{"lan", "cell"}, inf: []string{"usb", "broker"}},
		{name: "try-each order beats cost", plan: Plan{Mode: PlanOrdered, Names: []string{"cell", "broker", "lan"}}, avail: canAll,
			want: []string{"cell", "broker", "lan"}, inf: []string{"usb"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeClock()
			p := newPicker(c, 0.001, 1, 5*time.Minute)
			if tc.setup != nil {
				tc.setup(p, c)
			}
			r := p.rank(tc.plan, all, tc.avail, 8*mib, nil)
			var got, inf []string
			for _, x := range r {
				if math.IsInf(x.Cost, 1) {
					inf = append(inf, x.Source)
				} else {
					got = append(got, x.Source)
				}
			}
			slices.Sort(inf)
			slices.Sort(tc.inf)
			if !slices.Equal(got, tc.want) || !slices.Equal(inf, tc.inf) {
				t.Errorf("ranked %v, unusable %v; want %v, %v", got, inf, tc.want, tc.inf)
				for _, x := range r {
					t.Logf("  %s: %s", x.Source, x.Reason)
				}
			}
		})
	}
}

func TestPickerSkip(t *testing.T) {
	p := newPicker(newFakeClock(), 0.001, 1, time.Minute)
	srcs := []Source{stubSource{"a", "file", 0}, stubSource{"b", "http", 0}}
	r := p.rank(Plan{}, srcs, map[string]Availability{"a": CanServe, "b": CanServe}, 100, map[string]bool{"a": true})
	if len(r) != 1 || r[0].Source != "b" {
		t.Fatalf("ranking %v, want only b", r)
	}
}

func TestNewConfigErrors(t *testing.T) {
	a := stubSource{"a", "file", 0}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no sources", Config{StateDir: t.TempDir()}},
		{"duplicate names", Config{Sources: []Source{a, a}, StateDir: t.TempDir()}},
		{"negative price", Config{Sources: []Source{stubSource{"n", "http", -1}}, StateDir: t.TempDir()}},
		{"no state dir", Config{Sources: []Source{a}}},
	} {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
}

// TestPickerCarriesOver: a source that failed in one fetch still carries
// its penalty in the next Fetcher given the same picker.
func TestPickerCarriesOver(t *testing.T) {
	fx := newFixture(t, 4*testChunk, testChunk, 40)
	bad := NewFileSource(t.TempDir()+"/missing", 0) // cannot serve: not even tried
	flaky := &faultySource{Source: NewHTTPSource(newRangeServer(t, fx).URL(), 0, nil), failAfter: 1}
	good := NewFileSource(fx.writeFiles(t, t.TempDir()), 1e-4) // pricier (0.4 for the image), below one failure penalty
	f1 := newFetcher(t, t.TempDir(), bad, flaky, good)
	if _, err := f1.Fetch(context.Background(), fx.im, Plan{}, newMemSink(len(fx.img))); err != nil {
		t.Fatal(err)
	}
	f2, err := New(Config{Sources: []Source{flaky, good}, StateDir: t.TempDir(), Picker: f1.Picker(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	r := f2.Picker().rank(Plan{}, []Source{flaky, good}, map[string]Availability{flaky.Name(): CanServe, good.Name(): CanServe}, fx.im.Size, nil)
	if r[0].Source != good.Name() {
		t.Errorf("ranking %v: the source that just failed should rank below the pricier one", r)
	}
}
