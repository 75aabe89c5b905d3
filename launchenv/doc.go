// Package launchenv reads what a workload manager tells a job's processes,
// so that `coordinator serve` and `worker` started by it need no other
// configuration (docs/launching.md): under Slurm, the job id, the expanded
// node list, the task count and this task's rank, from which it derives the
// coordinator's listen and join addresses, the run directory on the shared
// file system and each process's log and TLS files. Command-line flags
// always win over what is derived here.
//
// It must not override command-line flags, nor import any package of the
// project but cluster/pki.
package launchenv
