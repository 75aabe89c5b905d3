package main

import (
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/cluster/worker"
)

// A task of a Slurm job step joins the first node on the job's port with
// its own log and certificate; flags given win; the batch script itself
// (no SLURM_PROCID) and a process outside Slurm are left alone.
func TestSlurmWorkerDefaults(t *testing.T) {
	parse := func(args ...string) (worker.WorkerOptions, error) {
		var o worker.WorkerOptions
		f := pflag.NewFlagSet("worker", pflag.ContinueOnError)
		f.StringVar(&o.Join, "join", "", "")
		f.StringVar(&o.Host, "host", "", "")
		f.IntVar(&o.Threads, "threads", 0, "")
		f.StringVar(&o.LogFile, "log-file", "", "")
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		err := slurmWorkerDefaults(f, &o)
		return o, err
	}
	if o, err := parse(); err != nil || o != (worker.WorkerOptions{}) {
		t.Fatalf("outside Slurm: %+v %v", o, err)
	}
	run := t.TempDir()
	t.Setenv("SLURM_JOB_ID", "10007")
	t.Setenv("SLURM_JOB_NODELIST", "gpu[09-10]")
	t.Setenv("MOETRAIN_RUN_DIR", run)
	if o, err := parse(); err != nil || o.Join != "" {
		t.Fatalf("batch script (no SLURM_PROCID): %+v %v", o, err)
	}
	t.Setenv("SLURM_PROCID", "1")
	t.Setenv("SLURMD_NODENAME", "gpu10")
	t.Setenv("SLURM_CPUS_PER_TASK", "6")
	o, err := parse()
	if err != nil || o.Join != "gpu09:20007" || o.Host != "gpu10" || o.Threads != 6 || o.LogFile != filepath.Join(run, "worker-1.log") || o.TLS.Enabled() {
		t.Fatalf("task 1: %+v %v", o, err)
	}
	if _, err := pki.WriteJob(filepath.Join(run, "tls"), "j", []string{"gpu09"}, 2); err != nil {
		t.Fatal(err)
	}
	if o, err = parse("--join", "h:1", "--threads", "2"); err != nil || o.Join != "h:1" || o.Threads != 2 || o.TLS.Cert != filepath.Join(run, "tls", "worker-1.pem") {
		t.Fatalf("flags given, CA present: %+v %v", o, err)
	}
}
