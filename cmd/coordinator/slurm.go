package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/launchenv"
)

// slurmServeDefaults sets serve's --listen, --workers, --run-dir and TLS
// files, where not given as flags, from Slurm's environment; outside a
// Slurm job it changes nothing.
func slurmServeDefaults(f *pflag.FlagSet, listen *string, workers *int, runDir *string, t *pki.Files) error {
	s, ok, err := launchenv.FromEnv(os.Getenv)
	if err != nil || !ok {
		return err
	}
	if !f.Changed("listen") {
		*listen = s.ListenAddr()
	}
	if !f.Changed("workers") && s.NTasks > 0 {
		*workers = s.NTasks
	}
	if !f.Changed("run-dir") {
		*runDir = s.RunDir()
	}
	if !t.Enabled() {
		if *t, err = s.CoordinatorTLS(); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "Slurm job %s: listening on %s (workers join %s), %d workers, run directory %s, TLS %v\n",
		s.JobID, *listen, s.JoinAddr(), *workers, *runDir, t.Enabled())
	return nil
}

func init() {
	var (
		dir, job string
		hosts    []string
		workers  int
	)
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Write a job's CA and the coordinator's, operator's and workers' TLS certificates (for serve and worker)",
		Long: `Write a job's CA and certificates into --dir, as launch does for itself: ca.pem, coordinator.pem
(valid for every --host the workers dial), operator.pem (for status and stop) and worker-<i>.pem for
i < --workers, each with its -key.pem (0600). The CA's key is not kept.
In a Slurm job every flag defaults from Slurm's environment: RUN/tls, the job's first node,
SLURM_NTASKS workers; serve and worker then find the files there (docs/launching.md).`,
		Example: "  coordinator certs                          # inside an sbatch script\n" +
			"  coordinator certs --dir tls --host moetrain-0.moetrain --workers 2",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, inSlurm, err := launchenv.FromEnv(os.Getenv)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if inSlurm {
				if !f.Changed("dir") {
					dir = s.TLSDir()
				}
				if !f.Changed("host") {
					hosts = []string{s.Coordinator()}
				}
				if !f.Changed("workers") {
					workers = s.NTasks
				}
				if !f.Changed("job") {
					job = "slurm-" + s.JobID
				}
			}
			if dir == "" || len(hosts) == 0 || workers < 1 {
				return fmt.Errorf("--dir %q, --host %q, --workers %d: all are needed outside a Slurm job", dir, hosts, workers)
			}
			j, err := pki.WriteJob(dir, job, hosts, workers)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "CA and %d certificates in %s (coordinator valid for %v)\n", 2+len(j.Workers), dir, hosts)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write (created 0700)")
	f.StringSliceVar(&hosts, "host", nil, "host name or IP the workers dial the coordinator at (repeatable)")
	f.IntVar(&workers, "workers", 0, "number of worker certificates")
	f.StringVar(&job, "job", "moetrain", "job name in the CA's subject")
	rootCmd.AddCommand(cmd)
}
