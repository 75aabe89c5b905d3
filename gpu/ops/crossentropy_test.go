package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/tensor"
)

// ewCEExtra are full-vocabulary rows of 32768 (vector path, 512 threads)
// and 32771 (scalar path), tested after the row shapes.
var ewCEExtra = [][2]int{{5, 32768}, {3, 32771}, {2, 4096}}

func TestCrossEntropy(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(17, 18))
	for _, c := range ewRowCases(true, ewCEExtra...) {
		n, v, off := c.n, c.d, c.off
		logits := randn(rng, n*v, 3)
		tg := ewIDs(rng, n, v, true)
		const scale = 0.37
		wantL, wantD := make([]float32, n), make([]float32, n*v)
		wantSum, wantCount := tensor.CrossEntropy(wantL, wantD, logits, tg, n, v, scale)

		dl, dt := uploadAt(t, o, logits, off), upload(t, o, tg)
		var firstL, firstD []float32
		var firstSum []float64
		for run := 0; run < 2; run++ {
			losses, dd, sum := poisoned(t, o, n), poisonedAt(t, o, n*v, off), ewF64(t, o, 2)
			if err := o.CrossEntropy(losses, dd, dl, dt, n, v, scale, sum); err != nil {
				t.Fatal(err)
			}
			gotL, gotD, gotSum := download[float32](t, o, losses, n), download[float32](t, o, dd, n*v), download[float64](t, o, sum, 2)
			if run == 1 {
				if testkit.FirstBitDiff(gotL, firstL) >= 0 || testkit.FirstBitDiff(gotD, firstD) >= 0 || math.Float64bits(gotSum[0]) != math.Float64bits(firstSum[0]) {
					t.Fatalf("n=%d v=%d off=%d: second run differs", n, v, off)
				}
				continue
			}
			firstL, firstD, firstSum = gotL, gotD, gotSum
			if e := relErr(gotL, wantL); e > 1e-5 {
				t.Fatalf("n=%d v=%d off=%d losses rel err %g", n, v, off, e)
			}
			if e := relErr(gotD, wantD); e > 1e-4 {
				t.Fatalf("n=%d v=%d off=%d dlogits rel err %g", n, v, off, e)
			}
			if e := ewRel64(gotSum[0], wantSum); e > 1e-5 || gotSum[1] != float64(wantCount) {
				t.Fatalf("n=%d v=%d off=%d sum %v count %v, want %v %d", n, v, off, gotSum[0], gotSum[1], wantSum, wantCount)
			}
		}

		// Losses only: no dlogits, no sum.
		losses := poisoned(t, o, n)
		if err := o.CrossEntropy(losses, 0, dl, dt, n, v, scale, 0); err != nil {
			t.Fatal(err)
		}
		if i := testkit.FirstBitDiff(download[float32](t, o, losses, n), firstL); i >= 0 {
			t.Fatalf("n=%d v=%d off=%d: losses without dlogits differ at row %d", n, v, off, i)
		}

		// In place: dlogits overwrites logits.
		inPlace := uploadAt(t, o, logits, off)
		if err := o.CrossEntropy(losses, inPlace, inPlace, dt, n, v, scale, 0); err != nil {
			t.Fatal(err)
		}
		if i := testkit.FirstBitDiff(download[float32](t, o, inPlace, n*v), firstD); i >= 0 {
			t.Fatalf("n=%d v=%d off=%d: in-place dlogits differ at %d", n, v, off, i)
		}
	}
}

func TestCrossEntropyBF16(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(19, 20))
	for _, c := range ewRowCases(false, ewCEExtra...) {
		n, v, off := c.n, c.d, c.off
		logits := bf16Round(randn(rng, n*v, 3))
		tg := ewIDs(rng, n, v, true)
		const scale = 1.0 / 1024
		wantL, wantD := make([]float32, n), make([]float32, n*v)
		wantSum, wantCount := tensor.CrossEntropy(wantL, wantD, logits, tg, n, v, scale)
		dl, dt := uploadAt(t, o, bf16Encode(logits), off), upload(t, o, tg)
		losses, dd, sum := poisoned(t, o, n), poisonedBF16At(t, o, n*v, off), ewF64(t, o, 2)
		if err := o.CrossEntropyBF16(losses, dd, dl, dt, n, v, scale, sum); err != nil {
			t.Fatal(err)
		}
		if e := relErr(download[float32](t, o, losses, n), wantL); e > 1e-5 {
			t.Fatalf("n=%d v=%d off=%d losses rel err %g", n, v, off, e)
		}
		if e := ewRelErrBF16(t, o, dd, wantD); e > ewBF16Tol {
			t.Fatalf("n=%d v=%d off=%d dlogits rel err %g", n, v, off, e)
		}
		gotSum := download[float64](t, o, sum, 2)
		if e := ewRel64(gotSum[0], wantSum); e > 1e-5 || gotSum[1] != float64(wantCount) {
			t.Fatalf("n=%d v=%d off=%d sum %v count %v, want %v %d", n, v, off, gotSum[0], gotSum[1], wantSum, wantCount)
		}
	}
}

// TestCrossEntropyEdges: a target >= v gives a NaN loss and dlogits row
// (and a NaN sum), an ignored row zeroes its dlogits, and n = 0 writes a
// zero sum.
func TestCrossEntropyEdges(t *testing.T) {
	o := testOps(t)
	rng := rand.New(rand.NewPCG(21, 22))
	const n, v = 3, 37
	logits := randn(rng, n*v, 1)
	tg := []int32{5, v, -7}
	losses, dd, sum := poisoned(t, o, n), poisoned(t, o, n*v), ewF64(t, o, 2)
	if err := o.CrossEntropy(losses, dd, upload(t, o, logits), upload(t, o, tg), n, v, 1, sum); err != nil {
		t.Fatal(err)
	}
	gotL, gotD, gotSum := download[float32](t, o, losses, n), download[float32](t, o, dd, n*v), download[float64](t, o, sum, 2)
	if math.IsNaN(float64(gotL[0])) || !math.IsNaN(float64(gotL[1])) || gotL[2] != 0 {
		t.Fatalf("losses %v: want finite, NaN, 0", gotL)
	}
	for j := 0; j < v; j++ {
		if !math.IsNaN(float64(gotD[v+j])) || gotD[2*v+j] != 0 || math.IsNaN(float64(gotD[j])) {
			t.Fatalf("dlogits column %d: %g %g %g", j, gotD[j], gotD[v+j], gotD[2*v+j])
		}
	}
	if !math.IsNaN(gotSum[0]) || gotSum[1] != 2 {
		t.Fatalf("sum %v, want NaN and count 2", gotSum)
	}
	if err := o.CrossEntropy(0, 0, 0, 0, 0, v, 1, sum); err != nil {
		t.Fatal(err)
	}
	if got := download[float64](t, o, sum, 2); got[0] != 0 || got[1] != 0 {
		t.Fatalf("empty sum %v", got)
	}
}

func TestCrossEntropyBadSizes(t *testing.T) {
	o := &Ops{}
	p := cuda.DevicePtr(1 << 20)
	wantErrors(t, map[string]error{
		"v=0":           o.CrossEntropy(p, p, p, p, 3, 0, 1, p),
		"n<0":           o.CrossEntropy(p, p, p, p, -1, 5, 1, p),
		"null logits":   o.CrossEntropy(p, p, 0, p, 3, 5, 1, p),
		"null targets":  o.CrossEntropy(p, p, p, 0, 3, 5, 1, p),
		"sum align":     o.CrossEntropy(p, p, p, p, 3, 5, 1, p+4),
		"bf16 null out": o.CrossEntropyBF16(0, p, p, p, 3, 5, 1, p),
	})
}
