package train

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
)

// writeTOML writes body to job.toml in a fresh temporary directory and
// returns its path.
func writeTOML(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	testkit.WriteFile(t, dir, "job.toml", []byte(body))
	return filepath.Join(dir, "job.toml")
}

func TestDefaultJobConfigValid(t *testing.T) {
	if err := DefaultJobConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadJobConfigOverridesDefaults(t *testing.T) {
	p := writeTOML(t, `
[model]
layers = 2
[optim]
lr = 3e-4
schedule = "cosine"
[train]
steps = 50
`)
	cfg, err := LoadJobConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultJobConfig()
	if cfg.Model.Layers != 2 || cfg.Optim.LR != 3e-4 || cfg.Train.Steps != 50 || cfg.Optim.Schedule != "cosine" {
		t.Fatalf("values not read: %+v", cfg)
	}
	if cfg.Model.DModel != def.Model.DModel || cfg.Data.SeqLen != def.Data.SeqLen || cfg.Optim.Beta2 != def.Optim.Beta2 {
		t.Fatalf("missing keys lost their defaults: %+v", cfg)
	}
}

func TestLoadJobConfigErrors(t *testing.T) {
	cases := []struct{ body, want string }{
		{"[model]\nlayerz = 3\n", "unknown key(s): model.layerz"},
		{"[trian]\nsteps = 3\n", "unknown key(s): trian"},
		{"[model]\nheads = 3\n", "model.d_model = 256: must be a multiple of model.heads = 3"},
		{"[optim]\nlr = -1\n", "optim.lr = -1"},
		{"[train]\nsteps = 0\n", "train.steps = 0"},
		{"[data]\nseq_len = 512\n", "exceed model.seq_len = 256"},
		{"[mesh]\nep = 3\n", "mesh.ep = 3 must divide model.experts = 8"},
		{"[model]\nlayers = \"four\"\n", "config"},
		{"[model]\nlayers = 4\n\n[[[\n", "line 4"},
		{"[data]\nmode = \"random\"\nvocab = 300\n", "data.vocab = 300 exceeds model.vocab = 256"},
		{"[data]\nmode = \"random\"\nvocab = -1\n", "data.vocab = -1"},
		{"[train]\ndevice = \"gpu\"\n", `train.device = "gpu": want "cpu" or "cuda"`},
		{"[train]\nprecision = \"fp16\"\n", `train.precision = "fp16": want "fp32" or "bf16"`},
		{"[train]\nprecision = \"bf16\"\n", `train.precision = "bf16" needs train.device = "cuda", not "cpu"`},
		{"[train]\ngpu = -1\n", "train.gpu = -1"},
		{"[train]\ndevice = \"cuda\"\n[mesh]\ndp = 2\n", `train.device = "cuda" supports one rank (multi-GPU is not implemented yet): mesh.dp = 2`},
		{"[train]\ndevice = \"cuda\"\n[mesh]\ntp = 2\n", "mesh.tp = 2"},
	}
	for _, tc := range cases {
		_, err := LoadJobConfig(writeTOML(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want it to contain %q", tc.body, err, tc.want)
		}
	}
	if _, err := LoadJobConfig(filepath.Join(t.TempDir(), "missing.toml")); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing file: error %v does not name the file", err)
	}
}

// TestDefaultJobRoundTrip: the defaults written as TOML load back equal, so
// every field has a TOML key the loader accepts.
func TestDefaultJobRoundTrip(t *testing.T) {
	var sb strings.Builder
	if err := toml.NewEncoder(&sb).Encode(DefaultJobConfig()); err != nil {
		t.Fatal(err)
	}
	got, err := LoadJobConfig(writeTOML(t, sb.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, DefaultJobConfig()) {
		t.Fatalf("round trip changed the config:\n%+v\n%+v", got, DefaultJobConfig())
	}
}

// TestDeviceAndRandomData: the device keys load, cuda runs on one rank (dp 1
// or auto), and random data takes model.vocab when data.vocab is 0, also for
// a config built in code (DataConfig) rather than loaded.
func TestDeviceAndRandomData(t *testing.T) {
	cfg, err := LoadJobConfig(writeTOML(t, `
[train]
device = "cuda"
precision = "bf16"
gpu = 3
[mesh]
dp = 1
[data]
mode = "random"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Train.Device != DeviceCUDA || cfg.Train.Precision != PrecisionBF16 || cfg.Train.GPU != 3 {
		t.Fatalf("device keys not read: %+v", cfg.Train)
	}
	if cfg.Data.Vocab != cfg.Model.Vocab {
		t.Fatalf("data.vocab = %d, want model.vocab = %d", cfg.Data.Vocab, cfg.Model.Vocab)
	}
	def := DefaultConfig()
	if def.Device != DeviceCPU || def.Precision != PrecisionFP32 || def.GPU != 0 {
		t.Fatalf("defaults %+v", def)
	}
	j := DefaultJobConfig()
	j.Train.Device, j.Train.Precision = "", "" // a config decoded without defaults
	if err := j.Validate(); err != nil {
		t.Fatalf("empty device and precision: %v", err)
	}
	j = DefaultJobConfig()
	j.Data.Mode, j.Model.Vocab = sampling.ModeRandom, 512
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := j.DataConfig(); d.Vocab != 512 || j.Data.Vocab != 0 {
		t.Fatalf("DataConfig vocab %d (section %d)", d.Vocab, j.Data.Vocab)
	}
	j.Data.Vocab = 100
	if d := j.DataConfig(); d.Vocab != 100 {
		t.Fatalf("explicit data.vocab replaced: %d", d.Vocab)
	}
	j.Data.Mode, j.Data.Vocab = sampling.ModeWindow, 1<<20 // other modes ignore data.vocab
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	j = DefaultJobConfig()
	j.Data.Mode, j.Mesh.SP = sampling.ModeRandom, 2 // fixed-length rows: sequence parallelism works
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
}

// A configuration that would need more than model.MaxRankMemory per rank is
// refused at validation, before any worker starts, with the estimate in the
// error; the GPU benchmark configurations (gpu-small, gpu-medium) are not.
func TestValidateMemory(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[model]\nd_model = 1099511627776\n", "model.d_model = 1099511627776"},
		{"[model]\nexperts = 1073741824\n", "model.experts = 1073741824"},
		{"[model]\nexperts = 1073741824\n[mesh]\nep = 8\n", "model.experts = 1073741824"},
		{"[data]\nbatch_size = 1099511627776\n", "2.815e+14 tokens per rank"},
	} {
		_, err := LoadJobConfig(writeTOML(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "estimated memory per rank") ||
			!strings.Contains(err.Error(), "exceeds the limit of 1.0 TiB") {
			t.Errorf("config %q: error %v, want the estimate and %q", tc.body, err, tc.want)
		}
	}
	for name, body := range map[string]string{
		"gpu-small":  "vocab = 32768\nd_model = 1024\nlayers = 8\nheads = 16\nexperts = 16\nexpert_hidden = 2816\ntop_k = 2\n",
		"gpu-medium": "vocab = 32768\nd_model = 2048\nlayers = 12\nheads = 32\nexperts = 32\nexpert_hidden = 1408\ntop_k = 4\n",
	} {
		cfg, err := LoadJobConfig(writeTOML(t, "[model]\nseq_len = 2048\n"+body+
			"[data]\nmode = \"random\"\nseq_len = 2048\nbatch_size = 8\n[train]\ndevice = \"cuda\"\nprecision = \"bf16\"\n"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: %v", name, model.EstimateMemory(cfg.Model, model.Whole, float64(cfg.MaxBatchTokens())))
	}
}
