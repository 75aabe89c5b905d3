package sp

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/tensor"
)

// problem is a full-sequence attention problem in a fused QKV buffer
// [B][T][stride] (q at 0, k at C, v at 2C, then padding), with the reference
// results of the tensor kernels over the whole sequence.
type problem struct {
	B, T, H, D, stride int
	qkv, do            []float32 // do: [B][T][C]
	o, lse, dqkv       []float32 // reference
	// acc0 is the value gradients start from before Backward accumulates.
	acc0 float32
}

func newProblem(seed uint64, b, t, h, d, pad int) *problem {
	c := h * d
	p := &problem{B: b, T: t, H: h, D: d, stride: 3*c + pad, acc0: 0.5}
	rng := rand.New(rand.NewPCG(seed, 1))
	p.qkv = make([]float32, b*t*p.stride)
	for i := range p.qkv {
		p.qkv[i] = float32(rng.NormFloat64())
	}
	p.do = make([]float32, b*t*c)
	for i := range p.do {
		p.do[i] = float32(rng.NormFloat64())
	}
	sh := p.fullShape()
	p.o = make([]float32, b*t*c)
	p.lse = make([]float32, b*h*t)
	q, k, v := p.split(p.qkv)
	tensor.AttentionForward(p.o, p.lse, q, k, v, sh)
	dd := make([]float32, b*h*t)
	tensor.AttentionRowDot(dd, p.do, p.o, sh)
	p.dqkv = make([]float32, len(p.qkv))
	dq, dk, dv := p.split(p.dqkv)
	tensor.AttentionBackward(dq, dk, dv, p.do, q, k, v, p.lse, dd, sh)
	return p
}

func (p *problem) C() int { return p.H * p.D }

func (p *problem) split(x []float32) (q, k, v []float32) { c := p.C(); return x, x[c:], x[2*c:] }

func (p *problem) fullShape() tensor.AttnShape {
	return tensor.AttnShape{Batch: p.B, Tq: p.T, Tk: p.T, Heads: p.H, HeadDim: p.D, QStride: p.stride,
		KStride: p.stride, VStride: p.stride, OStride: p.C(), Causal: true}
}

// rankResult is one rank's local outputs and gradients.
type rankResult struct{ o, lse, dqkv []float32 }

// runSP runs Forward and Backward on every rank (goroutines, in-process
// transport) and gathers the results into full-sequence tensors.
func runSP(t *testing.T, p *problem, sp int, alg Algorithm) (o, lse, dqkv []float32) {
	t.Helper()
	c, err := ChunkLen(p.T, sp)
	if err != nil {
		t.Fatal(err)
	}
	s := LocalShape{Batch: p.B, Chunk: c, Heads: p.H, HeadDim: p.D, QStride: p.stride, KStride: p.stride, VStride: p.stride}
	res := make([]rankResult, sp)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := testkit.OnRanks(sp, func(r int, tr collective.Transport) error {
		var comm *collective.Comm
		if sp > 1 {
			comm = collective.NewWorld(tr)
		}
		return runRank(ctx, comm, alg, p, s, sp, r, &res[r])
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	o = make([]float32, len(p.o))
	lse = make([]float32, len(p.lse))
	dqkv = make([]float32, len(p.dqkv))
	for r := range sp {
		mustNil(t, Gather(o, res[r].o, p.B, p.T, p.C(), sp, r))
		mustNil(t, GatherStats(lse, res[r].lse, p.B, p.H, p.T, sp, r))
		mustNil(t, Gather(dqkv, res[r].dqkv, p.B, p.T, p.stride, sp, r))
	}
	return o, lse, dqkv
}

func runRank(ctx context.Context, comm *collective.Comm, alg Algorithm, p *problem, s LocalShape, sp, r int, out *rankResult) error {
	rows := s.Rows()
	qkv := make([]float32, rows*p.stride)
	do := make([]float32, rows*p.C())
	if err := Shard(qkv, p.qkv, p.B, p.T, p.stride, sp, r); err != nil {
		return err
	}
	if err := Shard(do, p.do, p.B, p.T, p.C(), sp, r); err != nil {
		return err
	}
	out.o = make([]float32, rows*p.C())
	out.lse = make([]float32, s.StatLen())
	// Backward accumulates: start from a non-zero gradient to check that.
	out.dqkv = make([]float32, len(qkv))
	for i := range out.dqkv {
		out.dqkv[i] = p.acc0
	}
	q, k, v := p.split(qkv)
	if err := Forward(ctx, comm, alg, out.o, out.lse, q, k, v, s); err != nil {
		return err
	}
	dq, dk, dv := p.split(out.dqkv)
	if err := Backward(ctx, comm, alg, dq, dk, dv, do, q, k, v, out.o, out.lse, s); err != nil {
		return err
	}
	for i := range out.dqkv {
		out.dqkv[i] -= p.acc0
	}
	return nil
}

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// relErr is max|got−want| / max|want| over the entries where mask (if set)
// is true; -Inf entries must match exactly.
func relErr(got, want []float32, mask func(i int) bool) float64 {
	var num, den float64
	for i := range want {
		if mask != nil && !mask(i) {
			continue
		}
		g, w := float64(got[i]), float64(want[i])
		if math.IsInf(w, 0) || math.IsInf(g, 0) {
			if g != w {
				return math.Inf(1)
			}
			continue
		}
		num = math.Max(num, math.Abs(g-w))
		den = math.Max(den, math.Abs(w))
	}
	if den == 0 {
		return num
	}
	return num / den
}

func TestEquivalence(t *testing.T) {
	type tc struct {
		name            string
		b, c, h, d, pad int
	}
	cases := []tc{
		{"b1", 1, 3, 2, 5, 0},
		{"b2-packed-strided", 2, 2, 3, 7, 3},
		{"chunk1", 1, 1, 1, 4, 0},
	}
	const tol = 1e-5
	for _, sp := range []int{2, 3, 4, 8} {
		for _, c := range cases {
			p := newProblem(uint64(sp*100+len(c.name)), c.b, 2*sp*c.c, c.h, c.d, c.pad)
			for _, alg := range []Algorithm{Ring, TokenRing} {
				t.Run(fmt.Sprintf("sp%d/%s/%s", sp, c.name, alg), func(t *testing.T) {
					o, lse, dqkv := runSP(t, p, sp, alg)
					C := p.C()
					inGrad := func(i int) bool { return i%p.stride < 3*C } // padding is not a gradient
					for _, x := range []struct {
						name      string
						got, want []float32
						mask      func(int) bool
					}{
						{"o", o, p.o, nil},
						{"lse", lse, p.lse, nil},
						{"dq", dqkv, p.dqkv, func(i int) bool { return i%p.stride < C }},
						{"dk", dqkv, p.dqkv, func(i int) bool { j := i % p.stride; return j >= C && j < 2*C }},
						{"dv", dqkv, p.dqkv, func(i int) bool { j := i % p.stride; return j >= 2*C && j < 3*C }},
						{"padding", dqkv, make([]float32, len(dqkv)), func(i int) bool { return !inGrad(i) }},
					} {
						if e := relErr(x.got, x.want, x.mask); e > tol {
							t.Errorf("%s: relative error %.3g > %g", x.name, e, tol)
						}
					}
				})
			}
		}
	}
}

// TestSP1 checks the no-op path: one rank (nil comm or a one-member comm) is
// plain causal attention over the local rows.
func TestSP1(t *testing.T) {
	p := newProblem(7, 2, 6, 2, 3, 1)
	p.acc0 = 0 // bitwise comparison
	for _, alg := range []Algorithm{Ring, TokenRing} {
		o, lse, dqkv := runSP(t, p, 1, alg)
		for name, e := range map[string]float64{"o": relErr(o, p.o, nil), "lse": relErr(lse, p.lse, nil), "dqkv": relErr(dqkv, p.dqkv, nil)} {
			if e != 0 {
				t.Errorf("%s %s: differs from the kernel (%.3g)", alg, name, e)
			}
		}
	}
}

// TestDeterministic: two runs give bitwise identical results whatever the
// message timing.
func TestDeterministic(t *testing.T) {
	p := newProblem(9, 1, 16, 2, 4, 0)
	for _, alg := range []Algorithm{Ring, TokenRing} {
		o1, l1, g1 := runSP(t, p, 4, alg)
		o2, l2, g2 := runSP(t, p, 4, alg)
		for i := range o1 {
			if o1[i] != o2[i] {
				t.Fatalf("%s: o[%d] differs between runs", alg, i)
			}
		}
		for i := range l1 {
			if l1[i] != l2[i] {
				t.Fatalf("%s: lse[%d] differs between runs", alg, i)
			}
		}
		for i := range g1 {
			if g1[i] != g2[i] {
				t.Fatalf("%s: grad[%d] differs between runs", alg, i)
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	s := LocalShape{Batch: 1, Chunk: 2, Heads: 2, HeadDim: 3}
	n := s.Rows() * s.Width()
	buf := func(k int) []float32 { return make([]float32, k) }
	if err := Forward(ctx, nil, Algorithm(9), buf(n), buf(s.StatLen()), buf(n), buf(n), buf(n), s); err == nil || !strings.Contains(err.Error(), "algorithm") {
		t.Errorf("unknown algorithm: got %v", err)
	}
	if err := Forward(ctx, nil, Ring, buf(n), buf(s.StatLen()), buf(n-1), buf(n), buf(n), s); err == nil || !strings.Contains(err.Error(), "q has") {
		t.Errorf("short q: got %v", err)
	}
	if err := Forward(ctx, nil, Ring, buf(n), buf(s.StatLen()-1), buf(n), buf(n), buf(n), s); err == nil || !strings.Contains(err.Error(), "lse") {
		t.Errorf("short lse: got %v", err)
	}
	bad := s
	bad.KStride = 2
	if err := Backward(ctx, nil, TokenRing, buf(n), buf(n), buf(n), buf(n), buf(n), buf(n), buf(n), buf(n), buf(s.StatLen()), bad); err == nil || !strings.Contains(err.Error(), "k stride") {
		t.Errorf("small stride: got %v", err)
	}
	if _, err := ParseAlgorithm("ringo"); err == nil {
		t.Error("ParseAlgorithm(ringo): no error")
	}
	for _, name := range Algorithms {
		a, err := ParseAlgorithm(strings.ToUpper(name))
		if err != nil || a.String() != name {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", name, a, err)
		}
	}
}

// TestMissingPeer: a rank whose peer never joins fails at its deadline with
// an error naming the peer, for both algorithms and passes.
func TestMissingPeer(t *testing.T) {
	s := LocalShape{Batch: 1, Chunk: 2, Heads: 1, HeadDim: 2}
	n := s.Rows() * s.Width()
	buf := func() []float32 { return make([]float32, n) }
	for _, alg := range []Algorithm{Ring, TokenRing} {
		ts := collective.NewInProcess(2)
		comm := collective.NewWorld(ts[0])
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := Forward(ctx, comm, alg, buf(), make([]float32, s.StatLen()), buf(), buf(), buf(), s)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "sp rank 1") || !strings.Contains(err.Error(), "forward") {
			t.Errorf("%s forward: got %v", alg, err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
		err = Backward(ctx, comm, alg, buf(), buf(), buf(), buf(), buf(), buf(), buf(), buf(), make([]float32, s.StatLen()), s)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "sp rank 1") || !strings.Contains(err.Error(), "backward") {
			t.Errorf("%s backward: got %v", alg, err)
		}
	}
}
