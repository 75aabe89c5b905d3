package stepmodel

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
)

// testProfile is a hand-made profile with round numbers, so expected costs
// can be computed by hand.
func testProfile() *Profile {
	return &Profile{
		Device:          "test",
		Gemm:            []GemmPoint{{M: 1, N: 1, K: 1, FLOPs: 1e6, GFLOPS: 10}, {M: 1, N: 1, K: 1, FLOPs: 1e9, GFLOPS: 100}},
		AttentionGFLOPS: 50, ElementwiseGBps: 10, OptimizerNs: 2, ComputeScale: 1,
		Intra: Link{Alpha: 1e-5, Beta: 1e-9, PerPeer: true}, Inter: Link{Alpha: 1e-4, Beta: 1e-8},
		Cores: 4, RankMemory: 1 << 30,
	}
}

func testJob(t *testing.T) train.JobConfig {
	t.Helper()
	job, err := train.LoadJobConfig("testdata/validate.toml")
	if err != nil {
		t.Fatal(err)
	}
	return job
}

func TestProfileRoundTrip(t *testing.T) {
	p := testProfile()
	path := filepath.Join(t.TempDir(), "p.json")
	if err := p.Save(path); err != nil {
		t.Fatal(err)
	}
	q, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if q.Gemm[1].GFLOPS != 100 || q.Intra != p.Intra || q.OptimizerNs != 2 || q.Cores != 4 {
		t.Fatalf("round trip changed the profile: %+v", q)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("save left %d files, want only the profile", len(ents))
	}
}

func TestProfileBadInput(t *testing.T) {
	for name, mutate := range map[string]func(*Profile){
		"no gemm":        func(p *Profile) { p.Gemm = nil },
		"zero gflops":    func(p *Profile) { p.Gemm[0].GFLOPS = 0 },
		"nan attention":  func(p *Profile) { p.AttentionGFLOPS = math.NaN() },
		"negative alpha": func(p *Profile) { p.Intra.Alpha = -1 },
		"zero cores":     func(p *Profile) { p.Cores = 0 },
		"efficiency > 1": func(p *Profile) { p.ParallelEfficiency = 2 },
		"no optimizer":   func(p *Profile) { p.OptimizerNs = 0 },
	} {
		p := testProfile()
		mutate(p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
		if err := p.Save(filepath.Join(t.TempDir(), "p.json")); err == nil {
			t.Errorf("%s: Save accepted it", name)
		}
	}
	for _, in := range []string{"", "{", `{"gemm": 3}`, `{"unknown_key": 1}`, `{"gemm": []}`} {
		if _, err := Read(strings.NewReader(in)); err == nil {
			t.Errorf("Read(%q) accepted it", in)
		}
	}
}

func FuzzRead(f *testing.F) {
	var b bytes.Buffer
	p := testProfile()
	path := filepath.Join(f.TempDir(), "p.json")
	if err := p.Save(path); err != nil {
		f.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	b.Write(raw)
	f.Add(b.Bytes())
	f.Add([]byte(`{"gemm":[{"flops":1e300,"gflops":1e-300}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		q, err := Read(bytes.NewReader(in))
		if err != nil {
			return
		}
		if err := q.Validate(); err != nil {
			t.Fatalf("Read returned a profile that does not validate: %v", err)
		}
		for _, fl := range []float64{0, 1, 1e6, 1e20} {
			if g := q.GemmGFLOPS(fl); !(g > 0) || math.IsInf(g, 0) {
				t.Fatalf("GemmGFLOPS(%g) = %g", fl, g)
			}
		}
	})
}

func TestGemmInterpolation(t *testing.T) {
	p := testProfile()
	for _, c := range []struct{ flops, want float64 }{
		{1, 10}, {1e6, 10}, {1e9, 100}, {1e12, 100},
		{math.Sqrt(1e6 * 1e9), 55}, // halfway in log FLOPs
	} {
		if got := p.GemmGFLOPS(c.flops); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("GemmGFLOPS(%g) = %g, want %g", c.flops, got, c.want)
		}
	}
}

// ringAllReduce is the reference cost of a ring all-reduce, step by step:
// reduce-scatter then all-gather, each p−1 messages of bytes/p in sequence.
func ringAllReduce(l Link, p int, bytes, copyBeta float64) float64 {
	t := 0.0
	for phase := 0; phase < 2; phase++ {
		for s := 0; s < p-1; s++ {
			t += l.Alpha + bytes/float64(p)*(l.Beta+copyBeta)
		}
	}
	return t
}

// A DP-only mesh without overlap exposes exactly the ring all-reduce of
// every gradient (plus the small statistics all-reduces, counted apart).
func TestPredictDPMatchesRingReference(t *testing.T) {
	job := testJob(t)
	job.DP.Overlap = false
	p := testProfile()
	for _, dp := range []int{2, 4} {
		m := parallel.Mesh{DP: dp, SP: 1, TP: 1, EP: 1}
		b, err := Predict(job, m, Single(dp), p)
		if err != nil {
			t.Fatal(err)
		}
		// Dense and expert gradients reduce separately (at ep = 1 over the
		// same ranks).
		dense, expert := paramCount(job)
		want := ringAllReduce(p.Intra, dp, 4*dense, 0) + ringAllReduce(p.Intra, dp, 4*expert, 0)
		if math.Abs(b.DP-want) > 1e-12*want+1e-15 {
			t.Errorf("dp=%d: exposed DP %g s, ring reference %g s", dp, b.DP, want)
		}
		if b.TP != 0 || b.SP != 0 || b.EP != 0 {
			t.Errorf("dp=%d: communication on unused axes: %+v", dp, b)
		}
		if got, want := b.TokensPerSec, float64(dp*job.MaxBatchTokens())/b.Step; math.Abs(got-want) > 1e-9*want {
			t.Errorf("tokens/s %g, want dp·tokens/step %g", got, want)
		}
	}
}

// paramCount counts the whole model's dense and expert parameters from its
// shapes (embedding, positions, per layer two norms, QKV, output, router and
// the experts' two matrices, final norm, head).
func paramCount(job train.JobConfig) (dense, expert float64) {
	c := job.Model
	d, e, h, l := float64(c.DModel), float64(c.Experts), float64(c.ExpertHidden), float64(c.Layers)
	expert = l * 2 * e * h * d
	dense = float64(c.Vocab)*d + float64(c.SeqLen)*d + l*(2*d+4*d*d+e*d) + d + float64(c.Vocab)*d
	return dense, expert
}

func TestPredictProperties(t *testing.T) {
	job := testJob(t)
	p := testProfile()
	one, err := Predict(job, parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}, Single(1), p)
	if err != nil {
		t.Fatal(err)
	}
	if one.Exposed() != 0 {
		t.Errorf("one rank has exposed communication %+v", one)
	}
	// A slower link can only slow a communicating mesh.
	slow := *p
	slow.Intra.Beta *= 100
	for _, m := range []parallel.Mesh{{DP: 1, SP: 1, TP: 2, EP: 1}, {DP: 2, SP: 1, TP: 1, EP: 2}, {DP: 1, SP: 2, TP: 1, EP: 1}, {DP: 2, SP: 1, TP: 1, EP: 1}} {
		a, err := Predict(job, m, Single(m.World()), p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Predict(job, m, Single(m.World()), &slow)
		if err != nil {
			t.Fatal(err)
		}
		if !(b.Step > a.Step) {
			t.Errorf("%s: 100× slower links, step %g → %g", MeshString(m), a.Step, b.Step)
		}
		// Across two hosts, the groups that span them use the slower inter links.
		c, err := Predict(job, m, Topology{Hosts: 2, RanksPerHost: 1}, p)
		if err != nil {
			t.Fatal(err)
		}
		if !(c.Exposed() > a.Exposed()) {
			t.Errorf("%s: two hosts should expose more communication: %g vs %g", MeshString(m), c.Exposed(), a.Exposed())
		}
	}
	// ZeRO-1 lowers the memory per rank of a DP mesh.
	m := parallel.Mesh{DP: 4, SP: 1, TP: 1, EP: 1}
	plain, _ := Predict(job, m, Single(4), p)
	job.DP.Zero1 = true
	z, _ := Predict(job, m, Single(4), p)
	if !(z.Memory < plain.Memory) {
		t.Errorf("ZeRO-1 memory %g, without %g", z.Memory, plain.Memory)
	}
	// Memory limit.
	small := *p
	small.RankMemory = 1
	if b, _ := Predict(job, m, Single(4), &small); b.Fits {
		t.Errorf("a mesh fits in 1 byte per rank")
	}
	// Oversubscription: 4 ranks on 2 cores compute twice as long as on 4.
	two := *p
	two.Cores = 2
	a, _ := Predict(job, m, Single(4), p)
	b, _ := Predict(job, m, Single(4), &two)
	if r := b.Compute / a.Compute; math.Abs(r-2) > 1e-9 {
		t.Errorf("4 ranks on 2 cores: compute ratio %g, want 2", r)
	}
	if _, err := Predict(job, m, Topology{Hosts: 3, RanksPerHost: 1}, p); err == nil {
		t.Error("a topology of 3 ranks accepted for a mesh of 4")
	}
}

// Enumerate returns exactly the meshes the planner (MakePlan) accepts and
// the job validates with, found by brute force over every degree.
func TestEnumerateMatchesBruteForce(t *testing.T) {
	job := testJob(t)
	for _, n := range []int{1, 2, 4, 6, 8} {
		got, err := Enumerate(job, n)
		if err != nil {
			t.Fatal(err)
		}
		set := map[parallel.Mesh]bool{}
		for _, m := range got {
			set[m] = true
		}
		var want []parallel.Mesh
		ws := make([]cluster.WorkerInfo, n)
		for i := range ws {
			ws[i] = cluster.WorkerInfo{ID: "w", Host: "h", DataAddr: "x"}
		}
		for dp := 1; dp <= n; dp++ {
			for tp := 1; tp <= n; tp++ {
				for sp := 1; sp <= n; sp++ {
					for ep := 1; ep <= n; ep++ {
						if dp*tp*sp != n {
							continue
						}
						j := job
						j.Mesh.DP, j.Mesh.TP, j.Mesh.SP, j.Mesh.EP = dp, tp, sp, ep
						if _, err := cluster.MakePlan(cluster.PlanRequestFor(j), ws); err != nil || j.Validate() != nil {
							continue
						}
						want = append(want, parallel.Mesh{DP: dp, SP: sp, TP: tp, EP: ep})
					}
				}
			}
		}
		if len(want) != len(got) {
			t.Errorf("%d workers: Enumerate found %d meshes, brute force %d", n, len(got), len(want))
		}
		for _, m := range want {
			if !set[m] {
				t.Errorf("%d workers: Enumerate missed %s", n, MeshString(m))
			}
		}
	}
	if _, err := Enumerate(job, 0); err == nil {
		t.Error("0 workers accepted")
	}
}

func TestParseCases(t *testing.T) {
	sh := Shape{Bandwidth: 1e8, Latency: time.Millisecond}
	cs, err := ParseCases(" dp=2 ; tp=2,dp=2/shaped;ep=2,dp=2", sh)
	if err != nil {
		t.Fatal(err)
	}
	want := []Case{{Mesh: parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 1}}, {Mesh: parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 1}, Shape: sh}, {Mesh: parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 2}}}
	if len(cs) != len(want) {
		t.Fatalf("got %+v", cs)
	}
	for i := range want {
		if cs[i] != want[i] {
			t.Errorf("case %d: %+v, want %+v", i, cs[i], want[i])
		}
	}
	for _, bad := range []string{"", ";", "dp=0", "xp=2", "dp=2/shaped,", "ep=3", "dp=two", "dp=99999999"} {
		if _, err := ParseCases(bad, sh); err == nil {
			t.Errorf("ParseCases(%q) accepted it", bad)
		}
	}
	if _, err := ParseCases("dp=2/shaped", Shape{}); err == nil {
		t.Error("a shaped case without a shape accepted")
	}
}

func FuzzParseCases(f *testing.F) {
	f.Add("dp=2;tp=2/shaped")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseCases(s, Shape{Latency: time.Microsecond})
		if err != nil {
			return
		}
		for _, c := range cs {
			if c.Mesh.Validate() != nil {
				t.Fatalf("invalid mesh %+v returned", c.Mesh)
			}
		}
	})
}

func TestWriteJobRoundTrip(t *testing.T) {
	job := testJob(t)
	path := filepath.Join(t.TempDir(), "job.toml")
	m := parallel.Mesh{DP: 2, SP: 1, TP: 2, EP: 2}
	if err := WriteJob(path, job, m); err != nil {
		t.Fatal(err)
	}
	back, err := train.LoadJobConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Mesh.DP != 2 || back.Mesh.TP != 2 || back.Mesh.EP != 2 || back.Mesh.SP != 1 || back.Model != job.Model {
		t.Fatalf("written job loads back as mesh %+v model %+v", back.Mesh, back.Model)
	}
}

// Measure runs real mesh steps; a shaped link's latency bounds each step
// from below (every step has at least one collective on the world).
func TestMeasureShapedLatency(t *testing.T) {
	job := testJob(t)
	job.Model.Layers, job.Data.BatchSize = 1, 1
	m := parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lat := 20 * time.Millisecond
	got, err := Measure(ctx, job, m, Shape{Latency: lat}, 2, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Steps) != 2 {
		t.Fatalf("%d step times, want 2", len(got.Steps))
	}
	if got.Min < lat.Seconds() {
		t.Errorf("shaped step %.1f ms is shorter than one link latency %v", got.Min*1e3, lat)
	}
	if _, err := Measure(ctx, job, parallel.Mesh{DP: 2, SP: 1, TP: 3, EP: 1}, Shape{}, 1, 0, 2); err == nil {
		t.Error("a mesh whose tp does not divide the heads was measured")
	}
}

// Calibrate produces a profile that validates, with a point per GEMM shape
// and available cores within the host's, and a serial prediction with no
// communication.
func TestCalibrateSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every micro-benchmark and a few training steps")
	}
	job := testJob(t)
	job.Model.Layers, job.Data.BatchSize = 1, 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := Calibrate(ctx, CalibrateOptions{Cores: 2, Job: job, Steps: 2, Reps: 1,
		Inter: Link{Alpha: 1e-5, Beta: 1e-9}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	one := *p
	one.Cores, one.AvailableCores = 1, 0
	b, err := Predict(job, parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}, Single(1), &one)
	if err != nil {
		t.Fatal(err)
	}
	if b.Step <= 0 || b.Exposed() != 0 {
		t.Fatalf("serial prediction %+v", b)
	}
	if p.AvailableCores <= 0 || p.AvailableCores > 2 || len(p.Gemm) != len(gemmShapes) {
		t.Fatalf("profile %+v", p)
	}
}
