package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cpuquota"
	"github.com/moetrain/moetrain/rankbench"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// testAsCoordinatorEnv makes the test binary act as the coordinator binary:
// `bench routing` re-executes os.Executable() (here the test binary) for its
// rank processes.
const (
	testAsCoordinatorEnv = "MOETRAIN_TEST_AS_COORDINATOR"
	// testCancelRankEnv names a rank whose process runs with its context
	// already cancelled: a rank that fails.
	testCancelRankEnv = "MOETRAIN_TEST_CANCEL_RANK"
)

func TestMain(m *testing.M) {
	if os.Getenv(testAsCoordinatorEnv) != "1" {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if r := os.Getenv(testCancelRankEnv); r != "" {
		for i, a := range os.Args {
			if a == "--rank" && i+1 < len(os.Args) && os.Args[i+1] == r {
				cancel()
			}
		}
	}
	rootCmd.SetArgs(os.Args[1:])
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		os.Stderr.WriteString("coordinator: " + err.Error() + "\n")
		os.Exit(2)
	}
	os.Exit(0)
}

// tinyRoutingConfig writes a job TOML of a model small enough for a few
// steps in milliseconds (8 experts: ep 2 and 4 split them).
func tinyRoutingConfig(t *testing.T, extra string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.toml")
	text := `[model]
d_model = 16
layers = 2
heads = 2
seq_len = 16
experts = 8
expert_hidden = 32
[data]
seq_len = 16
batch_size = 2
` + extra
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runRoutingCmd runs a fresh `bench routing` command (its rank processes
// are this test binary) and returns its output.
func runRoutingCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	t.Setenv(testAsCoordinatorEnv, "1")
	cmd := newBenchRoutingCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func mustLoadJob(t *testing.T, path string) train.JobConfig {
	t.Helper()
	f := &rankbench.Routing{Config: path}
	j, err := f.Job()
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// rankCPUGroups skips the test unless this host can make CPU quota groups,
// and returns a function listing this process's bench groups left behind.
func rankCPUGroups(t *testing.T) func() []string {
	t.Helper()
	q, err := cpuquota.New(fmt.Sprintf("moetrain-probe-%d", os.Getpid()), 0.5)
	if ue, ok := errors.AsType[*cpuquota.UnavailableError](err); ok {
		t.Skipf("cgroups are not writable here: %v", ue)
	}
	if err != nil {
		t.Fatal(err)
	}
	parent := filepath.Dir(q.Dir())
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		left, err := filepath.Glob(filepath.Join(parent, fmt.Sprintf("moetrain-bench-%d-*", os.Getpid())))
		if err != nil {
			t.Fatal(err)
		}
		return left
	}
}

// trainedCheckpoint trains a tiny model for steps steps, saves it into
// store and returns the trainer.
func trainedCheckpoint(t *testing.T, store *checkpoint.Store, steps int) *train.Trainer {
	t.Helper()
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Heads, cfg.Model.Layers = 32, 2, 2
	cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 16, 4, 48
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 4
	cfg.Train.Steps = 10
	tr, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Repeat("export the trained weights; read them back.\n", 20)
	docs := []sampling.Document{{Name: "d", Tokens: sampling.ByteTokenize([]byte(text))}}
	s, err := sampling.NewWindowSampler(docs, cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.Seed, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < steps; i++ {
		b, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.ForwardBackward(b); err != nil {
			t.Fatal(err)
		}
		tr.OptimizerStep()
	}
	st := s.State()
	if _, err := tr.SaveCheckpoint(t.Context(), store, &st, checkpoint.WriterOptions{ChunkBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	return tr
}
