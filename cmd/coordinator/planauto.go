package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/stepmodel"
	"github.com/moetrain/moetrain/train"
)

// newPlanAutoCmd is `plan auto`: rank every valid mesh by predicted tokens/s.
func newPlanAutoCmd() *cobra.Command {
	var (
		config, profile, write string
		workers, hosts, top    int
	)
	cmd := &cobra.Command{
		Use:   "auto",
		Short: "Pick the mesh with the best predicted tokens/s that fits in memory",
		Long: `Enumerate every mesh the planner accepts for --workers ranks on --hosts hosts, predict each
one's step with the step-time model of --profile (coordinator calibrate writes one; docs/planner.md),
print the --top best that fit in memory with their breakdown (compute, exposed communication per
dimension, memory per rank), and with --write save the job with the chosen [mesh].`,
		Example: "  coordinator plan auto --workers 4 --profile profile.json --config job.toml --write job-auto.toml\n" +
			"  coordinator plan auto --workers 1024 --hosts 128 --profile h100.json --config big.toml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			if workers < 1 || hosts < 1 || workers%hosts != 0 || top < 1 {
				return fmt.Errorf("--workers %d and --hosts %d: need workers ≥ 1 a multiple of hosts ≥ 1, and --top %d ≥ 1", workers, hosts, top)
			}
			if profile == "" {
				return fmt.Errorf("--profile FILE is required (write one with coordinator calibrate --out FILE)")
			}
			p, err := stepmodel.Load(profile)
			if err != nil {
				return err
			}
			job, err := loadJob(config, 0)
			if err != nil {
				return err
			}
			meshes, err := stepmodel.Enumerate(job, workers)
			if err != nil {
				return err
			}
			ranked, err := stepmodel.Rank(job, meshes, hosts, p)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d valid meshes of %d workers on %d host(s) (%s, rank memory %s); best %d by predicted tokens/s:\n",
				len(meshes), workers, hosts, p.Device, model.FormatBytes(p.RankMemory), min(top, len(ranked)))
			for i, b := range ranked[:min(top, len(ranked))] {
				note := ""
				if !b.Fits {
					note = "  (does not fit in memory)"
				}
				fmt.Fprintf(out, "%2d. %v%s\n", i+1, b, note)
			}
			best := ranked[0]
			if !best.Fits {
				return fmt.Errorf("no mesh of %d workers fits in %s per rank; the smallest needs %s",
					workers, model.FormatBytes(p.RankMemory), model.FormatBytes(smallestMemory(ranked)))
			}
			fmt.Fprintf(out, "chosen: [mesh] dp = %d, sp = %d, tp = %d, ep = %d  (planned in %v)\n",
				best.Mesh.DP, best.Mesh.SP, best.Mesh.TP, best.Mesh.EP, time.Since(start).Round(time.Millisecond))
			if write != "" {
				if err := stepmodel.WriteJob(write, job, best.Mesh); err != nil {
					return err
				}
				fmt.Fprintf(out, "wrote %s\n", write)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&config, "config", "", "job TOML file (default: the reference model)")
	f.StringVar(&profile, "profile", "", "step-time model profile (coordinator calibrate --out)")
	f.StringVar(&write, "write", "", "write the job with the chosen [mesh] to this TOML file")
	f.IntVar(&workers, "workers", 0, "number of workers (ranks)")
	f.IntVar(&hosts, "hosts", 1, "number of hosts the workers are spread over evenly")
	f.IntVar(&top, "top", 5, "how many meshes to print")
	return cmd
}

func smallestMemory(bs []stepmodel.Breakdown) float64 {
	m := bs[0].Memory
	for _, b := range bs {
		m = min(m, b.Memory)
	}
	return m
}

// printPrediction prints the model's prediction for an explicit mesh (plan
// --profile): ranks spread over hosts hosts.
func printPrediction(w io.Writer, job train.JobConfig, m parallel.Mesh, hosts int, profile string) error {
	p, err := stepmodel.Load(profile)
	if err != nil {
		return err
	}
	if hosts < 1 || m.World()%hosts != 0 {
		return fmt.Errorf("predict: %d ranks do not split evenly over %d hosts", m.World(), hosts)
	}
	b, err := stepmodel.Predict(job, m, stepmodel.Topology{Hosts: hosts, RanksPerHost: m.World() / hosts}, p)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "predicted (%s): %v\n", p.Device, b)
	return nil
}
