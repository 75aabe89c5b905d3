package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster/worker"
	"github.com/moetrain/moetrain/internal/cli"
)

var joinOpts worker.WorkerOptions

func init() {
	cli.AddWorkerFlags(rootCmd.Flags(), &joinOpts)
	rootCmd.Long = rootCmd.Short + `

With --join ADDR the worker joins a coordinator (coordinator serve), receives its rank and the
job, trains, reports progress, and exits when the coordinator says so. Exit status: 0 when the
job completed or was stopped, 3 when the coordinator aborted the job (a failure elsewhere), 2 on
any other error (refused token, coordinator lost, bad flags). A coordinator with --max-restarts
may tell the worker to rejoin (a recovery: the worker cancels its rank and joins again); a serve
with --max-restarts also has it wait --rejoin-timeout for a restarted serve when the coordinator
is lost (docs/control-plane.md#automatic-recovery). As a task of a Slurm job step
(srun), flags not given come from Slurm's environment, --join included (docs/launching.md).`
	rootCmd.Example = "  worker --join 10.0.0.1:7070 --token $TOKEN\n  worker train --standalone --steps 200"
	rootCmd.RunE = runJoin
}

func runJoin(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %q (see worker --help)", args)
	}
	if err := slurmWorkerDefaults(cmd.Flags(), &joinOpts); err != nil {
		return err
	}
	if joinOpts.Join == "" {
		return errors.New("nothing to do: pass --join ADDR --token T to join a coordinator, or use `worker train --standalone`")
	}
	return cli.RunWorker(joinOpts)
}
