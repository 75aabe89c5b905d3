package moe

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
)

// commEx is an Exchange over a collective.Comm (the expert-parallel group),
// keeping the first error like model.Comms.
type commEx struct {
	c   *collective.Comm
	ctx context.Context
	mu  sync.Mutex
	err error
}

func (x *commEx) EP() (int, int)      { return x.c.Size(), x.c.Rank() }
func (x *commEx) TP() (int, int)      { return 1, 0 }
func (x *commEx) SumTP([]float32)     {}
func (x *commEx) UniformTokens() bool { return true }
func (x *commEx) Err() error          { x.mu.Lock(); defer x.mu.Unlock(); return x.err }
func (x *commEx) Fail(err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.err == nil {
		x.err = err
	}
}

func (x *commEx) AllToAllV(send []float32, sc []int, recv []float32, rc []int) {
	if x.Err() != nil {
		return
	}
	if err := x.c.AllToAllV(x.ctx, send, sc, recv, rc); err != nil {
		x.Fail(err)
	}
}

func (x *commEx) AllToAllVStart(send []float32, sc []int, recv []float32, rc []int) func() {
	if x.Err() != nil {
		return func() {}
	}
	rq := x.c.AllToAllVAsync(send, sc, recv, rc)
	return func() {
		if err := rq.Wait(x.ctx); err != nil {
			x.Fail(err)
		}
	}
}

// epRun is one expert-parallel run of a layer: every member's output,
// input gradient and gradients of its weights (router: its own tokens'
// part; experts: its E/EP experts).
type epRun struct {
	out, dx [][]float32
	dw      []Weights
	timing  []Timing
}

// epCase is the layer every test below runs: ep members with n tokens
// each, the whole weights w (member m holds experts [m·E/ep, (m+1)·E/ep)).
type epCase struct {
	dm      Dims
	ep, n   int
	x, dout [][]float32
	w       Weights
}

func newEPCase(seed uint64, ep, n int, dm Dims) *epCase {
	r := rand.New(rand.NewPCG(seed, 7))
	rnd := func(m int, s float64) []float32 { return normals(r, m, s) }
	c := &epCase{dm: dm, ep: ep, n: n}
	c.w = Weights{Router: rnd(dm.E*dm.D, 0.8), W1: rnd(dm.E*dm.H*dm.D, 0.3), W2: rnd(dm.E*dm.D*dm.H, 0.3)}
	for range ep {
		c.x = append(c.x, rnd(n*dm.D, 1))
		c.dout = append(c.dout, rnd(n*dm.D, 1))
	}
	return c
}

func (c *epCase) shard(m int) Weights {
	el := c.dm.E / c.ep
	hd := c.dm.H * c.dm.D
	if c.w.Down != nil {
		hd = c.dm.H * len(c.w.Down) / c.dm.D
	}
	return Weights{Router: c.w.Router, W1: c.w.W1[m*el*hd : (m+1)*el*hd], W2: c.w.W2[m*el*hd : (m+1)*el*hd], Down: c.w.Down, Up: c.w.Up}
}

// run runs steps forwards and backwards (weights unchanged, gradients of
// the last one) with every member's router options opt, over an
// in-process group whose links are shaped to bw bytes/s (0: unshaped).
func (c *epCase) run(t testing.TB, spec Spec, opt ExchangeOptions, steps int, bw float64) epRun {
	t.Helper()
	spec.Opts.Exchange = opt
	router, err := New(spec, c.dm.E, c.dm.K)
	if err != nil {
		t.Fatal(err)
	}
	ts := collective.NewInProcess(c.ep)
	res := epRun{out: make([][]float32, c.ep), dx: make([][]float32, c.ep), dw: make([]Weights, c.ep), timing: make([]Timing, c.ep)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errs := make([]error, c.ep)
	var wg sync.WaitGroup
	for m := range c.ep {
		wg.Go(func() {
			tr := ts[m]
			if bw > 0 {
				tr = collective.NewShaped(tr, collective.LinkShape{From: -1, To: -1, Bandwidth: bw})
			}
			ex := &commEx{c: collective.NewWorldConfig(tr, collective.Config{Timeout: 30 * time.Second}), ctx: ctx}
			var st State
			var sc Scratch
			st.Resize(c.dm, c.n)
			sc.Resize(c.dm, c.n)
			st.Ex = ex
			w := c.shard(m)
			out := make([]float32, c.n*c.dm.D)
			dx := make([]float32, c.n*c.dm.D)
			var dw Weights
			for range steps {
				dw = zeroWeights(w)
				clear(out)
				clear(dx)
				Forward(out, c.x[m], w, c.dm, router, nil, &st)
				Backward(dx, dw, c.dout[m], c.x[m], w, c.dm, router, nil, 0.3, &st, &sc)
			}
			res.out[m], res.dx[m], res.dw[m], res.timing[m] = out, dx, dw, st.ExchangeTiming()
			errs[m] = ex.Err()
		})
	}
	wg.Wait()
	for m, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", m, err)
		}
	}
	return res
}

// relErr is ‖a − b‖ / max(‖b‖, tiny) over float64.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num) / math.Max(math.Sqrt(den), 1e-30)
}

func (r epRun) maxErr(ref epRun) float64 {
	e := 0.0
	for m := range r.out {
		e = max(e, relErr(r.out[m], ref.out[m]), relErr(r.dx[m], ref.dx[m]))
		for _, p := range [][2][]float32{{r.dw[m].Router, ref.dw[m].Router}, {r.dw[m].W1, ref.dw[m].W1}, {r.dw[m].W2, ref.dw[m].W2}} {
			e = max(e, relErr(p[0], p[1]))
		}
	}
	return e
}

// Pipelined EP (any chunk count, including more chunks than some members
// have rows) equals unpipelined EP on the outputs, input gradients and
// weight gradients, for every router (the static MoGE split included) and
// with capacity drops.
func TestPipelinedEqualsUnpipelined(t *testing.T) {
	worst := 0.0
	defer func() { t.Logf("largest relative error (outputs, input and weight gradients): %.3g", worst) }()
	for _, ep := range []int{2, 4} {
		for _, spec := range []Spec{{Kind: "topk"}, {Kind: "moge", Groups: ep}, {Kind: "topk", Opts: Options{CapacityFactor: 0.8}}} {
			dm := Dims{D: 12, H: 20, E: 8, K: ep}
			c := newEPCase(uint64(ep)*31+uint64(spec.Groups), ep, 13, dm)
			base := c.run(t, spec, ExchangeOptions{}, 1, 0)
			for _, chunks := range []int{2, 3, 5, MaxChunks} {
				got := c.run(t, spec, ExchangeOptions{Chunks: chunks}, 1, 0)
				e := got.maxErr(base)
				if e > 1e-5 {
					t.Errorf("ep=%d %s cap=%g chunks=%d: relative error %.3g > 1e-5", ep, spec.Kind, spec.Opts.CapacityFactor, chunks, e)
				}
				worst = max(worst, e)
				if got.timing[0].Chunks != chunks {
					t.Errorf("chunks=%d: the layer used %d", chunks, got.timing[0].Chunks)
				}
			}
		}
	}
}

// The tuner's run: every member uses member 0's choice (they would desync
// otherwise), and the results equal the unpipelined ones whatever it picks.
func TestAutoChunksAgreeAndMatch(t *testing.T) {
	dm := Dims{D: 8, H: 16, E: 4, K: 2}
	c := newEPCase(3, 2, 17, dm)
	base := c.run(t, Spec{}, ExchangeOptions{}, 1, 0)
	steps := len(tuneCands)*tuneSamples + 2
	got := c.run(t, Spec{}, ExchangeOptions{Chunks: AutoChunks}, steps, 0)
	if e := got.maxErr(base); e > 1e-5 {
		t.Errorf("auto chunks: relative error %.3g > 1e-5", e)
	}
	for m, tm := range got.timing {
		if tm.Chunks < 1 || tm.Chunks != got.timing[0].Chunks {
			t.Errorf("member %d used %d chunks, member 0 %d", m, tm.Chunks, got.timing[0].Chunks)
		}
	}
}

func TestTunerPicksFastestAndLogs(t *testing.T) {
	var tu tuner
	cost := map[int]time.Duration{1: 50, 2: 30, 4: 20, 8: 40}
	for range len(tuneCands) * tuneSamples {
		c := tu.propose()
		tu.record(c, cost[c])
	}
	if got := tu.propose(); got != 4 {
		t.Fatalf("tuner holds %d, want 4 (fastest)", got)
	}
	if len(tu.log) != 1 || tu.log[0].From != 0 || tu.log[0].To != 4 || tu.log[0].Times[1] != 50 {
		t.Fatalf("log %+v", tu.log)
	}
	// After the hold it measures again and follows a change.
	cost = map[int]time.Duration{1: 10, 2: 30, 4: 20, 8: 40}
	for range tuneHold {
		tu.record(tu.propose(), cost[tu.propose()])
	}
	for range len(tuneCands) * tuneSamples {
		c := tu.propose()
		tu.record(c, cost[c])
	}
	if got := tu.propose(); got != 1 || len(tu.log) != 2 || tu.log[1].From != 4 || tu.log[1].To != 1 {
		t.Fatalf("after the change: holds %d, log %+v", got, tu.log)
	}
}

// A member 0 that proposes a chunk count out of range is reported through
// Fail, not used.
func TestAgreeBadProposal(t *testing.T) {
	f := newLayerFixture(t, Spec{Kind: "topk"}, 2, false, 3)
	x := &peerExchange{counts: []float32{3, 2}}
	f.st.Ex = x
	var pp pipe
	f.st.Plan.Build(&f.st.Routing)
	if c := pp.agree(x, &f.st.disp, &f.st.Plan, 99, -1, 1<<20); c != 1 || x.err == nil {
		t.Fatalf("proposal 99: got chunks %d, error %v", c, x.err)
	}
}

// fp8 and bf16 dispatch: the EP layer's output equals the layer computed
// with the experts' inputs rounded by the reference quantizer (and, for
// fp8, outputs rounded to bfloat16), and differs from fp32 by about the
// quantization error; the backward stays close to fp32's.
func TestQuantizedDispatchMatchesReference(t *testing.T) {
	dm := Dims{D: 16, H: 24, E: 4, K: 2}
	c := newEPCase(11, 2, 19, dm)
	fp32 := c.run(t, Spec{}, ExchangeOptions{}, 1, 0)
	for _, dt := range []DType{BF16, FP8E4M3} {
		for _, chunks := range []int{1, 3} {
			got := c.run(t, Spec{}, ExchangeOptions{DType: dt, Chunks: chunks}, 1, 0)
			for m := range c.ep {
				want := c.quantizedReference(t, m, dt)
				e := relErr(got.out[m], want)
				t.Logf("%s chunks=%d member %d: vs reference %.3g, vs fp32 %.3g", dt, chunks, m, e, relErr(got.out[m], fp32.out[m]))
				if e > 1e-5 {
					t.Errorf("%s chunks=%d member %d: output vs reference quantizer: relative error %.3g", dt, chunks, m, e)
				}
				q := relErr(got.out[m], fp32.out[m])
				if q == 0 || q > 0.1 {
					t.Errorf("%s member %d: output differs from fp32 by %.3g (want quantization-sized, > 0)", dt, m, q)
				}
				if e := relErr(got.dw[m].W1, fp32.dw[m].W1); e > 0.1 {
					t.Errorf("%s member %d: dW1 differs from fp32 by %.3g", dt, m, e)
				}
			}
		}
	}
}

// quantizedReference is member m's layer output computed serially on all
// members' tokens with each dispatched row passed through the reference
// quantizer (refPack/refUnpack) and, when dt is not fp32, each expert
// output rounded to bfloat16: the residual-free gated sum for its tokens.
func (c *epCase) quantizedReference(t *testing.T, m int, dt DType) []float32 {
	dm := c.dm
	router, _ := New(Spec{}, dm.E, dm.K)
	var st State
	st.Resize(dm, c.n)
	out := make([]float32, c.n*dm.D)
	Forward(out, c.x[m], c.w, dm, router, nil, &st) // routing and plan only
	p := &st.Plan
	s, d := p.Slots(), dm.D
	xq := make([]float32, s*d)
	for i := 0; i < s; i++ {
		row := c.x[m][int(p.Token[i])*d : int(p.Token[i]+1)*d]
		copy(xq[i*d:], refQuantize(dt, row))
	}
	y := make([]float32, s*d)
	hpre, hact := make([]float32, s*dm.H), make([]float32, s*dm.H)
	Experts{D: d, H: dm.H}.Forward(y, hpre, hact, xq, c.w.W1, c.w.W2, p.Offsets)
	if dt != FP32 {
		for i := range y {
			y[i] = refBF16(y[i])
		}
	}
	want := make([]float32, c.n*d)
	for i := 0; i < s; i++ {
		t := int(p.Token[i])
		for j := 0; j < d; j++ {
			want[t*d+j] += p.Gate[i] * y[i*d+j]
		}
	}
	return want
}

// refQuantize rounds a row the slow way: bf16 by comparing the two
// neighbouring bfloat16 values in float64; fp8 by searching all 256 E4M3
// codes for the nearest to x·(448/amax) (ties to the even code).
func refQuantize(dt DType, row []float32) []float32 {
	out := make([]float32, len(row))
	switch dt {
	case FP32:
		copy(out, row)
	case BF16:
		for i, v := range row {
			out[i] = refBF16(v)
		}
	case FP8E4M3:
		amax := 0.0
		for _, v := range row {
			amax = math.Max(amax, math.Abs(float64(v)))
		}
		if amax == 0 {
			return out
		}
		scale, inv := float32(amax)/448, 448/float32(amax)
		for i, v := range row {
			out[i] = refFP8(v*inv) * scale
		}
	}
	return out
}

func refBF16(v float32) float32 {
	if v != v {
		return v
	}
	b := math.Float32bits(v)
	lo := math.Float32frombits(b &^ 0xFFFF)
	hi := math.Float32frombits((b &^ 0xFFFF) + 0x10000)
	dl := math.Abs(float64(v) - float64(lo))
	dh := math.Abs(float64(hi) - float64(v))
	if dl < dh || dl == dh && (b>>16)&1 == 0 {
		return lo
	}
	return hi
}

// refFP8 is the value of the nearest finite E4M3 code to v (saturating),
// decoded from the code's fields by the format's definition.
func refFP8(v float32) float32 {
	decode := func(code int) float64 {
		e, m := (code>>3)&15, code&7
		var x float64
		if e == 0 {
			x = float64(m) * math.Pow(2, -9)
		} else {
			x = (1 + float64(m)/8) * math.Pow(2, float64(e-7))
		}
		if code&0x80 != 0 {
			return -x
		}
		return x
	}
	best, bestD := 0, math.Inf(1)
	for code := range 256 {
		if code&0x7F == 0x7F {
			continue // NaN
		}
		dd := math.Abs(decode(code) - float64(v))
		if dd < bestD || dd == bestD && code&1 == 0 && best&1 == 1 {
			best, bestD = code, dd
		}
	}
	return float32(decode(best))
}

// The fast quantizers agree bit for bit with the reference ones on random
// rows over many magnitudes, subnormal-range values, exact ties and the
// saturation edge; non-finite rows come back NaN.
func TestQuantizersMatchReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var rows [][]float32
	for range 300 {
		d := 1 + r.IntN(11)
		row := make([]float32, d)
		for i := range row {
			row[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(12)-6)))
		}
		rows = append(rows, row)
	}
	// Ties and edges after scaling by 448/amax (amax = 448: scale 1).
	edge := []float32{448, 1.0625, 1.1875, 0.0009765625 * 3, 0.001953125 * 1.5, 240, 232, 17, -9, 0.013671875, 1e-9}
	rows = append(rows, edge)
	for _, row := range rows {
		for _, dt := range []DType{FP32, BF16, FP8E4M3} {
			w := make([]float32, dt.Words(len(row)))
			got := make([]float32, len(row))
			packRow(dt, w, row)
			unpackRow(dt, got, w)
			want := refQuantize(dt, row)
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) && !(got[i] == 0 && want[i] == 0) {
					t.Fatalf("%s row %v: value %d (%g) quantized to %g, reference %g", dt, row, i, row[i], got[i], want[i])
				}
			}
		}
	}
	for code := range 256 {
		v := fp8Values[code]
		if code&0x7F == 0x7F {
			if v == v {
				t.Fatalf("code %#x decodes to %g, want NaN", code, v)
			}
			continue
		}
		if got := toFP8(v); got != uint8(code) && !(v == 0 && got&0x7F == 0) {
			t.Fatalf("code %#x (%g) re-encodes to %#x", code, v, got)
		}
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		row := []float32{1, bad, 2}
		for _, dt := range []DType{BF16, FP8E4M3} {
			w := make([]float32, dt.Words(3))
			got := make([]float32, 3)
			packRow(dt, w, row)
			unpackRow(dt, got, w)
			if dt == FP8E4M3 && !(got[0] != got[0]) {
				t.Errorf("%s: row with %g dequantizes to %v, want NaN", dt, bad, got)
			}
			if dt == BF16 && (got[0] != 1 || !(got[1] != got[1] || math.IsInf(float64(got[1]), 1))) {
				t.Errorf("%s: row with %g gives %v", dt, bad, got)
			}
		}
	}
}

func TestParseDType(t *testing.T) {
	for _, dt := range []DType{FP32, BF16, FP8E4M3} {
		if got, err := ParseDType(dt.String()); err != nil || got != dt {
			t.Errorf("%s: got %v, %v", dt, got, err)
		}
	}
	if _, err := ParseDType("fp16"); err == nil {
		t.Error("fp16 accepted")
	}
	for _, o := range []ExchangeOptions{{Chunks: -2}, {Chunks: MaxChunks + 1}, {DType: 9}} {
		if err := o.validate(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// BenchmarkEPLayerShaped times one EP layer step (forward and backward) of
// 4 in-process members over links shaped to 125 MB/s (1 Gbit/s) per
// direction, with experts small enough (H = 16) that the links dominate:
// the exchange-bound end of the options' effect (docs/algorithms/ep-dispatch.md).
// dcca4 keeps the expert parameters of the standard layout at R = D/4.
func BenchmarkEPLayerShaped(b *testing.B) {
	const ep, n, bw = 4, 2048, 125e6
	dm := Dims{D: 256, H: 16, E: 8, K: 2}
	for _, c := range []struct {
		name string
		opt  ExchangeOptions
		dcca bool
	}{
		{"fp32", ExchangeOptions{}, false},
		{"fp32+c4", ExchangeOptions{Chunks: 4}, false},
		{"bf16", ExchangeOptions{DType: BF16}, false},
		{"fp8", ExchangeOptions{DType: FP8E4M3}, false},
		{"fp32+dcca4", ExchangeOptions{}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			cs := newEPCase(1, ep, n, dm)
			if c.dcca {
				r := dm.D / 4
				d2 := dm
				d2.H = (dm.E*dm.D*dm.H - dm.D*r) / (dm.E * r)
				cs = newDCCACase(1, ep, n, r, d2)
			}
			b.ResetTimer()
			cs.run(b, Spec{}, c.opt, b.N, bw)
		})
	}
}
