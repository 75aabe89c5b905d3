package ops

import (
	"sort"
	"strings"

	"github.com/moetrain/moetrain/cuda"
)

// Profile times the work queued on an Ops' stream by kernel family, with a
// pair of events around each launch (and around each product the caller
// reports through Span). Events come from a pool, so a profiled step
// allocates nothing once warm; the timings include each launch's own
// queueing gaps only when the stream was starved.
type Profile struct {
	c     *cuda.Context
	s     cuda.Stream
	pool  []cuda.Event
	used  int
	marks []profMark
	// Totals are the milliseconds per family collected so far, Kernels per
	// kernel (products as "gemm.<site>").
	Totals, Kernels map[string]float64
	// Wall is the milliseconds from the first timed launch to the end of the
	// last one of each collected batch: Wall minus the sum of Totals is the
	// time the device waited for the host within the steps.
	Wall float64
}

type profMark struct {
	family, name string
	start, end   cuda.Event
	side         bool // timed on another stream (SpanOn)
}

// NewProfile starts profiling o's launches (o.Prof = the profile).
func (o *Ops) NewProfile() *Profile {
	p := &Profile{c: o.C, s: o.S, Totals: map[string]float64{}, Kernels: map[string]float64{}}
	o.Prof = p
	return p
}

// Family names the kernel family of a kernel: attention, routing (router
// scores, selection, the dispatch plan and row movement), optimizer (AdamW
// and gradient norms), spsa (the zeroth-order perturbation and update), or
// elementwise (norms, activations, embeddings, cross-entropy, casts).
func Family(kernel string) string {
	switch {
	case strings.HasPrefix(kernel, "attention_"):
		return "attention"
	case strings.HasPrefix(kernel, "router_"), strings.HasPrefix(kernel, "plan_"), strings.HasPrefix(kernel, "rows_"):
		return "routing"
	case strings.HasPrefix(kernel, "adamw_"), strings.HasPrefix(kernel, "elementwise_sum"):
		return "optimizer"
	case strings.HasPrefix(kernel, "spsa_"):
		return "spsa"
	}
	return "elementwise"
}

func (p *Profile) event() (cuda.Event, error) {
	if p.used == len(p.pool) {
		e, err := p.c.NewEvent()
		if err != nil {
			return 0, err
		}
		p.pool = append(p.pool, e)
	}
	p.used++
	return p.pool[p.used-1], nil
}

// Span times fn's work on the stream under family and name.
func (p *Profile) Span(family, name string, fn func() error) error {
	return p.span(p.s, false, family, name, fn)
}

// SpanOn times fn's work queued on stream s (another stream than the
// profiled one) under family and name. Its time overlaps the main stream's:
// with such spans the families add up to more than Wall.
func (p *Profile) SpanOn(s cuda.Stream, family, name string, fn func() error) error {
	return p.span(s, true, family, name, fn)
}

func (p *Profile) span(s cuda.Stream, side bool, family, name string, fn func() error) error {
	start, err := p.event()
	if err != nil {
		return err
	}
	end, err := p.event()
	if err != nil {
		return err
	}
	if err := p.c.Record(start, s); err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err
	}
	if err := p.c.Record(end, s); err != nil {
		return err
	}
	p.marks = append(p.marks, profMark{family, name, start, end, side})
	return nil
}

// Collect waits for the stream, adds the spans' times to Totals and frees
// the events for reuse.
func (p *Profile) Collect() error {
	first, last := -1, -1
	for i, m := range p.marks {
		if !m.side {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first >= 0 {
		ms, err := p.c.Elapsed(p.marks[first].start, p.marks[last].end)
		if err != nil {
			return err
		}
		p.Wall += float64(ms)
	}
	for _, m := range p.marks {
		ms, err := p.c.Elapsed(m.start, m.end)
		if err != nil {
			return err
		}
		p.Totals[m.family] += float64(ms)
		p.Kernels[m.name] += float64(ms)
	}
	p.marks, p.used = p.marks[:0], 0
	return nil
}

// Top lists the n kernels with the most time, largest first.
func (p *Profile) Top(n int) []string {
	var out []string
	for f := range p.Kernels {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return p.Kernels[out[i]] > p.Kernels[out[j]] })
	return out[:min(n, len(out))]
}
