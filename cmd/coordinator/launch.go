package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/launch"
	"github.com/moetrain/moetrain/cluster/worker"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/cli"
	"github.com/moetrain/moetrain/parallel"
)

// workerProcessCmd is the hidden subcommand `coordinator launch` re-executes
// itself as for each worker, so one binary (also under `go run`) holds both.
// It behaves exactly like `worker --join`.
const workerProcessCmd = "worker-process"

func init() {
	var (
		config, runDir      string
		congestion          string
		workers, steps, thr int
		verbose, noBar      bool
		grace               time.Duration
		ckpt                cluster.CheckpointConfig
		recovery            cluster.RecoveryPolicy
		monFlags            monitorFlags
	)
	cmd := &cobra.Command{
		Use:   "launch",
		Short: "Run a job locally: an in-process coordinator and N worker processes, with a progress bar",
		Long: `Run a job locally: an in-process coordinator and N worker processes (this binary re-executed),
data parallel over the workers, each with a kernel thread budget of cores/N. Progress (step, loss,
validation loss, tokens/s, ETA) is shown as a bar on a terminal, as lines otherwise.

The run directory gets job.toml (the effective config), coordinator.log and worker-<i>.log (JSON
lines), worker-<i>.out (each worker's console), summary.json (outcome, plan, curve, expert load,
exits), the PNG plots of coordinator plot and tls/: the job's CA and certificates (the control
plane is mutual TLS; operator.pem serves coordinator status and stop).
Ctrl-C stops the job on every worker; processes still running after --grace get SIGTERM, then
SIGKILL. With --max-restarts, a worker process that dies or hangs is killed and started again.
` + checkpointHelp,
		Example: "  coordinator launch --workers 2\n" +
			"  coordinator launch --workers 4 --config job.toml --steps 200 --run-dir runs/try1\n" +
			"  coordinator launch --workers 2 --checkpoint-dir ckpt --checkpoint-every 50 --checkpoint-keep 3\n" +
			"  coordinator launch --workers 2 --checkpoint-dir ckpt --checkpoint-every 50 --resume latest",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 1 {
				return fmt.Errorf("--workers %d: need at least 1", workers)
			}
			if thr < 0 {
				return fmt.Errorf("--threads %d: must be ≥ 0 (0 = cores/workers)", thr)
			}
			// Checked here, so that a name the kernel refuses fails the
			// launch at once instead of every worker after it started.
			if err := collective.CheckCongestion(congestion); err != nil {
				return fmt.Errorf("--tcp-congestion: %w", err)
			}
			job, err := loadJob(config, steps)
			if err != nil {
				return err
			}
			if err := ckpt.Validate(); err != nil {
				return err
			}
			if err := cluster.CheckRunnable(job); err != nil {
				return err
			}
			if err := cluster.CheckLayout(job, workers); err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("locate this binary to start workers: %w", err)
			}
			lg, closer, err := openRunDir(&runDir, zerolog.WarnLevel, verbose)
			if err != nil {
				return err
			}
			defer closer.Close()
			layout := "?"
			if m, err := parallel.NewMesh(job.Mesh, workers); err == nil { // CheckLayout accepted it
				layout = m.String()
			}
			fmt.Fprintf(os.Stderr, "launching %d workers (%s) for %d steps; run directory %s\n", workers, layout, job.Train.Steps, runDir)
			mon, err := startMonitor(monFlags, job, workers)
			if err != nil {
				return err
			}
			defer mon.stop()
			ctx, stop := signalContext()
			defer stop()
			_, err = launch.Launch(ctx, launch.LaunchConfig{
				Workers: workers, Job: job, RunDir: runDir, Threads: thr, Console: os.Stderr,
				Bar: !noBar && term.IsTerminal(int(os.Stderr.Fd())), Log: lg, Grace: grace,
				Membership: cluster.DefaultMembershipConfig(), Checkpoint: ckpt, Metrics: mon.metrics, Recovery: recovery,
				WorkerCmd: func(args ...string) *exec.Cmd {
					return exec.Command(exe, append([]string{workerProcessCmd, "--tcp-congestion", congestion}, args...)...)
				},
			})
			mon.jobEnded()
			fmt.Fprintf(os.Stderr, "logs and summary.json in %s\n", runDir)
			plotRun(runDir, lg)
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&workers, "workers", 2, "number of worker processes")
	f.StringVar(&config, "config", "", "job TOML file (default: the reference model on the embedded corpus)")
	f.IntVar(&steps, "steps", 0, "override train.steps")
	f.StringVar(&runDir, "run-dir", "", "run directory (default runs/<timestamp>)")
	f.IntVar(&thr, "threads", 0, "kernel threads per worker (0 = cores/workers, at least 1)")
	f.DurationVar(&grace, "grace", 10*time.Second, "how long workers get to exit before SIGTERM, then SIGKILL")
	f.BoolVar(&noBar, "no-bar", false, "print progress lines instead of a progress bar")
	f.BoolVarP(&verbose, "verbose", "v", false, "coordinator debug output on the console")
	f.StringVar(&congestion, "tcp-congestion", "", "TCP congestion control of the workers' data plane: a comma-separated list of kernel names, the first accepted wins, or "+collective.CongestionSystem+" for the system's (default "+collective.DefaultCongestion+")")
	addCheckpointFlags(f, &ckpt)
	cluster.AddRecoveryFlags(f, &recovery)
	addMonitorFlags(f, &monFlags)
	rootCmd.AddCommand(cmd)

	var wo worker.WorkerOptions
	wcmd := internalCmd(workerProcessCmd, "Run as a worker process (used by launch; same as `worker --join`)", func(*cobra.Command) error {
		return cli.RunWorker(wo)
	})
	cli.AddWorkerFlags(wcmd.Flags(), &wo)
	rootCmd.AddCommand(wcmd)
}

// checkpointHelp is the checkpoint paragraph of launch's and serve's help.
const checkpointHelp = `
Checkpoints (--checkpoint-dir): after every --checkpoint-every steps and after the last, every
rank writes its own shard into DIR/step-N.tmp in the background while training goes on; when
every rank has reported its shard, the coordinator writes the manifest and publishes the step
atomically (DIR/step-N, then DIR/LATEST) and keeps the newest --checkpoint-keep. A crash at any
moment leaves the previous checkpoint loadable; leftovers are removed at the next start. The
directory must have the same path on the coordinator and every worker (a shared file system).
--resume latest|STEP|PATH restores every rank (model, optimizer incl. ZeRO-1 shards, schedule,
step, sampler position, routing biases) before the first step, so the run continues bitwise as
if never interrupted; "latest" falls back past damaged checkpoints and says so.`

// addCheckpointFlags registers the checkpoint flags of launch and serve.
func addCheckpointFlags(f *pflag.FlagSet, c *cluster.CheckpointConfig) {
	f.StringVar(&c.Dir, "checkpoint-dir", "", "checkpoint directory (shared by the coordinator and every worker); empty = no checkpoints")
	f.IntVar(&c.Every, "checkpoint-every", 0, "save every N steps (and after the last); 0 = after the last step only")
	f.IntVar(&c.Keep, "checkpoint-keep", 0, "keep the newest N committed checkpoints; 0 = all")
	f.StringVar(&c.Resume, "resume", "", "resume from latest (in --checkpoint-dir), a STEP of it, or a checkpoint PATH")
}
