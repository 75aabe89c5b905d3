package main

import (
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/internal/cli"
)

// Inside a Slurm job serve's flags default from its environment; flags
// given on the command line win; outside one nothing changes.
func TestSlurmServeDefaults(t *testing.T) {
	parse := func(args ...string) (listen, runDir string, workers int, files pki.Files, err error) {
		f := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		f.StringVar(&listen, "listen", "127.0.0.1:7070", "")
		f.StringVar(&runDir, "run-dir", "", "")
		f.IntVar(&workers, "workers", 0, "")
		cli.AddTLSFlags(f, &files, "")
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		err = slurmServeDefaults(f, &listen, &workers, &runDir, &files)
		return
	}
	if l, r, w, fs, err := parse(); err != nil || l != "127.0.0.1:7070" || r != "" || w != 0 || fs.Enabled() {
		t.Fatalf("outside Slurm: %s %s %d %+v %v", l, r, w, fs, err)
	}
	run := t.TempDir()
	t.Setenv("SLURM_JOB_ID", "42")
	t.Setenv("SLURM_JOB_NODELIST", "n[3-4]")
	t.Setenv("SLURM_NTASKS", "2")
	t.Setenv("MOETRAIN_RUN_DIR", run)
	if l, r, w, fs, err := parse(); err != nil || l != "0.0.0.0:20042" || r != run || w != 2 || fs.Enabled() {
		t.Fatalf("in Slurm, no CA: %s %s %d %+v %v", l, r, w, fs, err)
	}
	if _, err := pki.WriteJob(filepath.Join(run, "tls"), "j", []string{"n3"}, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, _, fs, err := parse(); err != nil || fs.Cert != filepath.Join(run, "tls", "coordinator.pem") {
		t.Fatalf("in Slurm with the job's CA: %+v %v", fs, err)
	}
	l, r, w, fs, err := parse("--listen", "10.0.0.1:9", "--run-dir", "/x", "--workers", "4", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a")
	if err != nil || l != "10.0.0.1:9" || r != "/x" || w != 4 || fs.Cert != "c" {
		t.Fatalf("flags given: %s %s %d %+v %v", l, r, w, fs, err)
	}
	t.Setenv("SLURM_NTASKS", "two")
	if _, _, _, _, err := parse(); err == nil {
		t.Fatal("a malformed SLURM_NTASKS was accepted")
	}
}
