package moe

import (
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
)

// peerExchange is an expert-parallel group of two in which this rank is
// member 0 and the test plays member 1: the first exchange of a forward
// (the row counts) brings counts from it, every later one zero rows. Like
// model.Comms it keeps the first failure (Fail, Err) and then returns at
// once without touching buffers.
type peerExchange struct {
	counts  []float32 // member 1's counts for this rank's experts
	uniform bool
	calls   int
	err     error
	asked   []int // elements this rank expected from member 1, per exchange
}

func (x *peerExchange) EP() (int, int)      { return 2, 0 }
func (x *peerExchange) TP() (int, int)      { return 1, 0 }
func (x *peerExchange) SumTP([]float32)     {}
func (x *peerExchange) UniformTokens() bool { return x.uniform }
func (x *peerExchange) Err() error          { return x.err }
func (x *peerExchange) Fail(err error) {
	if x.err == nil {
		x.err = err
	}
}

func (x *peerExchange) AllToAllV(send []float32, sc []int, recv []float32, rc []int) {
	if x.err != nil {
		return
	}
	x.calls++
	x.asked = append(x.asked, rc[1])
	copy(recv[:rc[0]], send[:sc[0]])
	if x.calls == 1 {
		copy(recv[rc[0]:], x.counts)
	} else {
		clear(recv[rc[0] : rc[0]+rc[1]])
	}
}

func (x *peerExchange) AllToAllVStart(send []float32, sc []int, recv []float32, rc []int) func() {
	x.AllToAllV(send, sc, recv, rc)
	return func() {}
}

// bare is x without Fail and Err: an Exchange that keeps no error.
type bare struct{ x *peerExchange }

func (b bare) EP() (int, int)      { return b.x.EP() }
func (b bare) TP() (int, int)      { return b.x.TP() }
func (b bare) SumTP(v []float32)   { b.x.SumTP(v) }
func (b bare) UniformTokens() bool { return b.x.UniformTokens() }
func (b bare) AllToAllV(send []float32, sc []int, recv []float32, rc []int) {
	b.x.AllToAllV(send, sc, recv, rc)
}
func (b bare) AllToAllVStart(send []float32, sc []int, recv []float32, rc []int) func() {
	return b.x.AllToAllVStart(send, sc, recv, rc)
}

// Row counts from a peer that are not finite non-negative integers, or that
// sum to more rows than it can send (or, with a static split, to other than
// it must), are a *CountError naming the member, reported through Fail: no
// panic, and no buffer sized from them.
func TestDispatchBadCounts(t *testing.T) {
	const n, k = 9, 2
	cases := []struct {
		name    string
		counts  []float32
		uniform bool
		static  bool
		want    string // "" = accepted
	}{
		{"valid", []float32{3, 2}, false, false, ""},
		{"valid uniform", []float32{9, 9}, true, false, ""},
		{"NaN", []float32{float32(math.NaN()), 1}, false, false, "for expert 0: not a number"},
		{"negative", []float32{2, -1}, false, false, "for expert 1: negative"},
		{"fraction", []float32{1.5, 0}, false, false, "not an integer"},
		{"infinite", []float32{float32(math.Inf(1)), 0}, false, false, "infinite"},
		{"beyond float32", []float32{1 << 30, 0}, false, false, "more than 16777216"},
		{"more than it routes", []float32{1 << 24, 0}, true, false, "more than the 18 rows a member can send here"},
		{"static split", []float32{5, 5}, true, true, "a static split fixes 9 rows per member"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The chunked path (pipeline.go) checks counts alike; with a
			// static split it leaves the mismatch to the row exchange's sizes.
			for _, chunks := range []int{1, 2} {
				if chunks > 1 && tc.static {
					continue
				}
				for _, failer := range []bool{true, false} {
					f := newLayerFixture(t, Spec{Kind: "moge", Groups: 2, Opts: Options{Exchange: ExchangeOptions{Chunks: chunks}}}, k, false, 3)
					if f.n != n || f.dm.E != 4 {
						t.Fatalf("fixture has n=%d E=%d, the cases assume %d and 4", f.n, f.dm.E, n)
					}
					x := &peerExchange{counts: tc.counts, uniform: tc.uniform}
					f.st.Ex, f.st.StaticSplit = x, tc.static
					if !failer {
						f.st.Ex = bare{x}
					}
					el := f.dm.E / 2
					w := Weights{Router: f.w.Router, W1: f.w.W1[:el*f.dm.H*f.dm.D], W2: f.w.W2[:el*f.dm.D*f.dm.H]}
					before := allocatedBytes()
					Forward(f.out, f.x, w, f.dm, f.router, f.mask, &f.st)
					if d := allocatedBytes() - before; d > 8<<20 {
						t.Fatalf("forward allocated %d bytes", d)
					}
					for _, a := range x.asked {
						if a > n*k*f.dm.D {
							t.Fatalf("expected %d elements from member 1, more than all its %d slots", a, n*k)
						}
					}
					if !failer {
						continue // no panic is all there is to see
					}
					if tc.want == "" {
						if x.err != nil {
							t.Fatalf("valid counts refused: %v", x.err)
						}
						continue
					}
					var ce *CountError
					if !errors.As(x.err, &ce) || ce.Member != 1 || !strings.Contains(x.err.Error(), "member 1") || !strings.Contains(x.err.Error(), tc.want) {
						t.Fatalf("chunks %d: want a *CountError naming member 1 with %q, got %v", chunks, tc.want, x.err)
					}
				}
			}
		})
	}
}

func allocatedBytes() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}
