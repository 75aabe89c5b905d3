package train

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
)

// smallJob is big enough that the kernels split work across threads, small
// enough for a test.
func smallJob() JobConfig {
	cfg := DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Heads, cfg.Model.Layers = 128, 4, 2
	cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 64, 4, 192
	cfg.Model.Vocab = 256
	cfg.Data.SeqLen, cfg.Data.BatchSize = 64, 6
	cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches, cfg.Train.LogEvery = 4, 2, 2, 1
	cfg.Optim.ClipNorm = 1
	return cfg
}

func smallCorpus() *sampling.Corpus {
	var train, val []sampling.Document
	for i := 0; i < 20; i++ {
		text := strings.Repeat(fmt.Sprintf("func f%d(x int) int { return x * %d }\n", i, i), 3+i%4)
		d := sampling.Document{Name: fmt.Sprint(i), Tokens: sampling.ByteTokenize([]byte(text))}
		if i%5 == 0 {
			val = append(val, d)
		} else {
			train = append(train, d)
		}
	}
	return &sampling.Corpus{Name: "test", Train: train, Val: val}
}

// losses trains steps steps with the given thread budget and returns every
// step's loss and gradient norm (trainSteps) and the final parameters.
func losses(t *testing.T, cfg JobConfig, threads int) ([]float64, []float32) {
	t.Helper()
	prev := tensor.Threads()
	tensor.SetThreads(threads)
	defer tensor.SetThreads(prev)
	tr := newTestTrainer(t, cfg)
	s, err := sampling.NewWindowSampler(smallCorpus().Train, cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.Seed, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := trainSteps(t, tr, s, cfg.Train.Steps)
	if tr.Step() != cfg.Train.Steps {
		t.Fatalf("Step() = %d after %d steps", tr.Step(), cfg.Train.Steps)
	}
	return out, slices.Clone(tr.Params())
}

func TestDeterministicSameSeed(t *testing.T) {
	cfg := smallJob()
	a, pa := losses(t, cfg, 1)
	b, pb := losses(t, cfg, 1)
	if !slices.Equal(a, b) || !slices.Equal(pa, pb) {
		t.Fatalf("same seed, different runs: %v vs %v", a, b)
	}
	cfg.Train.Seed = 2
	c, _ := losses(t, cfg, 1)
	if slices.Equal(a, c) {
		t.Fatal("different seeds gave identical losses")
	}
}

// TestDeterministicAcrossThreads: losses, gradient norms and parameters are
// bitwise identical for 1, 2 and 3 threads, with and without clipping (the
// unclipped norm comes from the fused optimizer pass).
func TestDeterministicAcrossThreads(t *testing.T) {
	for _, clip := range []float64{0, 1} {
		cfg := smallJob()
		cfg.Optim.ClipNorm = clip
		one, p1 := losses(t, cfg, 1)
		for _, n := range []int{2, 3} {
			got, pn := losses(t, cfg, n)
			if !slices.Equal(one, got) || !slices.Equal(p1, pn) {
				t.Fatalf("clip %v, threads 1 vs %d: losses and norms %v vs %v", clip, n, one, got)
			}
		}
	}
}

func TestRunLearnsAndReports(t *testing.T) {
	cfg := smallJob()
	cfg.Train.Steps = 12
	cfg.Train.EvalEvery = 6
	var progress []Progress
	sum, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop(), Corpus: smallCorpus(),
		OnProgress: func(p Progress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Steps != 12 || len(sum.Train) != 12 || len(progress) != 12 || len(sum.Val) != 2 {
		t.Fatalf("steps %d, curve %d, progress %d, val %d", sum.Steps, len(sum.Train), len(progress), len(sum.Val))
	}
	if sum.Tokens != int64(12*cfg.Data.SeqLen*cfg.Data.BatchSize) || !(sum.TokensPerSec > 0) {
		t.Fatalf("tokens %d, tokens/s %v", sum.Tokens, sum.TokensPerSec)
	}
	first, last := sum.Train[0].Loss, sum.Train[11].Loss
	if !(last < first-0.5) {
		t.Fatalf("loss went from %v to %v in 12 steps on a repetitive corpus", first, last)
	}
	if math.IsNaN(progress[5].ValLoss) || !math.IsNaN(progress[4].ValLoss) || progress[11].ETA != 0 {
		t.Fatalf("progress reports wrong: %+v", progress[4:6])
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg := smallJob()
	cfg.Train.Steps = 100
	sum, err := Run(ctx, cfg, RunOptions{Log: zerolog.Nop(), Corpus: smallCorpus(),
		OnProgress: func(p Progress) {
			if p.Step == 2 {
				cancel()
			}
		}})
	if err == nil || sum.Steps != 2 {
		t.Fatalf("cancelled run: steps %d, err %v", sum.Steps, err)
	}
}

func TestEvaluateDoesNotChangeParams(t *testing.T) {
	cfg := smallJob()
	tr, err := NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	before := slices.Clone(tr.Params())
	val := sampling.FixedBatches(smallCorpus().Val, cfg.Data.SeqLen, 2, 3, 1)
	l1, err := tr.Evaluate(val)
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := tr.Evaluate(val)
	if l1 != l2 || !slices.Equal(before, tr.Params()) || math.Abs(l1-math.Log(256)) > 0.5 {
		t.Fatalf("evaluate: %v then %v (ln 256 = %v)", l1, l2, math.Log(256))
	}
	long := sampling.FixedBatches(smallCorpus().Val, cfg.Model.SeqLen+1, 1, 1, 1)
	if _, err := tr.Evaluate(long); err == nil || !strings.Contains(err.Error(), "model.seq_len") {
		t.Fatal("batch longer than model.seq_len accepted")
	}
}

// TestRunPackedMode trains on packed rows (segments, restarting positions,
// padding) through the same Run loop.
func TestRunPackedMode(t *testing.T) {
	cfg := smallJob()
	cfg.Data.Mode = sampling.ModePack
	cfg.Train.Steps, cfg.Train.EvalEvery = 3, 3
	sum, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop(), Corpus: smallCorpus()})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Steps != 3 || len(sum.Val) != 1 || !(sum.Val[0].Loss > 0) {
		t.Fatalf("packed run: %+v", sum)
	}
}
