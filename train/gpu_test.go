package train

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/internal/gputest"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
)

// GPU tests of the trainer (train.device = "cuda"). They open the GPU the
// way a job does, through NewTrainer or Run, and skip where the CUDA driver
// is missing or sees no GPU (MOETRAIN_REQUIRE_GPU=1 turns the skip into a
// failure). fp32 GPU steps are compared with the CPU trainer's, a resume
// with an uninterrupted run on the resuming device, bf16 with fp32.

// gpuJob is the GPU tests' job: a small model on the embedded corpus in
// window mode, no validation, a cosine schedule with warmup and clipping
// (so the schedule position and every optimizer input matter on resume).
// The device is the CPU's: callers set train.device.
func gpuJob(steps int) JobConfig {
	cfg := DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads = 64, 2, 4
	cfg.Model.Experts, cfg.Model.ExpertHidden, cfg.Model.SeqLen = 8, 96, 64
	cfg.Data.Mode, cfg.Data.Path, cfg.Data.SeqLen, cfg.Data.BatchSize = sampling.ModeWindow, "", 64, 2
	cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches, cfg.Train.LogEvery = steps, 0, 2, 1000
	cfg.Optim.Schedule, cfg.Optim.WarmupSteps, cfg.Optim.ClipNorm = "cosine", 2, 1
	return cfg
}

// onGPU is cfg with train.device = "cuda".
func onGPU(cfg JobConfig) JobConfig {
	cfg.Train.Device = DeviceCUDA
	return cfg
}

// isNoGPU reports whether err (from NewTrainer or Run) is the failure of a
// machine without a GPU: the driver confirms it cannot be loaded or sees no
// GPU, and err carries that finding. Any other error is a real failure.
func isNoGPU(err error) bool {
	if err == nil {
		return false
	}
	n, derr := cuda.DeviceCount()
	switch {
	case derr != nil:
		return strings.Contains(err.Error(), derr.Error())
	case n == 0:
		return strings.Contains(err.Error(), "the driver sees 0")
	}
	return false
}

// skipWithoutGPU skips t when err says there is no CUDA driver or GPU
// (unless MOETRAIN_REQUIRE_GPU is set, which makes it a failure) and
// returns otherwise.
func skipWithoutGPU(t *testing.T, err error) {
	t.Helper()
	if !isNoGPU(err) {
		return
	}
	gputest.SkipOrFail(t, err)
}

// gpuTrainer builds cfg's trainer on the GPU through NewTrainer (skipping
// without one); it is closed when the test ends.
func gpuTrainer(t *testing.T, cfg JobConfig) *Trainer {
	t.Helper()
	tr, err := NewTrainer(onGPU(cfg), zerolog.Nop())
	if err != nil {
		skipWithoutGPU(t, err)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("closing the GPU trainer: %v", err)
		}
	})
	return tr
}

// corpusSampler is the training sampler Run builds for cfg (the embedded
// corpus in cfg's mode, rank 0 of 1).
func corpusSampler(t *testing.T, cfg JobConfig) sampling.Sampler {
	t.Helper()
	_, s, err := singleData(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// onCPUAndGPU returns f's results on the CPU trainer c, then on the GPU
// trainer g; an error fails t.
func onCPUAndGPU[R any](t *testing.T, c, g *Trainer, f func(*Trainer) (R, error)) (cpu, gpu R) {
	t.Helper()
	cpu, err := f(c)
	if err != nil {
		t.Fatalf("CPU trainer: %v", err)
	}
	if gpu, err = f(g); err != nil {
		t.Fatalf("GPU trainer: %v", err)
	}
	return cpu, gpu
}

// relErr is |got − want| / |want| (+Inf when either is not finite).
func relErr(got, want float64) float64 {
	if math.IsNaN(got) || math.IsInf(got, 0) || math.IsNaN(want) || math.IsInf(want, 0) {
		return math.Inf(1)
	}
	if want == 0 {
		return math.Abs(got)
	}
	return math.Abs(got-want) / math.Abs(want)
}

// relNorm32 is gputest.RelNorm.
func relNorm32(got, want []float32) float64 { return gputest.RelNorm(got, want) }

// closeParams fails unless got is within tol of want in relative norm; the
// message names the tensor of layout l that differs most.
func closeParams(t *testing.T, what string, l model.Layout, got, want []float32, tol float64) {
	t.Helper()
	r := relNorm32(got, want)
	if r <= tol {
		t.Logf("%s: parameters within %.3g relative", what, r)
		return
	}
	worst, worstR := "", -1.0
	for _, e := range l.Entries {
		if x := relNorm32(e.Slice(got), e.Slice(want)); x > worstR {
			worst, worstR = e.Name, x
		}
	}
	t.Fatalf("%s: parameters differ by %.3g relative (tolerance %.3g); worst tensor %s: %.3g", what, r, tol, worst, worstR)
}

// closeSteps fails unless got's steps (trainSteps' output: loss, gradient
// norm, …) match want's: losses within lossTol, gradient norms within
// normTol, relative. first is the step number of got[0].
func closeSteps(t *testing.T, what string, first int, got, want []float64, lossTol, normTol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	exact := true
	for i := range got {
		tol, kind := lossTol, "loss"
		if i%2 == 1 {
			tol, kind = normTol, "grad norm"
		}
		if r := relErr(got[i], want[i]); !(r <= tol) {
			t.Fatalf("%s: step %d %s %.9g, want %.9g (relative difference %.3g > %.3g)", what, first+i/2, kind, got[i], want[i], r, tol)
		}
		exact = exact && math.Float64bits(got[i]) == math.Float64bits(want[i])
	}
	t.Logf("%s: %d steps match (bitwise: %v)", what, len(got)/2, exact)
}

// TestGPUTrainerMatchesCPU: a CPU and a GPU trainer of the same job, fed
// the same batches, agree step by step: losses within 1e-5 relative,
// gradient norms within 1e-4 (clipped: the norm kernel; unclipped: the
// update's own sum), the parameters after 5 steps within 1e-4 in relative
// norm and the AdamW moments within 1e-3 (read through the host mirrors,
// which Params fills from the device). Validation losses agree within 1e-5
// before training and 1e-4 after.
func TestGPUTrainerMatchesCPU(t *testing.T) {
	const steps = 5
	for _, clip := range []float64{1, 0} {
		t.Run(fmt.Sprintf("clip=%v", clip), func(t *testing.T) {
			cfg := gpuJob(steps)
			cfg.Optim.ClipNorm = clip
			g := gpuTrainer(t, cfg)
			c := newTestTrainer(t, cfg)

			data, err := sampling.Open(cfg.DataConfig(), cfg.Train.Seed)
			if err != nil {
				t.Fatal(err)
			}
			val, err := data.ValBatches(2)
			if err != nil {
				t.Fatal(err)
			}
			evaluate := func(when string, tol float64) {
				t.Helper()
				want, got := onCPUAndGPU(t, c, g, func(tr *Trainer) (float64, error) { return tr.Evaluate(val) })
				if r := relErr(got, want); !(r <= tol) {
					t.Fatalf("validation loss %s: GPU %.9g, CPU %.9g (relative difference %.3g > %.3g)", when, got, want, r, tol)
				}
			}
			evaluate("before training", 1e-5)

			s := corpusSampler(t, cfg)
			for step := 1; step <= steps; step++ {
				b, err := s.Next()
				if err != nil {
					t.Fatal(err)
				}
				want, got := onCPUAndGPU(t, c, g, func(tr *Trainer) (StepStats, error) { return tr.ForwardBackward(b) })
				if got.Tokens != want.Tokens || got.Targets != want.Targets {
					t.Fatalf("step %d: GPU %d tokens and %d targets, CPU %d and %d", step, got.Tokens, got.Targets, want.Tokens, want.Targets)
				}
				for _, v := range []struct {
					what      string
					got, want float64
				}{{"loss", got.Loss, want.Loss}, {"cross-entropy", got.CE, want.CE}} {
					if r := relErr(v.got, v.want); !(r <= 1e-5) {
						t.Fatalf("step %d %s: GPU %.9g, CPU %.9g (relative difference %.3g)", step, v.what, v.got, v.want, r)
					}
				}
				if d := math.Abs(got.Aux - want.Aux); !(d <= 1e-5*math.Max(math.Abs(want.Aux), 1e-3)) {
					t.Fatalf("step %d aux loss: GPU %.9g, CPU %.9g", step, got.Aux, want.Aux)
				}
				if lg, lc := g.LR(), c.LR(); lg != lc {
					t.Fatalf("step %d learning rate: GPU %v, CPU %v", step, lg, lc)
				}
				wantNorm := c.OptimizerStep()
				gotNorm := g.OptimizerStep()
				if r := relErr(gotNorm, wantNorm); !(r <= 1e-4) {
					t.Fatalf("step %d gradient norm: GPU %.9g, CPU %.9g (relative difference %.3g)", step, gotNorm, wantNorm, r)
				}
				for _, tr := range []*Trainer{c, g} {
					if err := tr.UpdateRouterBias(want.RoutedLoad); err != nil {
						t.Fatal(err)
					}
				}
			}
			if g.Step() != steps || c.Step() != steps {
				t.Fatalf("steps: GPU %d, CPU %d, want %d", g.Step(), c.Step(), steps)
			}
			closeParams(t, "after 5 steps", c.Layout(), g.Params(), c.Params(), 1e-4)
			for _, mom := range []struct {
				what      string
				got, want []float32
			}{{"first moment", g.Optimizer().M, c.Optimizer().M}, {"second moment", g.Optimizer().V, c.Optimizer().V}} {
				if r := relNorm32(mom.got, mom.want); !(r <= 1e-3) {
					t.Fatalf("AdamW %s after 5 steps: relative error %.3g", mom.what, r)
				}
			}
			evaluate("after 5 steps", 1e-4)
		})
	}
}

// TestGPUCheckpointResumesOnCPU: a GPU run saves a checkpoint after N steps
// (SaveCheckpoint) and keeps training; the checkpoint holds the device's
// state (the host mirrors filled before the snapshot), bit for bit what the
// trainer reads back. A CPU trainer resumed from it takes M more steps and
// tracks an uninterrupted CPU run: losses within 1e-5 relative at every
// step, gradient norms within 1e-4, final parameters within 1e-4 in
// relative norm. A second GPU trainer resumed from it tracks an
// uninterrupted GPU run within 1e-6 (the GPU's kernels are deterministic),
// and so does the GPU run that saved. The router-bias case repeats the GPU
// resume with aux-loss-free balancing, whose biases are state too (not
// compared across devices: a token routed differently moves them by a whole
// step of the update rate).
func TestGPUCheckpointResumesOnCPU(t *testing.T) {
	const n, m = 4, 4
	for _, bias := range []bool{false, true} {
		name := "plain"
		if bias {
			name = "router-bias"
		}
		t.Run(name, func(t *testing.T) {
			cfg := gpuJob(n + m)
			if bias {
				cfg.Model.BiasUpdateRate = 0.01
			}
			gRef := gpuTrainer(t, cfg)
			wantGPU := trainSteps(t, gRef, corpusSampler(t, cfg), n+m)

			store := newTestStore(t)
			g := gpuTrainer(t, cfg)
			sg := corpusSampler(t, cfg)
			got := trainSteps(t, g, sg, n)
			st := sg.State()
			if _, err := g.SaveCheckpoint(t.Context(), store, &st, checkpoint.WriterOptions{}); err != nil {
				t.Fatal(err)
			}
			savedP := slices.Clone(g.Params())
			savedM, savedV := slices.Clone(g.Optimizer().M), slices.Clone(g.Optimizer().V)
			got = append(got, trainSteps(t, g, sg, m)...)
			closeSteps(t, "GPU run that saved vs uninterrupted GPU run", 1, got, wantGPU, 1e-6, 1e-6)
			closeParams(t, "GPU run that saved vs uninterrupted GPU run", gRef.Layout(), g.Params(), gRef.Params(), 1e-6)

			resume := func(tr *Trainer) sampling.Sampler {
				t.Helper()
				res, err := tr.ResumeCheckpoint(store, "latest", 0)
				if err != nil {
					t.Fatal(err)
				}
				if res.Step != n || tr.Step() != n {
					t.Fatalf("resumed step %d (trainer %d), want %d", res.Step, tr.Step(), n)
				}
				s := corpusSampler(t, cfg)
				if err := res.RestoreSampler(s); err != nil {
					t.Fatal(err)
				}
				return s
			}

			g2 := gpuTrainer(t, cfg)
			s2 := resume(g2)
			if !f32BitsEqual(g2.Params(), savedP) {
				t.Fatal("GPU trainer resumed on the GPU: parameters differ from the saving trainer's at the save")
			}
			closeSteps(t, "GPU resumed on the GPU vs uninterrupted GPU run", n+1, trainSteps(t, g2, s2, m), wantGPU[2*n:], 1e-6, 1e-6)
			closeParams(t, "GPU resumed on the GPU vs uninterrupted GPU run", gRef.Layout(), g2.Params(), gRef.Params(), 1e-6)
			if bias {
				return
			}

			cRef := newTestTrainer(t, cfg)
			wantCPU := trainSteps(t, cRef, corpusSampler(t, cfg), n+m)
			closeSteps(t, "GPU vs CPU before the checkpoint", 1, got[:2*n], wantCPU[:2*n], 1e-5, 1e-4)
			c := newTestTrainer(t, cfg)
			c.Params()[0] += 1 // the restore must overwrite every weight
			sc := resume(c)
			if !f32BitsEqual(c.Params(), savedP) || !f32BitsEqual(c.Optimizer().M, savedM) || !f32BitsEqual(c.Optimizer().V, savedV) {
				t.Fatal("CPU trainer resumed from the GPU's checkpoint: parameters or moments differ from the GPU's at the save")
			}
			closeSteps(t, "GPU resumed on the CPU vs uninterrupted CPU run", n+1, trainSteps(t, c, sc, m), wantCPU[2*n:], 1e-5, 1e-4)
			closeParams(t, "GPU resumed on the CPU vs uninterrupted CPU run", cRef.Layout(), c.Params(), cRef.Params(), 1e-4)
		})
	}
}

// checkpointParams restores the latest checkpoint of dir into a CPU trainer
// of cfg and returns its parameters; the checkpoint must be of step.
func checkpointParams(t *testing.T, cfg JobConfig, dir string, step int) []float32 {
	t.Helper()
	store, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestTrainer(t, cfg)
	res, err := tr.ResumeCheckpoint(store, "latest", 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Step != int64(step) {
		t.Fatalf("latest checkpoint of %s is step %d, want %d", dir, res.Step, step)
	}
	return tr.Params()
}

// runSteps is Run's training curve as trainSteps' output (loss, gradient
// norm, …), checking that it covers steps first..last.
func runSteps(t *testing.T, what string, sum Summary, first, last int) []float64 {
	t.Helper()
	if len(sum.Train) != last-first+1 || sum.Steps != last {
		t.Fatalf("%s: %d curve points up to step %d, want steps %d to %d", what, len(sum.Train), sum.Steps, first, last)
	}
	var out []float64
	for i, p := range sum.Train {
		if p.Step != first+i {
			t.Fatalf("%s: curve point %d is step %d, want %d", what, i, p.Step, first+i)
		}
		out = append(out, p.Loss, p.GradNorm)
	}
	return out
}

// TestCPUCheckpointResumesOnGPU drives Run with RunOptions.Checkpoint: a
// CPU run saving every N steps is resumed on the GPU from its step N (as a
// "DIR:STEP" reference) and finishes M more steps, which track an
// uninterrupted GPU run (also saving every N steps): losses within 1e-5
// relative at every step, gradient norms within 1e-4, and final parameters
// (read from each run's last checkpoint) within 1e-4 in relative norm. A
// GPU run resumed from the GPU run's own step N matches it within 1e-6
// (deterministic kernels; the asynchronous save at step N must not disturb
// the saving run either).
func TestCPUCheckpointResumesOnGPU(t *testing.T) {
	const n, m = 4, 4
	cfg := gpuJob(n + m)
	dir := t.TempDir()
	run := func(what string, c JobConfig, o CheckpointOptions) Summary {
		t.Helper()
		o.Writer.NoSync = true
		sum, err := Run(t.Context(), c, RunOptions{Log: zerolog.Nop(), Checkpoint: o})
		if err != nil {
			skipWithoutGPU(t, err)
			t.Fatalf("%s: %v", what, err)
		}
		return sum
	}
	gRefDir, cpuDir := filepath.Join(dir, "gpu"), filepath.Join(dir, "cpu")
	gRef := runSteps(t, "uninterrupted GPU run", run("uninterrupted GPU run", onGPU(cfg), CheckpointOptions{Dir: gRefDir, Every: n}), 1, n+m)
	cpu := runSteps(t, "CPU run", run("CPU run", cfg, CheckpointOptions{Dir: cpuDir, Every: n}), 1, n+m)
	closeSteps(t, "CPU vs GPU run before the checkpoint", 1, cpu[:2*n], gRef[:2*n], 1e-5, 1e-4)

	fromCPUDir := filepath.Join(dir, "from-cpu")
	fromCPU := run("GPU run resumed from the CPU's checkpoint", onGPU(cfg),
		CheckpointOptions{Dir: fromCPUDir, Resume: fmt.Sprintf("%s:%d", cpuDir, n)})
	closeSteps(t, "CPU resumed on the GPU vs uninterrupted GPU run", n+1,
		runSteps(t, "GPU run resumed from the CPU's checkpoint", fromCPU, n+1, n+m), gRef[2*n:], 1e-5, 1e-4)

	fromGPUDir := filepath.Join(dir, "from-gpu")
	fromGPU := run("GPU run resumed from the GPU's checkpoint", onGPU(cfg),
		CheckpointOptions{Dir: fromGPUDir, Resume: fmt.Sprintf("%s:%d", gRefDir, n)})
	closeSteps(t, "GPU resumed on the GPU vs uninterrupted GPU run", n+1,
		runSteps(t, "GPU run resumed from the GPU's checkpoint", fromGPU, n+1, n+m), gRef[2*n:], 1e-6, 1e-6)

	l := newTestTrainer(t, cfg).Layout()
	want := checkpointParams(t, cfg, gRefDir, n+m)
	closeParams(t, "CPU resumed on the GPU vs uninterrupted GPU run", l, checkpointParams(t, cfg, fromCPUDir, n+m), want, 1e-4)
	closeParams(t, "GPU resumed on the GPU vs uninterrupted GPU run", l, checkpointParams(t, cfg, fromGPUDir, n+m), want, 1e-6)
}

// checkLearns fails unless a 20-step curve is finite and its loss fell by
// at least minDrop from step 1 to step 20.
func checkLearns(t *testing.T, what string, sum Summary, minDrop float64) {
	t.Helper()
	if sum.Steps != 20 || len(sum.Train) != 20 {
		t.Fatalf("%s: %d steps, %d curve points, want 20", what, sum.Steps, len(sum.Train))
	}
	for _, p := range sum.Train {
		if math.IsNaN(p.Loss) || math.IsInf(p.Loss, 0) || math.IsNaN(p.GradNorm) || math.IsInf(p.GradNorm, 0) || !(p.GradNorm > 0) {
			t.Fatalf("%s: step %d loss %v, gradient norm %v", what, p.Step, p.Loss, p.GradNorm)
		}
	}
	first, last := sum.Train[0].Loss, sum.Train[19].Loss
	if !(last < first-minDrop) {
		t.Fatalf("%s: loss went from %.4f at step 1 to %.4f at step 20, want a drop of at least %v", what, first, last, minDrop)
	}
	t.Logf("%s: loss %.4f at step 1, %.4f at step 20", what, first, last)
}

// TestGPURunEndToEnd: Run on the GPU for 20 steps with validation every 10
// on the embedded corpus finishes with a finite loss that falls from step 1
// to step 20, validation after steps 10 and 20 (finite, falling), progress
// reports and throughput.
func TestGPURunEndToEnd(t *testing.T) {
	cfg := onGPU(gpuJob(20))
	cfg.Train.EvalEvery = 10
	var progress []Progress
	sum, err := Run(t.Context(), cfg, RunOptions{Log: zerolog.Nop(), OnProgress: func(p Progress) { progress = append(progress, p) }})
	if err != nil {
		skipWithoutGPU(t, err)
		t.Fatal(err)
	}
	checkLearns(t, "GPU run", sum, 0.3)
	if len(sum.Val) != 2 || sum.Val[0].Step != 10 || sum.Val[1].Step != 20 {
		t.Fatalf("validation points %+v, want steps 10 and 20", sum.Val)
	}
	for _, v := range sum.Val {
		if math.IsNaN(v.Loss) || math.IsInf(v.Loss, 0) || !(v.Loss > 0) {
			t.Fatalf("validation loss %v at step %d", v.Loss, v.Step)
		}
	}
	if !(sum.Val[1].Loss < sum.Val[0].Loss) {
		t.Fatalf("validation loss rose from %.4f at step 10 to %.4f at step 20", sum.Val[0].Loss, sum.Val[1].Loss)
	}
	if want := int64(20 * cfg.Data.SeqLen * cfg.Data.BatchSize); sum.Tokens != want || sum.Targets != want || !(sum.TokensPerSec > 0) {
		t.Fatalf("tokens %d, targets %d (want %d each), tokens/s %v", sum.Tokens, sum.Targets, want, sum.TokensPerSec)
	}
	if len(progress) != 20 || math.IsNaN(progress[9].ValLoss) || !math.IsNaN(progress[8].ValLoss) || progress[19].ETA != 0 {
		t.Fatalf("%d progress reports; step 9 and 10 validation %v, %v", len(progress), progress[8].ValLoss, progress[9].ValLoss)
	}
	t.Logf("GPU run: validation %.4f at step 10, %.4f at step 20; %.0f tokens/s", sum.Val[0].Loss, sum.Val[1].Loss, sum.TokensPerSec)
}

// TestGPUBF16: train.precision = "bf16" on the GPU either is refused in
// one line naming train.precision as not implemented (the first GPU
// version's behaviour: the refusal came before the GPU was opened), or
// trains: 20 steps with a finite loss falling from step 1 to step 20 that
// tracks the fp32 GPU run of the same job (same weights, same batches): the
// step-1 loss within 1e-2 relative (bf16 rounding only), the step-20 loss
// within 0.05.
func TestGPUBF16(t *testing.T) {
	cfg := onGPU(gpuJob(20))
	cfg.Train.Precision = PrecisionBF16
	sum, err := Run(t.Context(), cfg, RunOptions{Log: zerolog.Nop()})
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "train.precision") && strings.Contains(msg, "not implemented") {
			if !strings.Contains(msg, PrecisionBF16) || strings.Contains(msg, "\n") {
				t.Fatalf("bf16 refusal %q: want one line naming %q", msg, PrecisionBF16)
			}
			if sum.Steps != 0 {
				t.Fatalf("refused bf16 run took %d steps", sum.Steps)
			}
			t.Logf("bf16 on the GPU is not implemented: %v", err)
			return
		}
		skipWithoutGPU(t, err)
		t.Fatal(err)
	}
	checkLearns(t, "bf16 GPU run", sum, 0.3)
	cfg.Train.Precision = PrecisionFP32
	ref, err := Run(t.Context(), cfg, RunOptions{Log: zerolog.Nop()})
	if err != nil {
		t.Fatalf("fp32 GPU run: %v", err)
	}
	checkLearns(t, "fp32 GPU run", ref, 0.3)
	if r := relErr(sum.Train[0].Loss, ref.Train[0].Loss); !(r <= 1e-2) {
		t.Fatalf("step 1: bf16 loss %.6g, fp32 %.6g (relative difference %.3g > 1e-2)", sum.Train[0].Loss, ref.Train[0].Loss, r)
	}
	if d := math.Abs(sum.Train[19].Loss - ref.Train[19].Loss); !(d <= 0.05) {
		t.Fatalf("step 20: bf16 loss %.4f, fp32 %.4f (difference %.4f > 0.05)", sum.Train[19].Loss, ref.Train[19].Loss, d)
	}
}

// TestCUDAWithoutGPU (machines without a usable GPU only): NewTrainer with
// train.device = "cuda" fails with one line naming the device setting and
// what the driver is missing, every time, without a panic, a trainer or
// goroutines left behind; Run fails the same way before any step.
func TestCUDAWithoutGPU(t *testing.T) {
	n, derr := cuda.DeviceCount()
	if derr == nil && n > 0 {
		t.Skipf("the driver sees %d GPU(s)", n)
	}
	missing := "the driver sees 0"
	if derr != nil {
		missing = derr.Error()
		if !strings.Contains(missing, "libcuda.so.1") && !strings.Contains(missing, "cuInit") {
			t.Fatalf("driver error %q names neither libcuda.so.1 nor cuInit", missing)
		}
	}
	cfg := onGPU(gpuJob(2))
	var first string
	goroutines := 0
	for i := 0; i < 3; i++ {
		tr, err := NewTrainer(cfg, zerolog.Nop())
		if err == nil {
			tr.Close()
			t.Fatal("NewTrainer with train.device = \"cuda\" succeeded without a GPU")
		}
		if tr != nil {
			t.Fatal("a failed NewTrainer returned a trainer")
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, `train.device = "cuda"`) || !strings.Contains(msg, missing) {
			t.Fatalf("error %q: want one line naming train.device = \"cuda\" and %q", msg, missing)
		}
		if i == 0 {
			first, goroutines = msg, runtime.NumGoroutine()
			t.Logf("without a GPU: %v", err)
		} else if msg != first {
			t.Fatalf("attempt %d: error %q, first %q", i+1, msg, first)
		}
	}
	if g := runtime.NumGoroutine(); g > goroutines {
		t.Fatalf("%d goroutines after three failed NewTrainers, %d after the first", g, goroutines)
	}
	sum, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop()})
	if err == nil || err.Error() != first || sum.Steps != 0 || len(sum.Train) != 0 {
		t.Fatalf("Run without a GPU: %d steps, error %v, want %q", sum.Steps, err, first)
	}
	c := newTestTrainer(t, gpuJob(2))
	if err := c.Close(); err != nil {
		t.Fatalf("closing a CPU trainer: %v", err)
	}
}
