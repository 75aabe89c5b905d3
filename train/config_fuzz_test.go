package train

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadJobConfig: any file either loads into a configuration that
// validates or gives an error; it never panics.
func FuzzLoadJobConfig(f *testing.F) {
	f.Add("[model]\nlayers = 2\n")
	f.Add("[optim]\nschedule = \"cosine\"\nwarmup_steps = 10\n")
	f.Add("[data]\nmode = \"pack\"\n[mesh]\ntp = 2\n")
	f.Add("[train]\nsteps = -1\n")
	f.Add("[train]\ndevice = \"cuda\"\nprecision = \"bf16\"\n[data]\nmode = \"random\"\nvocab = 100\n")
	f.Add("[[model]]\n")
	f.Add("model = 3\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(dir, "job.toml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadJobConfig(p)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("loaded config does not validate: %v", verr)
			}
		}
	})
}
