package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/launch"
	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/internal/cli"
	"github.com/moetrain/moetrain/train"
)

// loadJob reads --config (or the defaults) and applies --steps.
func loadJob(path string, steps int) (train.JobConfig, error) {
	cfg := train.DefaultJobConfig()
	if path != "" {
		var err error
		if cfg, err = train.LoadJobConfig(path); err != nil {
			return cfg, err
		}
	}
	if steps < 0 {
		return cfg, fmt.Errorf("--steps %d: must be ≥ 1 (or 0 for the config's train.steps)", steps)
	}
	if steps > 0 {
		cfg.Train.Steps = steps
	}
	return cfg, cfg.Validate()
}

// openRunDir creates the run directory *dir (runs/<timestamp> when empty;
// *dir is set to it) and in it the coordinator's JSON log, coordinator.log,
// which stderr also shows from level console up (debug with verbose).
func openRunDir(dir *string, console zerolog.Level, verbose bool) (zerolog.Logger, io.Closer, error) {
	if *dir == "" {
		*dir = cluster.DefaultRunDir(time.Now())
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return zerolog.Logger{}, nil, fmt.Errorf("run directory: %w", err)
	}
	if verbose {
		console = zerolog.DebugLevel
	}
	return cluster.NewLogger(cluster.LogOptions{File: filepath.Join(*dir, "coordinator.log"), Console: os.Stderr, Level: console})
}

// signalContext is cancelled by SIGINT or SIGTERM; a second signal kills
// the process at once (the default action is restored after the first).
func signalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}

func init() {
	var (
		config, listen, token, runDir string
		workers, steps, gossipPort    int
		joinTimeout                   time.Duration
		verbose                       bool
		gossip                        = cluster.DefaultMembershipConfig()
		ckpt                          cluster.CheckpointConfig
		tlsFiles                      pki.Files
		monFlags                      monitorFlags
		recovery                      cluster.RecoveryPolicy
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a job: wait for workers to join, plan the layout, run the job to its end",
		Long: `Serve a job: wait for workers to join, plan the layout, run the job to its end.
In a Slurm job, flags not given come from Slurm's environment (docs/launching.md).
Started again on the run directory of a job it did not finish (jobstate.json), serve takes the
job back: its workers rejoin and training goes on from the last committed checkpoint.
` + checkpointHelp,
		Example: "  coordinator serve --config job.toml --listen 0.0.0.0:7070 --workers 4 --token $TOKEN\n" +
			"  worker --join HOST:7070 --token $TOKEN   # on each worker machine\n" +
			"  coordinator serve ... --tls-cert coord.pem --tls-key coord-key.pem --tls-ca ca.pem   # mutual TLS (workers: theirs)",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := slurmServeDefaults(cmd.Flags(), &listen, &workers, &runDir, &tlsFiles); err != nil {
				return err
			}
			job, err := loadJob(config, steps)
			if err != nil {
				return err
			}
			if err := ckpt.Validate(); err != nil {
				return err
			}
			serverTLS, err := serverTLSConfig(tlsFiles)
			if err != nil {
				return err
			}
			if err := cluster.CheckRunnable(job); err != nil {
				return err
			}
			if workers == 0 {
				workers = cluster.WorkersFor(job)
			}
			if workers < 1 {
				return errors.New("--workers N is required when [mesh] dp is auto (0)")
			}
			if w := cluster.WorkersFor(job); w > 0 && w != workers {
				return fmt.Errorf("--workers %d conflicts with [mesh] dp=%d × sp=%d × tp=%d = %d", workers, job.Mesh.DP, job.Mesh.SP, job.Mesh.TP, w)
			}
			token = cluster.TokenOrEnv(token)
			if err := cluster.CheckLayout(job, workers); err != nil {
				return err
			}
			if token == "" {
				if token, err = cluster.RandomToken(); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "job token (pass to workers with --token or $%s): %s\n", cluster.TokenEnv, token)
			}
			lg, closer, err := openRunDir(&runDir, zerolog.InfoLevel, verbose)
			if err != nil {
				return err
			}
			defer closer.Close()
			jobJSON, err := cluster.JobJSON(job)
			if err != nil {
				return err
			}
			prog := launch.NewProgressView(os.Stderr, false, job.Train.Steps)
			if gossip.ProbeInterval <= 0 || gossip.ProbeTimeout <= 0 || gossip.SuspicionMult < 1 {
				return fmt.Errorf("--gossip-probe-interval %v, --gossip-probe-timeout %v, --gossip-suspicion-mult %d: all must be positive",
					gossip.ProbeInterval, gossip.ProbeTimeout, gossip.SuspicionMult)
			}
			mcfg := gossip
			mcfg.BindPort = gossipPort
			mon, err := startMonitor(monFlags, job, workers)
			if err != nil {
				return err
			}
			defer mon.stop()
			coord, err := cluster.NewCoordinator(cluster.CoordinatorConfig{
				Listen: listen, Token: token, TLS: serverTLS, JobID: filepath.Base(runDir), Workers: workers,
				TotalSteps: job.Train.Steps, Plan: cluster.PlanRequestFor(job), JobConfigJSON: jobJSON,
				JoinTimeout: joinTimeout, Membership: mcfg, Log: lg, OnStatus: prog.Update, Checkpoint: ckpt, Metrics: mon.metrics,
				Recovery: recovery, StateDir: runDir, Takeover: true,
			})
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			res, runErr := coord.Run(ctx)
			prog.Finish(res)
			sum := cluster.Summary{Result: res, Config: job, Workers: workers}
			if err := cluster.WriteSummary(runDir, sum); err != nil {
				return err
			}
			mon.jobEnded()
			if runErr != nil {
				return runErr
			}
			if res.Phase != cluster.PhaseSucceeded {
				return fmt.Errorf("job %s: %s", res.Phase, res.Reason)
			}
			fmt.Fprintf(os.Stderr, "summary in %s\n", filepath.Join(runDir, "summary.json"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&config, "config", "", "job TOML file (default: the reference model on the embedded corpus)")
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "control-plane address to listen on (host:port)")
	f.StringVar(&token, "token", "", "job token workers must present (default $"+cluster.TokenEnv+", else a random one is printed)")
	f.IntVar(&workers, "workers", 0, "number of workers to wait for (default: dp×sp×tp of the config when dp is set)")
	f.IntVar(&steps, "steps", 0, "override train.steps")
	f.StringVar(&runDir, "run-dir", "", "run directory for logs and summary.json (default runs/<timestamp>)")
	f.IntVar(&gossipPort, "gossip-port", 0, "memberlist port (TCP+UDP) on the listen IP (0 = any free port)")
	f.DurationVar(&gossip.ProbeInterval, "gossip-probe-interval", gossip.ProbeInterval, "failure detector: how often a peer is probed (memberlist LAN profile)")
	f.DurationVar(&gossip.ProbeTimeout, "gossip-probe-timeout", gossip.ProbeTimeout, "failure detector: how long to wait for a probe's ack")
	f.IntVar(&gossip.SuspicionMult, "gossip-suspicion-mult", gossip.SuspicionMult, "failure detector: a suspect has this many probe intervals (× log10 n) to refute before it is dead")
	f.DurationVar(&joinTimeout, "join-timeout", 0, "fail if not all workers joined within this time (0 = wait forever)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug output on the console")
	addCheckpointFlags(f, &ckpt)
	cluster.AddRecoveryFlags(f, &recovery)
	addMonitorFlags(f, &monFlags)
	cli.AddTLSFlags(f, &tlsFiles, "this coordinator's")
	rootCmd.AddCommand(cmd)
}
