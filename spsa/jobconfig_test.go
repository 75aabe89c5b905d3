package spsa_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// The [spsa] section loads and validates with the job; train.mode = "spsa"
// loads with a starting checkpoint and is refused, naming the key, without
// one or with what an SPSA replica cannot be (a shard, routing biases). An
// SPSA job may put any number of ranks on GPUs (no collective between
// them), a backprop job one.
func TestJobConfigSPSASection(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (train.JobConfig, error) {
		p := filepath.Join(dir, "job.toml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return train.LoadJobConfig(p)
	}
	j, err := load("[spsa]\nepsilon = 0.01\nlr = 3e-5\ndirections = 4\nquant = \"fp32\"\nseed = 9\n")
	if err != nil {
		t.Fatal(err)
	}
	want := spsa.DefaultConfig()
	want.Epsilon, want.LR, want.Directions, want.Quant, want.Seed = 0.01, 3e-5, 4, spsa.QuantFP32, 9
	if j.SPSA != want || j.Train.Mode != train.ModeBackprop {
		t.Fatalf("loaded %+v mode %q, want %+v mode %q", j.SPSA, j.Train.Mode, want, train.ModeBackprop)
	}
	j, err = load("[train]\nmode = \"spsa\"\n[spsa]\ninit_from = \"ckpt:latest\"\nlog = \"run/spsa.log\"\n")
	if err != nil || j.Train.Mode != train.ModeSPSA || j.SPSA.InitFrom != "ckpt:latest" || j.SPSA.Log != "run/spsa.log" {
		t.Fatalf("spsa job: %+v %+v, %v", j.Train, j.SPSA, err)
	}
	if _, err := train.NewTrainer(j, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "coordinator launch") {
		t.Fatalf("the backprop trainer took an spsa job: %v", err)
	}
	spsaJob := "[train]\nmode = \"spsa\"\n[spsa]\ninit_from = \"ckpt\"\n"
	if j, err := load("[train]\nmode = \"spsa\"\ndevice = \"cuda\"\n[spsa]\ninit_from = \"ckpt\"\n[mesh]\ndp = 4\n"); err != nil || j.Train.Device != train.DeviceCUDA {
		t.Fatalf("spsa job on 4 GPU ranks: %+v, %v", j.Train, err)
	}
	if _, err := load("[train]\ndevice = \"cuda\"\n[mesh]\ndp = 2\n"); err == nil || !strings.Contains(err.Error(), "mesh.dp = 2") {
		t.Fatalf("a backprop job on 2 GPU ranks: err = %v", err)
	}
	for body, key := range map[string]string{
		"[train]\nmode = \"spsa\"\n":                   "spsa.init_from",
		spsaJob + "[mesh]\ntp = 2\n":                   "mesh.tp = 2",
		spsaJob + "[mesh]\nep = 2\n":                   "mesh.ep = 2",
		spsaJob + "[model]\nbias_update_rate = 0.01\n": "model.bias_update_rate",
		"[train]\nmode = \"sgd\"\n":                    "train.mode",
		"[spsa]\nquant = \"int4\"\n":                   "spsa.quant",
		"[spsa]\ndirections = 0\n":                     "spsa.directions",
		"[spsa]\nepsilon = -1.0\n":                     "spsa.epsilon",
		"[spsa]\nwarmup = 3\n":                         "spsa.warmup",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: err = %v, want one naming %s", body, err, key)
		}
	}
}
