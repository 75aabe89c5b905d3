package train

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// writeTextData writes n small Go-like documents, one file per document,
// into a new directory (a corpus directory, as data.path takes it).
func writeTextData(t *testing.T, n int, seed int) string {
	t.Helper()
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		text := strings.Repeat(fmt.Sprintf("func f%d(x int) int { return x*%d + %d }\n", i, i*seed, seed), 4+i%5)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("doc%02d.go", i)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestEvaluateCheckpointMatchesRun is the acceptance of `coordinator eval`:
// a run validates and checkpoints at the same steps, and the evaluation of
// each checkpoint gives the validation loss the run logged at that step.
// Aux-loss-free balancing is on, so the routing biases must be restored too.
func TestEvaluateCheckpointMatchesRun(t *testing.T) {
	cfg := smallJob()
	cfg.Data.Path = writeTextData(t, 30, 3)
	cfg.Data.ValFraction = 0.2
	cfg.Model.BiasUpdateRate = 0.01
	cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches = 5, 2, 3
	ckpt := t.TempDir()
	sum, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop(), Checkpoint: CheckpointOptions{Dir: ckpt, Every: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Val) != 3 {
		t.Fatalf("run validated at %v, want steps 2, 4, 5", sum.Val)
	}
	for _, v := range sum.Val {
		ref := fmt.Sprintf("%s:%d", ckpt, v.Step)
		if v.Step == cfg.Train.Steps {
			ref = ckpt // the latest
		}
		res, err := EvaluateCheckpoint(EvalOptions{Checkpoint: ref, Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("step %d: run %.12f, eval %.12f (diff %.2g), %.6f bits/byte over %d targets", v.Step, v.Loss, res.Loss, res.Loss-v.Loss, res.BitsPerByte, res.Targets)
		if res.Step != int64(v.Step) || math.Abs(res.Loss-v.Loss) > 1e-6 {
			t.Errorf("step %d: eval of %s (step %d) gives %.12f, the run logged %.12f", v.Step, res.Dir, res.Step, res.Loss, v.Loss)
		}
		if res.Batches != cfg.Train.EvalBatches || res.Targets != int64(res.Batches*cfg.Data.BatchSize*cfg.Data.SeqLen) {
			t.Errorf("step %d: %d batches, %d targets", v.Step, res.Batches, res.Targets)
		}
		if want := res.Loss / math.Ln2; res.BitsPerByte != want {
			t.Errorf("bits per byte %v, want %v", res.BitsPerByte, want)
		}
	}

	// Other data and fewer batches: a different loss over what was asked.
	other := writeTextData(t, 30, 7)
	res, err := EvaluateCheckpoint(EvalOptions{Checkpoint: ckpt, Data: other, Batches: 1, Threads: 1, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches != 1 || res.Data != other || math.IsNaN(res.Loss) || res.Loss <= 0 || res.Loss == sum.Val[2].Loss {
		t.Errorf("on %s: %+v", other, res)
	}
}

func TestEvaluateCheckpointErrors(t *testing.T) {
	cfg := smallJob()
	cfg.Data.Path = writeTextData(t, 20, 1)
	cfg.Data.ValFraction = 0.2
	cfg.Train.Steps, cfg.Train.EvalEvery = 1, 0
	ckpt := t.TempDir()
	if _, err := Run(context.Background(), cfg, RunOptions{Log: zerolog.Nop(), Checkpoint: CheckpointOptions{Dir: ckpt}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    EvalOptions
		want string
	}{
		{EvalOptions{Checkpoint: filepath.Join(ckpt, "nope")}, "no such file"},
		{EvalOptions{Checkpoint: ckpt, Device: "tpu"}, `device "tpu"`},
		{EvalOptions{Checkpoint: ckpt, Batches: -1}, "-1 batches"},
		{EvalOptions{Checkpoint: ckpt, Data: filepath.Join(ckpt, "missing.txt")}, "missing.txt"},
	} {
		c.o.Log = zerolog.Nop()
		_, err := EvaluateCheckpoint(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want it to mention %q", c.o, err, c.want)
		}
	}
}
