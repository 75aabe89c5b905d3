// Package cli holds what the moetrain commands (cmd/coordinator, cmd/worker)
// share: how main reports an error, the flags of TLS and of a worker
// process, and how a worker process runs and exits.
//
// It must not be imported outside cmd/, nor hold anything but the wiring of
// cluster, cluster/worker, cluster/pki and collective options.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/cluster/worker"
	"github.com/moetrain/moetrain/collective"
)

// Root is a command's root cobra command, name and short description
// given; cobra's own error and usage output stay off, as Main reports
// every error once.
func Root(name, short string) *cobra.Command {
	return &cobra.Command{Use: name, Short: short, SilenceUsage: true, SilenceErrors: true}
}

// Main executes root (see Root); on an error it prints "NAME: error" on
// stderr (NAME is root's name) and exits with status 2.
func Main(root *cobra.Command) {
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", root.Name(), err)
		os.Exit(2)
	}
}

// RunWorker runs a worker process (`worker --join`) with o and its console
// on stderr until the job ends or the first SIGINT or SIGTERM (a second one
// kills the process at once). When the coordinator aborted the job it says
// why and exits with worker.ExitAborted; any other error is returned.
func RunWorker(o worker.WorkerOptions) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	o.Console = os.Stderr
	err := worker.RunWorkerProcess(ctx, o)
	var ab *worker.AbortedError
	if errors.As(err, &ab) {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(worker.ExitAborted)
	}
	return err
}

// AddTLSFlags registers --tls-cert, --tls-key and --tls-ca into t (whose
// certificate: e.g. "this coordinator's").
func AddTLSFlags(f *pflag.FlagSet, t *pki.Files, whose string) {
	f.StringVar(&t.Cert, "tls-cert", "", whose+" TLS certificate (PEM); with --tls-key and --tls-ca the control plane is mutual TLS, else cleartext")
	f.StringVar(&t.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&t.CA, "tls-ca", "", "the CA certificate (PEM) the other side's certificate must be signed by")
}

// AddWorkerFlags registers the flags of a worker process (`worker --join`,
// and what `coordinator launch` starts) into o.
func AddWorkerFlags(f *pflag.FlagSet, o *worker.WorkerOptions) {
	f.StringVar(&o.Join, "join", "", "coordinator control-plane address host:port to join")
	f.StringVar(&o.Token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	f.StringVar(&o.Host, "host", "", "host name reported to the coordinator (default: os hostname)")
	f.StringVar(&o.BindIP, "bind", "", "IP for the data plane and gossip (default: the local IP that routes to the coordinator)")
	f.IntVar(&o.Threads, "threads", 0, "kernel thread budget of this worker (0 = all cores)")
	f.StringVar(&o.LogFile, "log-file", "", "write JSON log lines to this file")
	f.BoolVarP(&o.Verbose, "verbose", "v", false, "debug output on the console")
	f.DurationVar(&o.JoinTimeout, "join-timeout", 30*time.Second, "how long to retry while the coordinator is not reachable")
	AddTLSFlags(f, &o.TLS, "this worker's")
	f.StringVar(&o.TCPCongestion, "tcp-congestion", "", "TCP congestion control of the data plane: a comma-separated list of kernel names, the first accepted wins, or "+collective.CongestionSystem+" for the system's (default "+collective.DefaultCongestion+")")
}
