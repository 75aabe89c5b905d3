package train

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func writeTOML(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
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
