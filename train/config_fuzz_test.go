package train

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/moetrain/moetrain/model"
)

// FuzzLoadJobConfig: any file either loads into a configuration that
// validates or gives an error; it never panics, and neither does the memory
// estimate of what it accepts nor building the model it describes (where
// the estimate is small enough to build it here).
func FuzzLoadJobConfig(f *testing.F) {
	f.Add("[model]\nlayers = 2\n")
	f.Add("[optim]\nschedule = \"cosine\"\nwarmup_steps = 10\n")
	f.Add("[data]\nmode = \"pack\"\n[mesh]\ntp = 2\n")
	f.Add("[train]\nsteps = -1\n")
	f.Add("[train]\ndevice = \"cuda\"\nprecision = \"bf16\"\n[data]\nmode = \"random\"\nvocab = 100\n")
	f.Add("[[model]]\n")
	f.Add("model = 3\n")
	f.Add("[model]\nd_model = 1099511627776\n")
	f.Add("[model]\nexperts = 1073741824\n")
	f.Add("[model]\nvocab = 4611686018427387904\nseq_len = 4611686018427387904\n")
	f.Add("[data]\nbatch_size = 4611686018427387904\nseq_len = 4\n")
	f.Add("[model]\nlayers = 1\nexperts = 4\ntop_k = 4\n[mesh]\nep = 2\ntp = 2\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(dir, "job.toml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadJobConfig(p)
		if err != nil {
			return
		}
		if verr := cfg.Validate(); verr != nil {
			t.Fatalf("loaded config does not validate: %v", verr)
		}
		sh := model.Shard{TP: cfg.Mesh.TP, TPRank: cfg.Mesh.TP - 1, EP: cfg.Mesh.EP, EPRank: cfg.Mesh.EP - 1}
		est := model.EstimateMemory(cfg.Model, sh, math.Ceil(float64(cfg.MaxBatchTokens())/float64(cfg.Mesh.SP)))
		if err := est.Check(); err != nil {
			t.Fatalf("accepted config over the memory limit: %v", err)
		}
		if est.ParamBytes+est.InitBytes <= 64<<20 {
			if _, err := model.NewSharded(cfg.Model, sh, cfg.Train.Seed); err != nil {
				t.Fatalf("accepted config does not build: %v", err)
			}
		}
	})
}
