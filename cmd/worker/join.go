package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
)

var joinOpts cluster.WorkerOptions

func init() {
	f := rootCmd.Flags()
	f.StringVar(&joinOpts.Join, "join", "", "coordinator control-plane address host:port to join")
	f.StringVar(&joinOpts.Token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	f.StringVar(&joinOpts.Host, "host", "", "host name reported to the coordinator (default: os hostname)")
	f.StringVar(&joinOpts.BindIP, "bind", "", "IP for the data plane and gossip (default: the local IP that routes to the coordinator)")
	f.IntVar(&joinOpts.Threads, "threads", 0, "kernel thread budget of this worker (0 = all cores)")
	f.StringVar(&joinOpts.LogFile, "log-file", "", "write JSON log lines to this file")
	f.BoolVarP(&joinOpts.Verbose, "verbose", "v", false, "debug output on the console")
	f.DurationVar(&joinOpts.JoinTimeout, "join-timeout", 30*time.Second, "how long to retry while the coordinator is not reachable")
	f.StringVar(&joinOpts.TLS.Cert, "tls-cert", "", "this worker's TLS certificate (PEM); with --tls-key and --tls-ca the control plane is mutual TLS, else cleartext")
	f.StringVar(&joinOpts.TLS.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&joinOpts.TLS.CA, "tls-ca", "", "the CA certificate (PEM) the coordinator's certificate must be signed by")
	f.StringVar(&joinOpts.TCPCongestion, "tcp-congestion", "", "TCP congestion control of the data plane: a comma-separated list of kernel names, the first accepted wins, or "+collective.CongestionSystem+" for the system's (default "+collective.DefaultCongestion+")")
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills the process at once
	o := joinOpts
	o.Console = os.Stderr
	err := cluster.RunWorkerProcess(ctx, o)
	var ab *cluster.AbortedError
	if errors.As(err, &ab) {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(cluster.ExitAborted)
	}
	return err
}
