package runplot

import (
	"bytes"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/moe"
	"github.com/moetrain/moetrain/train"
)

// syntheticRun writes a run directory of syntheticSummary(steps).
func syntheticRun(t testing.TB, steps int) string {
	t.Helper()
	dir := t.TempDir()
	if err := cluster.WriteSummary(dir, syntheticSummary(steps)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// syntheticSummary is the summary of a launch of steps steps shaped like
// one of the reference model: a curve point per step, a validation every
// 100 steps, the expert load of 4 layers × 8 experts every 10 steps.
func syntheticSummary(steps int) cluster.Summary {
	rng := rand.New(rand.NewPCG(1, 2))
	s := cluster.Summary{Workers: 2, Config: train.DefaultJobConfig()}
	s.JobID, s.Phase = "synthetic", cluster.PhaseSucceeded
	s.Started = time.Unix(0, 0)
	s.Ended = s.Started.Add(time.Duration(steps) * time.Second)
	for step := 1; step <= steps; step++ {
		loss := 2 + 3.5*math.Exp(-float64(step)/80) + 0.05*rng.NormFloat64()
		s.Curve = append(s.Curve, cluster.CurvePoint{Step: step, Loss: loss, TokensPerSec: 5000 + 200*rng.NormFloat64(), Elapsed: float64(step)})
		if step%100 == 0 {
			v := loss - 0.1
			s.Curve = append(s.Curve, cluster.CurvePoint{Step: step, Loss: loss, ValLoss: &v, Elapsed: float64(step)})
		}
		if step == 1 || step%10 == 0 {
			layers := make([][]int, 4)
			for l := range layers {
				layers[l] = make([]int, 8)
				for e := range layers[l] {
					layers[l][e] = 4096 * 2 / 8 * (50 + rng.IntN(100)) / 100
				}
			}
			s.ExpertLoad = append(s.ExpertLoad, cluster.ExpertLoadPoint{Step: step, Layers: layers})
		}
	}
	return s
}

func checkPNG(t *testing.T, f string) {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	if cfg.Width < 500 || cfg.Height < 300 {
		t.Errorf("%s: %d×%d pixels, want at least 500×300", f, cfg.Width, cfg.Height)
	}
}

// TestWriteDir1000Steps: a 1,000-step run directory gives the four PNGs
// (their time is BenchmarkWriteDir1000Steps').
func TestWriteDir1000Steps(t *testing.T) {
	dir := syntheticRun(t, 1000)
	out := filepath.Join(dir, "plots")
	files, err := WriteDir(dir, out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{LossFile, ThroughputFile, ExpertLoadFile, ExpertBalanceFile}
	if len(files) != len(want) {
		t.Fatalf("wrote %v, want %v", files, want)
	}
	for i, f := range files {
		if filepath.Base(f) != want[i] {
			t.Errorf("file %d: %s, want %s", i, f, want[i])
		}
		checkPNG(t, f)
	}
}

// BenchmarkWriteDir1000Steps times the plots of a 1,000-step run directory
// (what `coordinator plot` and the end of a launch do).
func BenchmarkWriteDir1000Steps(b *testing.B) {
	dir := syntheticRun(b, 1000)
	out := filepath.Join(dir, "plots")
	for b.Loop() {
		if _, err := WriteDir(dir, out); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFromSummarySplitsCurve(t *testing.T) {
	v := 3.0
	r := FromSummary(cluster.Summary{Result: cluster.Result{JobID: "j", Curve: []cluster.CurvePoint{
		{Step: 1, Loss: 5, TokensPerSec: 100}, {Step: 2, Loss: 4, TokensPerSec: 200}, {Step: 2, Loss: 4, ValLoss: &v},
	}}})
	if len(r.Loss) != 2 || len(r.Throughput) != 2 || len(r.Val) != 1 || r.Val[0] != (Point{2, 3}) {
		t.Fatalf("loss %v throughput %v val %v", r.Loss, r.Throughput, r.Val)
	}
}

// TestExpertLoadFromWorkerLog writes step records with train.LogRouterLoad
// (what every runner logs) and checks that a run directory whose summary
// lacks the expert load takes it from the worker log, a torn last line
// and other records notwithstanding.
func TestExpertLoadFromWorkerLog(t *testing.T) {
	dir := t.TempDir()
	s := syntheticSummary(30)
	s.ExpertLoad = nil
	if err := cluster.WriteSummary(dir, s); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	lg := zerolog.New(&log)
	lg.Info().Str("mode", "window").Msg("training")
	for _, step := range []int{1, 10, 20} {
		var stats []moe.LoadStats
		for l := 0; l < 2; l++ {
			st, err := moe.NewLoadStats([]int{step, 2 * step, 3, 4 + l}, 20, 40, 0, 1)
			if err != nil {
				t.Fatal(err)
			}
			stats = append(stats, st)
		}
		lg.Info().Int("step", step).Float64("loss", 1).Func(func(e *zerolog.Event) { train.LogRouterLoad(e, stats) }).Msg("step")
	}
	log.WriteString(`{"level":"info","step":30,"expert_lo`) // torn
	if err := os.WriteFile(filepath.Join(dir, "worker-0.log"), log.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.ExpertLoad) != 3 || r.ExpertLoad[2].Step != 20 || len(r.ExpertLoad[2].Layers) != 2 {
		t.Fatalf("expert load %+v", r.ExpertLoad)
	}
	if got := r.ExpertLoad[2].Layers[1]; got[0] != 20 || got[1] != 40 || got[3] != 5 {
		t.Fatalf("layer 1 at step 20: %v, want [20 40 3 5]", got)
	}
	files, err := Write(r, dir)
	if err != nil || len(files) != 4 {
		t.Fatalf("files %v, err %v", files, err)
	}
}

func TestWriteEmptyRun(t *testing.T) {
	if _, err := Write(&Run{Name: "x"}, t.TempDir()); err != ErrNoCurve {
		t.Fatalf("err %v, want ErrNoCurve", err)
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Fatal("Load of a directory without summary.json succeeded")
	}
}
