package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/worker"
	"github.com/moetrain/moetrain/launchenv"
)

// slurmWorkerDefaults sets --join, --host, --threads, --log-file and the
// TLS files, where not given as flags, from Slurm's environment when this
// process is a task of a Slurm job step (srun); otherwise it changes
// nothing.
func slurmWorkerDefaults(f *pflag.FlagSet, o *worker.WorkerOptions) error {
	s, ok, err := launchenv.FromEnv(os.Getenv)
	if err != nil || !ok || s.ProcID < 0 {
		return err
	}
	if !f.Changed("join") {
		o.Join = s.JoinAddr()
	}
	if !f.Changed("host") && s.NodeName != "" {
		o.Host = s.NodeName
	}
	if !f.Changed("threads") {
		o.Threads = s.CPUsPerTask
	}
	if !f.Changed("log-file") {
		o.LogFile = s.WorkerLog()
	}
	if !o.TLS.Enabled() {
		if o.TLS, err = s.WorkerTLS(); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "Slurm job %s task %d on %s: joining %s, log %s, TLS %v\n",
		s.JobID, s.ProcID, s.NodeName, o.Join, o.LogFile, o.TLS.Enabled())
	return nil
}
