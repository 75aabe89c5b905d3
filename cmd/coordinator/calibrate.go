package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/stepmodel"
)

func init() {
	var (
		out, config, cases string
		cores, steps, reps int
		rounds, warmup     int
		memGiB, interBW    float64
		interLat, linkLat  time.Duration
		linkBW             float64
		profile            string
		probe              bool
	)
	cmd := &cobra.Command{
		Use:   "calibrate",
		Short: "Measure this machine's profile for the step-time model (plan auto), or validate the model",
		Long: `Measure this machine's profile for the step-time model (docs/planner.md#calibration): GEMM
throughput by size on one kernel thread and the efficiency of more threads, the attention kernels,
elementwise memory traffic, the in-process link's cost per message and per byte, and the ratio of
a measured serial training step of --config to the kernel sum. Writes --out atomically.

With --validate CASES it instead measures each mesh of CASES (in-process ranks, --rounds rounds
interleaved) and prints the model's prediction against the measured median step time as a
Markdown table. CASES: "dp=2; tp=2,dp=2; ep=4,dp=4/shaped" (/shaped: links shaped to --link-bw
and --link-latency).`,
		Example: "  coordinator calibrate --out profile.json\n" +
			"  coordinator calibrate --profile profile.json --config stepmodel/testdata/validate.toml \\\n" +
			"      --validate 'dp=2; tp=2; dp=2,ep=2/shaped' --link-bw 50e6 --link-latency 200us",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			job, err := loadJob(config, 0)
			if err != nil {
				return err
			}
			logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
			ctx, stop := signalContext()
			defer stop()
			if cases != "" {
				if profile == "" {
					return fmt.Errorf("--validate needs --profile (run calibrate --out first)")
				}
				p, err := stepmodel.Load(profile)
				if err != nil {
					return err
				}
				cs, err := stepmodel.ParseCases(cases, stepmodel.Shape{Bandwidth: linkBW, Latency: linkLat})
				if err != nil {
					return fmt.Errorf("--validate: %w", err)
				}
				if rounds < 1 || steps < 1 || warmup < 0 {
					return fmt.Errorf("--rounds %d and --steps %d must be ≥ 1, --warmup %d ≥ 0", rounds, steps, warmup)
				}
				rows, err := stepmodel.Validate(ctx, job, cs, p, rounds, steps, warmup, probe, logf)
				if err != nil {
					return err
				}
				stepmodel.WriteTable(os.Stdout, job, rows)
				return nil
			}
			if out == "" {
				return fmt.Errorf("--out FILE is required")
			}
			if memGiB <= 0 || interBW <= 0 || interLat < 0 || steps < 1 || reps < 1 {
				return fmt.Errorf("--rank-memory-gib %v and --inter-bw %v must be > 0, --inter-latency %v ≥ 0, --steps %d and --reps %d ≥ 1",
					memGiB, interBW, interLat, steps, reps)
			}
			p, err := stepmodel.Calibrate(ctx, stepmodel.CalibrateOptions{
				Cores: cores, RankMemory: memGiB * (1 << 30), Job: job, Steps: steps, Reps: reps, Log: logf,
				Inter: stepmodel.Link{Alpha: interLat.Seconds(), Beta: 1 / interBW},
			})
			if err != nil {
				return err
			}
			if err := p.Save(out); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "profile written to %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "profile file to write")
	f.StringVar(&config, "config", "", "job TOML file whose serial step calibrates the compute scale, or whose meshes --validate runs (default: the reference model)")
	f.IntVar(&cores, "cores", 0, "cores of this host (0 = all the runtime sees)")
	f.IntVar(&steps, "steps", 20, "timed steps per measurement")
	f.IntVar(&reps, "reps", 5, "repetitions of each micro-benchmark (median)")
	f.Float64Var(&memGiB, "rank-memory-gib", 8, "memory one rank may use, GiB")
	f.Float64Var(&interBW, "inter-bw", 1.25e9, "inter-host link bandwidth in bytes/s (not measurable on one host)")
	f.DurationVar(&interLat, "inter-latency", 20*time.Microsecond, "inter-host link latency")
	f.StringVar(&cases, "validate", "", "meshes to measure against the model instead of calibrating")
	f.StringVar(&profile, "profile", "", "profile file (with --validate)")
	f.IntVar(&rounds, "rounds", 3, "with --validate: rounds over every case")
	f.IntVar(&warmup, "warmup", 3, "with --validate: untimed steps before each measurement")
	f.BoolVar(&probe, "probe-cores", true, "with --validate: measure the available cores again before each run (a shared host's change by the minute)")
	f.Float64Var(&linkBW, "link-bw", 0, "with --validate: bandwidth of shaped links, bytes/s")
	f.DurationVar(&linkLat, "link-latency", 0, "with --validate: one-way latency of shaped links")
	rootCmd.AddCommand(cmd)
}
