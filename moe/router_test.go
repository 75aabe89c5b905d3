package moe

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
)

// randRouting returns a routing of n tokens over e experts with k choices
// whose scores are softmax or sigmoid of normal logits times scale.
func randRouting(r *rand.Rand, n, e, k int, s Score, scale float64) *Routing {
	rt := &Routing{}
	rt.Resize(n, e, k)
	logits := make([]float32, n*e)
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * scale)
	}
	scoreForward(rt.Probs, logits, n, e, s)
	return rt
}

// randShape draws e experts in [1, maxE], k choices in [1, e] and n tokens
// in [1, maxN], in that order.
func randShape(r *rand.Rand, maxE, maxN int) (n, e, k int) {
	e = 1 + r.IntN(maxE)
	k = 1 + r.IntN(e)
	n = 1 + r.IntN(maxN)
	return n, e, k
}

func randBias(r *rand.Rand, e int) []float32 {
	b := make([]float32, e)
	for i := range b {
		b[i] = float32(r.NormFloat64() * 0.1)
	}
	return b
}

// selectMaybeBiased gives rt a random bias half of the time, then selects
// its experts with the router spec makes for rt's shape, and returns it.
func selectMaybeBiased(t *testing.T, r *rand.Rand, spec Spec, rt *Routing) Router {
	t.Helper()
	if r.IntN(2) == 0 {
		rt.Bias = randBias(r, rt.E)
	}
	router, err := New(spec, rt.E, rt.K)
	if err != nil {
		t.Fatalf("%+v, E=%d K=%d: %v", spec, rt.E, rt.K, err)
	}
	router.Select(rt)
	return router
}

// refTop returns the k candidates with the highest key, ties to the lower
// index, by a full sort.
func refTop(cands []int, key func(int) float64, k int) []int {
	c := slices.Clone(cands)
	sort.SliceStable(c, func(a, b int) bool { return key(c[a]) > key(c[b]) })
	return c[:k]
}

// TestMoGEPicksPerGroup: for random shapes, scores and biases, MoGE takes
// exactly K/M distinct experts in every group for every token, they are the
// group's best by score+bias, gates are the unbiased scores, and every
// group gets N·K/M slots (IS = 0 over EP = M ranks, the static split).
func TestMoGEPicksPerGroup(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for trial := 0; trial < 300; trial++ {
		m := 1 + r.IntN(5)
		gs := 1 + r.IntN(6)
		kg := 1 + r.IntN(gs)
		e, k, n := m*gs, m*kg, 1+r.IntN(40)
		rt := randRouting(r, n, e, k, Score(r.IntN(2)), 1+3*r.Float64())
		router := selectMaybeBiased(t, r, Spec{Kind: "moge", Groups: m}, rt)
		for tok := 0; tok < n; tok++ {
			p := rt.Probs[tok*e : (tok+1)*e]
			key := func(i int) float64 { return float64(selKey(p, rt.Bias, i)) }
			ex := rt.Experts[tok*k : (tok+1)*k]
			for g := 0; g < m; g++ {
				var cands []int
				for i := g * gs; i < (g+1)*gs; i++ {
					cands = append(cands, i)
				}
				want := refTop(cands, key, kg)
				for j, x := range ex[g*kg : (g+1)*kg] {
					if int(x)/gs != g || int(x) != want[j] {
						t.Fatalf("M=%d E=%d K=%d token %d group %d choice %d: expert %d, want %d", m, e, k, tok, g, j, x, want[j])
					}
					if rt.Gates[tok*k+g*kg+j] != p[x] {
						t.Fatalf("gate of expert %d is %v, want score %v", x, rt.Gates[tok*k+g*kg+j], p[x])
					}
				}
			}
		}
		var pl Plan
		pl.Build(rt)
		st, err := NewLoadStats(pl.Counts, n, n*k, pl.Dropped, m)
		if err != nil {
			t.Fatal(err)
		}
		split := router.(MoGE).StaticGroupSplit(n, k)
		if st.IS != 0 || !slices.Equal(st.PerRank, split) {
			t.Fatalf("M=%d E=%d K=%d N=%d: per-rank slots %v (IS %v), want the static split %v", m, e, k, n, st.PerRank, st.IS, split)
		}
	}
}

// TestGroupLimitedMatchesReference compares group-limited selection with a
// sort-based reference on random shapes, scores and biases.
func TestGroupLimitedMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for trial := 0; trial < 300; trial++ {
		g := 1 + r.IntN(6)
		gs := 1 + r.IntN(5)
		tg := 1 + r.IntN(g)
		e := g * gs
		k := 1 + r.IntN(tg*gs)
		n := 1 + r.IntN(30)
		rt := randRouting(r, n, e, k, Score(r.IntN(2)), 2)
		selectMaybeBiased(t, r, Spec{Kind: "group_limited", Groups: g, TopKGroups: tg}, rt)
		for tok := 0; tok < n; tok++ {
			p := rt.Probs[tok*e : (tok+1)*e]
			key := func(i int) float64 { return float64(selKey(p, rt.Bias, i)) }
			gscore := func(grp int) float64 {
				var c []int
				for i := grp * gs; i < (grp+1)*gs; i++ {
					c = append(c, i)
				}
				best := refTop(c, key, min(2, gs))
				// The same float32 sum as the router.
				s := selKey(p, rt.Bias, best[0])
				if gs > 1 {
					s += selKey(p, rt.Bias, best[1])
				}
				return float64(s)
			}
			var groups []int
			for grp := 0; grp < g; grp++ {
				groups = append(groups, grp)
			}
			kept := refTop(groups, gscore, tg)
			var cands []int
			for i := 0; i < e; i++ {
				if slices.Contains(kept, i/gs) {
					cands = append(cands, i)
				}
			}
			want := refTop(cands, key, k)
			var sum float64
			for j, x := range rt.Experts[tok*k : (tok+1)*k] {
				if int(x) != want[j] {
					t.Fatalf("G=%d TG=%d E=%d K=%d token %d choice %d: expert %d, want %d", g, tg, e, k, tok, j, x, want[j])
				}
				sum += float64(rt.Gates[tok*k+j])
			}
			if math.Abs(sum-1) > 1e-5 {
				t.Fatalf("gates sum to %v, want 1", sum)
			}
		}
	}
}

// TestBiasBalancingEvensSkewedRouter: a router whose scores strongly favour
// a few experts becomes close to even under bias updates alone (the scores
// never change), as measured by max/mean load.
func TestBiasBalancingEvensSkewedRouter(t *testing.T) {
	for _, sc := range []Score{Sigmoid, Softmax} {
		for _, kind := range []string{"topk", "group_limited"} {
			r := rand.New(rand.NewPCG(15, 16))
			n, e, k := 512, 8, 2
			rt := &Routing{}
			rt.Resize(n, e, k)
			logits := make([]float32, n*e)
			for i := range logits {
				skew := 2.5 * float64(e-1-i%e) / float64(e-1) // expert 0 favoured most
				logits[i] = float32(r.NormFloat64() + skew)
			}
			scoreForward(rt.Probs, logits, n, e, sc)
			router, err := New(Spec{Kind: kind, Groups: 4, TopKGroups: 2}, e, k)
			if err != nil {
				t.Fatal(err)
			}
			bias := make([]float32, e)
			rt.Bias = bias
			var pl Plan
			maxMean := func() float64 {
				router.Select(rt)
				pl.Build(rt)
				st, err := NewLoadStats(pl.Routed, n, n*k, 0, 1)
				if err != nil {
					t.Fatal(err)
				}
				return st.MaxMean
			}
			before := maxMean()
			const rate = 0.002
			for step := 0; step < 400; step++ {
				maxMean()
				if err := UpdateBias(bias, pl.Routed, rate); err != nil {
					t.Fatal(err)
				}
			}
			after := maxMean()
			if before < 2 || after > 1.25 {
				t.Errorf("%s/%s: max/mean load %.3f before, %.3f after 400 bias updates; want skewed (>= 2) then near even (<= 1.25)", kind, sc, before, after)
			}
			t.Logf("%s/%s: max/mean %.3f -> %.3f", kind, sc, before, after)
		}
	}
}

func TestUpdateBiasSign(t *testing.T) {
	b := []float32{0, 0, 0, 0}
	if err := UpdateBias(b, []int{5, 3, 1, 3}, 0.5); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b, []float32{-0.5, 0, 0.5, 0}) {
		t.Fatalf("bias after one update %v, want [-0.5 0 0.5 0] (mean load 3)", b)
	}
	if err := UpdateBias(b, []int{1, 2}, 0.5); err == nil {
		t.Fatal("UpdateBias accepted a load of the wrong length")
	}
}

// TestCapacityKeepsRightSlots compares BuildCapacity with a per-expert sort
// reference for both policies on random routings and capacities.
func TestCapacityKeepsRightSlots(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for trial := 0; trial < 300; trial++ {
		n, e, k := randShape(r, 7, 50)
		rt := randRouting(r, n, e, k, Softmax, 2)
		if trial%5 == 0 { // many ties
			for i := range rt.Probs {
				rt.Probs[i] = float32(1+r.IntN(3)) / 4
			}
		}
		TopK{}.Select(rt)
		capacity := r.IntN(n*k/e + 3)
		for _, pol := range []DropPolicy{DropProbability, DropPosition} {
			var pl Plan
			pl.BuildCapacity(rt, capacity, pol)
			wantKeep := make([]bool, n*k)
			dropped := 0
			for x := 0; x < e; x++ {
				var choices []int // in token order
				for i, ex := range rt.Experts[:n*k] {
					if int(ex) == x {
						choices = append(choices, i)
					}
				}
				if pol == DropProbability {
					sort.SliceStable(choices, func(a, b int) bool {
						return rt.Probs[choices[a]/k*e+x] > rt.Probs[choices[b]/k*e+x]
					})
				}
				for j, c := range choices {
					wantKeep[c] = j < capacity
					if j >= capacity {
						dropped++
					}
				}
			}
			if pl.Dropped != dropped {
				t.Fatalf("E=%d K=%d N=%d cap=%d %s: %d dropped, want %d", e, k, n, capacity, pol, pl.Dropped, dropped)
			}
			for i, keep := range wantKeep {
				s := pl.SlotOf[i]
				if keep != (s >= 0) {
					t.Fatalf("E=%d K=%d N=%d cap=%d %s: choice %d (token %d, expert %d) kept=%v, want %v", e, k, n, capacity, pol, i, i/k, rt.Experts[i], s >= 0, keep)
				}
				if keep && (int(pl.Token[s]) != i/k || pl.Gate[s] != rt.Gates[i]) {
					t.Fatalf("choice %d: slot %d holds token %d", i, s, pl.Token[s])
				}
			}
			for x := 0; x < e; x++ {
				if pl.Counts[x] > capacity || pl.Counts[x] != pl.Offsets[x+1]-pl.Offsets[x] {
					t.Fatalf("expert %d: %d slots, capacity %d", x, pl.Counts[x], capacity)
				}
				for s := pl.Offsets[x] + 1; s < pl.Offsets[x+1]; s++ {
					if pl.Token[s] <= pl.Token[s-1] {
						t.Fatalf("expert %d: kept slots not in token order", x)
					}
				}
			}
		}
	}
}

func TestCapacityFormula(t *testing.T) {
	for _, c := range []struct {
		f       float64
		n, e, k int
		want    int
	}{{0, 10, 4, 2, -1}, {1, 10, 4, 2, 5}, {1.25, 10, 4, 2, 7}, {1, 7, 3, 1, 3}, {0.5, 8, 8, 2, 1}} {
		if got := (Options{CapacityFactor: c.f}).Capacity(c.n, c.e, c.k); got != c.want {
			t.Errorf("capacity factor %g, N=%d E=%d K=%d: %d, want %d", c.f, c.n, c.e, c.k, got, c.want)
		}
	}
}

func TestNewRejectsBadSpecs(t *testing.T) {
	for _, c := range []struct {
		spec Spec
		e, k int
	}{
		{Spec{Kind: "moge", Groups: 3}, 8, 2},
		{Spec{Kind: "moge", Groups: 4}, 8, 2},
		{Spec{Kind: "group_limited", Groups: 4, TopKGroups: 5}, 8, 2},
		{Spec{Kind: "group_limited", Groups: 4, TopKGroups: 1}, 8, 3},
		{Spec{Kind: "magic"}, 8, 2},
		{Spec{Opts: Options{CapacityFactor: -1}}, 8, 2},
		{Spec{Opts: Options{ZLossCoef: math.NaN()}}, 8, 2},
		{Spec{}, 2, 3},
	} {
		if _, err := New(c.spec, c.e, c.k); err == nil {
			t.Errorf("New(%+v, %d, %d) accepted", c.spec, c.e, c.k)
		}
	}
}

func TestLoadStats(t *testing.T) {
	s, err := NewLoadStats([]int{4, 0, 2, 2, 1, 3}, 6, 12, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Ranks hold experts {0,1}, {2,3}, {4,5}: 4, 4, 4 slots.
	if !slices.Equal(s.PerRank, []int{4, 4, 4}) || s.IS != 0 || s.MaxMean != 2 {
		t.Fatalf("stats %+v: want per rank [4 4 4], IS 0, max/mean 2", s)
	}
	s, _ = NewLoadStats([]int{6, 0, 1, 1}, 5, 10, 2, 2)
	if !slices.Equal(s.PerRank, []int{6, 2}) || s.IS != 0.8 || s.DropRate != 0.2 {
		t.Fatalf("stats %+v: want per rank [6 2], IS 0.8, drop rate 0.2", s)
	}
	if _, err := NewLoadStats([]int{1, 2, 3}, 3, 3, 0, 2); err == nil {
		t.Fatal("EP degree 2 accepted for 3 experts")
	}
}

// TestTopKBiasedMatchesReference: with a bias, top-k picks by score+bias
// (sort reference) and gates renormalise the unbiased scores.
func TestTopKBiasedMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	for trial := 0; trial < 200; trial++ {
		n, e, k := randShape(r, 12, 20)
		rt := randRouting(r, n, e, k, Score(r.IntN(2)), 2)
		rt.Bias = randBias(r, e)
		TopK{}.Select(rt)
		for tok := 0; tok < n; tok++ {
			p := rt.Probs[tok*e : (tok+1)*e]
			var cands []int
			var sum float64
			for i := 0; i < e; i++ {
				cands = append(cands, i)
			}
			want := refTop(cands, func(i int) float64 { return float64(p[i] + rt.Bias[i]) }, k)
			for _, x := range want {
				sum += float64(p[x])
			}
			for j, x := range want {
				if int(rt.Experts[tok*k+j]) != x || math.Abs(float64(rt.Gates[tok*k+j])-float64(p[x])/sum) > 1e-6 {
					t.Fatalf("E=%d K=%d token %d choice %d: expert %d gate %v, want %d gate %v", e, k, tok, j, rt.Experts[tok*k+j], rt.Gates[tok*k+j], x, float64(p[x])/sum)
				}
			}
		}
	}
}
