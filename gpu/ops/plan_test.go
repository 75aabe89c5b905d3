package ops

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/moe"
)

// Routing shapes the plan tests draw.
const (
	planShapeUniform    = iota // uniform experts, continuous scores
	planShapeSkewed            // expert 0 in ~90% of the tokens' choices
	planShapeTies              // scores from three values: many equal scores
	planShapeSkewedTies        // skewed, every score equal: ranks fall back to flat order
	planNumShapes
)

// planRandomRouting draws n tokens' k distinct experts of e, gates and scores.
func planRandomRouting(rng *rand.Rand, n, e, k, shape int) *moe.Routing {
	r := &moe.Routing{}
	r.Resize(n, e, k)
	for i := range r.Probs {
		switch shape {
		case planShapeTies:
			r.Probs[i] = float32(1+rng.IntN(3)) / 4
		case planShapeSkewedTies:
			r.Probs[i] = 0.5
		default:
			r.Probs[i] = rng.Float32()
		}
	}
	perm := make([]int32, e)
	for t := 0; t < n; t++ {
		for i := range perm {
			perm[i] = int32(i)
		}
		for j := 0; j < k; j++ { // partial Fisher-Yates: perm[:k] distinct
			m := j + rng.IntN(e-j)
			perm[j], perm[m] = perm[m], perm[j]
		}
		row := r.Experts[t*k : (t+1)*k]
		copy(row, perm[:k])
		if (shape == planShapeSkewed || shape == planShapeSkewedTies) && rng.Float64() < 0.9 {
			if at := slices.Index(row, 0); at < 0 {
				row[rng.IntN(k)] = 0
			} else if at > 0 && rng.IntN(2) == 0 { // vary where expert 0 sits
				j := rng.IntN(k)
				row[at], row[j] = row[j], row[at]
			}
		}
	}
	for i := range r.Gates {
		r.Gates[i] = rng.Float32()
	}
	return r
}

// planCase holds one routing's device inputs and plan outputs.
type planCase struct {
	r                     *moe.Routing
	experts, gates, probs cuda.DevicePtr
	p                     planBufs
}

// planBufs are PlanBuild's outputs and scratch.
type planBufs struct {
	Routed, Counts, Offsets, Token, Gate, SlotOf, Work cuda.DevicePtr
}

func (o *Ops) planBuild(p planBufs, experts, gates, probs cuda.DevicePtr, n, e, k, capacity int, policy moe.DropPolicy) error {
	return o.PlanBuild(p.Routed, p.Counts, p.Offsets, p.Token, p.Gate, p.SlotOf, p.Work, experts, gates, probs, n, e, k, capacity, policy)
}

func planNewCase(t *testing.T, o *Ops, r *moe.Routing) *planCase {
	t.Helper()
	n, e, k := r.N, r.E, r.K
	nk := n * k
	return &planCase{
		r:       r,
		experts: upload(t, o, r.Experts[:nk]),
		gates:   upload(t, o, r.Gates[:nk]),
		probs:   upload(t, o, r.Probs[:n*e]),
		p: planBufs{
			Routed:  devAlloc(t, o, 4*e),
			Counts:  devAlloc(t, o, 4*e),
			Offsets: devAlloc(t, o, 4*(e+1)),
			Token:   devAlloc(t, o, 4*max(1, nk)),
			Gate:    devAlloc(t, o, 4*max(1, nk)),
			SlotOf:  devAlloc(t, o, 4*max(1, nk)),
			Work:    devAlloc(t, o, PlanWorkBytes(n, e, k)),
		},
	}
}

// planGot is a device plan copied back.
type planGot struct {
	routed, counts, offsets, token, slotOf []int32
	gate                                   []float32
}

// build poisons every output, builds the plan and copies it back (Token and
// Gate up to the S the device's Offsets say).
func (c *planCase) build(t *testing.T, o *Ops, capacity int, policy moe.DropPolicy) planGot {
	t.Helper()
	n, e, k := c.r.N, c.r.E, c.r.K
	nk := n * k
	for _, b := range []struct {
		p cuda.DevicePtr
		n int
	}{{c.p.Routed, e}, {c.p.Counts, e}, {c.p.Offsets, e + 1}, {c.p.Token, nk}, {c.p.Gate, nk}, {c.p.SlotOf, nk}, {c.p.Work, PlanWorkBytes(n, e, k) / 4}} {
		if err := o.C.Fill32(o.S, b.p, b.n, 0x7fc00000); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.planBuild(c.p, c.experts, c.gates, c.probs, n, e, k, capacity, policy); err != nil {
		t.Fatal(err)
	}
	g := planGot{
		routed:  download[int32](t, o, c.p.Routed, e),
		counts:  download[int32](t, o, c.p.Counts, e),
		offsets: download[int32](t, o, c.p.Offsets, e+1),
		slotOf:  download[int32](t, o, c.p.SlotOf, nk),
	}
	s := int(g.offsets[e])
	if s < 0 || s > nk {
		t.Fatalf("n=%d e=%d k=%d cap=%d %v: Offsets[E] = %d", n, e, k, capacity, policy, s)
	}
	g.token = download[int32](t, o, c.p.Token, s)
	g.gate = download[float32](t, o, c.p.Gate, s)
	return g
}

// planEqualInts compares a device int32 array with the CPU's ints.
func planEqualInts[T int | int32](got []int32, want []T) int {
	if len(got) != len(want) {
		return 0
	}
	for i := range got {
		if int64(got[i]) != int64(want[i]) {
			return i
		}
	}
	return -1
}

// checkPlan fails unless g is exactly the CPU plan p.
func planCheck(t *testing.T, what string, g planGot, p *moe.Plan) {
	t.Helper()
	for _, c := range []struct {
		name string
		at   int
	}{
		{"Routed", planEqualInts(g.routed, p.Routed)},
		{"Counts", planEqualInts(g.counts, p.Counts)},
		{"Offsets", planEqualInts(g.offsets, p.Offsets)},
		{"Token", planEqualInts(g.token, p.Token)},
		{"SlotOf", planEqualInts(g.slotOf, p.SlotOf)},
	} {
		if c.at >= 0 {
			t.Fatalf("%s: %s differs at %d (S=%d, dropped %d)", what, c.name, c.at, p.Slots(), p.Dropped)
		}
	}
	for i := range p.Gate {
		if math.Float32bits(g.gate[i]) != math.Float32bits(p.Gate[i]) {
			t.Fatalf("%s: Gate[%d] = %g, want %g", what, i, g.gate[i], p.Gate[i])
		}
	}
	if d := len(g.slotOf) - int(g.offsets[len(g.offsets)-1]); d != p.Dropped {
		t.Fatalf("%s: dropped %d, want %d", what, d, p.Dropped)
	}
}

// capacities are the capacities a routing is tested with: dropless, 0, 1,
// around the largest expert count, and moe's 1.25 capacity factor.
func planCapacities(r *moe.Routing) []int {
	var p moe.Plan
	p.Build(r)
	top := slices.Max(p.Routed)
	caps := []int{-1, 0, 1, top / 2, top - 1, top, top + 1,
		moe.Options{CapacityFactor: 1.25}.Capacity(r.N, r.E, r.K)}
	slices.Sort(caps)
	return slices.Compact(caps)
}

func planKValues(e int) []int {
	ks := []int{1, min(e, 2), min(e, 8)}
	slices.Sort(ks)
	return slices.Compact(ks)
}

func TestPlanBuildMatchesCPU(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(11, 12))
	type shape struct{ n, e, k int }
	var shapes []shape
	for _, n := range []int{1, 5, 300, 2000} {
		for _, e := range []int{1, 3, 8, 16, 64} {
			for _, k := range planKValues(e) {
				shapes = append(shapes, shape{n, e, k})
			}
		}
	}
	// More than 256 chunks (plan_routed's carry) and more than 256 experts
	// (plan_assign's carry over experts).
	shapes = append(shapes, shape{70000, 16, 8}, shape{3000, 300, 4})
	for _, sh := range shapes {
		for kind := 0; kind < planNumShapes; kind++ {
			if sh.n > 2000 && kind != planShapeSkewed && kind != planShapeTies {
				continue // the large shapes only with skew and with ties
			}
			r := planRandomRouting(rng, sh.n, sh.e, sh.k, kind)
			c := planNewCase(t, o, r)
			for _, capacity := range planCapacities(r) {
				for _, policy := range []moe.DropPolicy{moe.DropPosition, moe.DropProbability} {
					var want moe.Plan
					want.BuildCapacity(r, capacity, policy)
					what := planName(sh.n, sh.e, sh.k, kind, capacity, policy)
					planCheck(t, what, c.build(t, o, capacity, policy), &want)
				}
			}
		}
	}
}

func planName(n, e, k, shape, capacity int, policy moe.DropPolicy) string {
	names := []string{"uniform", "skewed", "ties", "skewed-ties"}
	return fmt.Sprintf("n=%d e=%d k=%d %s cap=%d %v", n, e, k, names[shape], capacity, policy)
}

// TestPlanBuildDeterministic: the same routing twice gives the same plan,
// bit for bit, for every policy.
func TestPlanBuildDeterministic(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(3, 4))
	r := planRandomRouting(rng, 4000, 64, 8, planShapeTies)
	c := planNewCase(t, o, r)
	for _, capacity := range []int{-1, 100, 400} {
		for _, policy := range []moe.DropPolicy{moe.DropPosition, moe.DropProbability} {
			a := c.build(t, o, capacity, policy)
			b := c.build(t, o, capacity, policy)
			if !slices.Equal(a.routed, b.routed) || !slices.Equal(a.counts, b.counts) || !slices.Equal(a.offsets, b.offsets) ||
				!slices.Equal(a.token, b.token) || !slices.Equal(a.slotOf, b.slotOf) || !slices.Equal(a.gate, b.gate) {
				t.Fatalf("cap=%d %v: two builds differ", capacity, policy)
			}
		}
	}
}

// TestPlanBuildEmpty: no tokens zero the per-expert outputs.
func TestPlanBuildEmpty(t *testing.T) {
	o := testOps(t)
	r := &moe.Routing{}
	r.Resize(0, 4, 2)
	c := planNewCase(t, o, r)
	g := c.build(t, o, 3, moe.DropProbability)
	for _, s := range [][]int32{g.routed, g.counts, g.offsets} {
		for i, v := range s {
			if v != 0 {
				t.Fatalf("n=0: %v[%d] = %d", s, i, v)
			}
		}
	}
}

// TestPlanBuildBadExperts: choices of an expert outside [0, E) are dropped
// and not counted; the others are planned as if those choices were absent.
func TestPlanBuildBadExperts(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(5, 6))
	r := planRandomRouting(rng, 300, 8, 2, planShapeUniform)
	bad := map[int]bool{}
	for i := 0; i < 20; i++ {
		j := rng.IntN(len(r.Experts))
		bad[j] = true
		if i%2 == 0 {
			r.Experts[j] = 8
		} else {
			r.Experts[j] = -1
		}
	}
	c := planNewCase(t, o, r)
	for _, policy := range []moe.DropPolicy{moe.DropPosition, moe.DropProbability} {
		g := c.build(t, o, -1, policy)
		var total int32
		for _, v := range g.routed {
			total += v
		}
		if int(total) != len(r.Experts)-len(bad) || int(g.offsets[8]) != int(total) {
			t.Fatalf("%v: routed %d, S %d, want %d", policy, total, g.offsets[8], len(r.Experts)-len(bad))
		}
		for j := range bad {
			if g.slotOf[j] != -1 {
				t.Fatalf("%v: SlotOf[%d] = %d for expert %d, want -1", policy, j, g.slotOf[j], r.Experts[j])
			}
		}
	}
}

// TestPlanBuildTooManyExperts: an expert count whose assignment shared
// memory exceeds the GPU's is an error, not a failed launch.
func TestPlanBuildTooManyExperts(t *testing.T) {
	o := testOps(t)
	e := 1 << 16
	p := planBufs{Routed: 1, Counts: 1, Offsets: 1, Token: 1, Gate: 1, SlotOf: 1, Work: 1}
	if err := o.planBuild(p, 1, 1, 1, 4, e, 1, -1, moe.DropPosition); err == nil {
		t.Fatalf("e=%d: no error", e)
	}
}

// TestPlanBuildBadArgs needs no GPU: arguments are checked before any launch.
func TestPlanBuildBadArgs(t *testing.T) {
	o := &Ops{}
	ok := planBufs{Routed: 1, Counts: 1, Offsets: 1, Token: 1, Gate: 1, SlotOf: 1, Work: 1}
	noWork := ok
	noWork.Work = 0
	noSlot := ok
	noSlot.SlotOf = 0
	noRouted := ok
	noRouted.Routed = 0
	for _, c := range []struct {
		name          string
		p             planBufs
		probs         cuda.DevicePtr
		n, e, k, capv int
		policy        moe.DropPolicy
	}{
		{"negative n", ok, 1, -1, 4, 2, -1, moe.DropPosition},
		{"no experts", ok, 1, 4, 0, 1, -1, moe.DropPosition},
		{"k=0", ok, 1, 4, 4, 0, -1, moe.DropPosition},
		{"k>e", ok, 1, 4, 4, 5, -1, moe.DropPosition},
		{"huge", ok, 1, 1 << 30, 4, 4, -1, moe.DropPosition},
		{"nil work", noWork, 1, 4, 4, 2, -1, moe.DropPosition},
		{"nil slotOf", noSlot, 1, 4, 4, 2, 3, moe.DropPosition},
		{"nil routed", noRouted, 1, 4, 4, 2, 3, moe.DropPosition},
		{"probability without probs", ok, 0, 4, 4, 2, 3, moe.DropProbability},
	} {
		if err := o.planBuild(c.p, 1, 1, c.probs, c.n, c.e, c.k, c.capv, c.policy); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func TestPlanWorkBytes(t *testing.T) {
	// 2·2048+1 choices: 3 chunks of 4 experts, E roff, 3·N·K list/keep/score.
	if got, want := PlanWorkBytes(4097, 4, 1), 4*(3*4+4+3*4097); got != want {
		t.Fatalf("PlanWorkBytes = %d, want %d", got, want)
	}
	if PlanWorkBytes(0, 4, 2) <= 0 {
		t.Fatal("PlanWorkBytes(0, ...) must be positive (a valid allocation)")
	}
}
