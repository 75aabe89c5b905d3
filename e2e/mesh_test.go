//go:build linux

package e2e

import (
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// meshJob is a small job for `coordinator launch --workers 4` with experts
// split over 2 ranks: mesh dp = 4 (four data shards), ep = 2, so the
// expert-data-parallel degree is 2 — the "DP=2 × EP=2" layout of four
// workers in the usual naming, where DP counts replicas of each expert.
const meshJob = tinyModel + `z_loss_coef = 0.001
bias_update_rate = 0.001
[data]
seq_len = 32
batch_size = 2
[mesh]
dp = 4
ep = 2
[train]
steps = 3
eval_every = 0
log_every = 1
threads = 1
`

// serialOnConcatenation runs the serial trainer on the concatenation of the
// dp samplers' batches, step by step: what a data/expert-parallel job must
// reproduce.
func serialOnConcatenation(t *testing.T, cfg train.JobConfig, dp, steps int) []float64 {
	t.Helper()
	data, err := sampling.Open(cfg.Data, cfg.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	samplers := make([]sampling.Sampler, dp)
	for d := range samplers {
		if samplers[d], err = data.Sampler(d, dp); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var losses []float64
	for s := 0; s < steps; s++ {
		var all sampling.Batch
		for _, sm := range samplers {
			b, err := sm.Next()
			if err != nil {
				t.Fatal(err)
			}
			all.B, all.T = all.B+b.B, b.T
			all.Tokens = append(all.Tokens, b.Tokens...)
			all.Targets = append(all.Targets, b.Targets...)
			all.Pos = append(all.Pos, b.Pos...)
		}
		st, err := tr.ForwardBackward(all)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.UpdateRouterBias(st.RoutedLoad); err != nil {
			t.Fatal(err)
		}
		tr.OptimizerStep()
		losses = append(losses, st.Loss)
	}
	return losses
}

// TestLaunchExpertParallelMatchesSerial: a 3-step run with experts over 2
// ranks and 4 data shards, 4 worker processes over TCP started by
// `coordinator launch`, matches the serial trainer's losses within 1e-5
// (every rank logs the global loss; see docs/mesh.md#parallel-equals-serial).
func TestLaunchExpertParallelMatchesSerial(t *testing.T) {
	job := writeJobText(t, meshJob)
	cfg, err := train.LoadJobConfig(job)
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "4", "--config", job, "--run-dir", run, "--no-bar")
	if code := p.wait(90 * time.Second); code != 0 {
		t.Fatalf("launch exited %d:\n%s", code, p.output())
	}
	if out := p.output(); !strings.Contains(out, "job succeeded after 3/3 steps") {
		t.Fatalf("launch output:\n%s", out)
	}
	want := serialOnConcatenation(t, cfg, 4, 3)
	for r := 0; r < 4; r++ {
		got := stepLosses(t, filepath.Join(run, "worker-"+strconv.Itoa(r)+".log"))
		if len(got) != 3 {
			t.Fatalf("worker %d logged %d steps, want 3", r, len(got))
		}
		for s, w := range want {
			l := got[float64(s+1)]
			if rel := math.Abs(l-w) / math.Abs(w); rel > 1e-5 {
				t.Errorf("worker %d step %d: loss %.9g, serial %.9g (rel %.2g)", r, s+1, l, w, rel)
			}
		}
	}
}
