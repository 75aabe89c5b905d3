package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
)

// parseHosts turns "a:4,b:4" into workers on those hosts, in order.
func parseHosts(spec string) ([]cluster.WorkerInfo, error) {
	var ws []cluster.WorkerInfo
	for _, part := range strings.Split(spec, ",") {
		host, n, ok := strings.Cut(strings.TrimSpace(part), ":")
		slots, err := strconv.Atoi(n)
		if !ok || host == "" || err != nil || slots < 1 {
			return nil, fmt.Errorf("--hosts entry %q: want host:slots with slots ≥ 1 (e.g. node1:4,node2:4)", part)
		}
		for i := 0; i < slots; i++ {
			ws = append(ws, cluster.WorkerInfo{ID: fmt.Sprintf("w%d", len(ws)), Host: host})
		}
	}
	return ws, nil
}

// countHosts is the number of distinct hosts of ws.
func countHosts(ws []cluster.WorkerInfo) int {
	seen := map[string]bool{}
	for _, w := range ws {
		seen[w.Host] = true
	}
	return len(seen)
}

func init() {
	var (
		config, hosts string
		profile       string
		workers       int
	)
	cmd := &cobra.Command{
		Use:     "plan",
		Short:   "Print the parallel layout a job would get, without starting anything",
		Example: "  coordinator plan --workers 4 --config job.toml\n  coordinator plan --config job.toml --hosts node1:4,node2:4",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			job, err := loadJob(config, 0)
			if err != nil {
				return err
			}
			var ws []cluster.WorkerInfo
			if hosts != "" {
				if ws, err = parseHosts(hosts); err != nil {
					return err
				}
				if workers != 0 && workers != len(ws) {
					return fmt.Errorf("--workers %d but --hosts lists %d slots", workers, len(ws))
				}
			} else {
				if workers == 0 {
					workers = cluster.WorkersFor(job)
				}
				if workers < 1 {
					return fmt.Errorf("--workers N is required when [mesh] dp is auto (0)")
				}
				for i := 0; i < workers; i++ {
					ws = append(ws, cluster.WorkerInfo{ID: fmt.Sprintf("w%d", i), Host: "local"})
				}
			}
			p, err := cluster.MakePlan(cluster.PlanRequestFor(job), ws)
			if err != nil {
				return err
			}
			if err := cluster.FormatPlan(os.Stdout, p); err != nil || profile == "" {
				return err
			}
			return printPrediction(os.Stdout, job, p.Mesh, countHosts(ws), profile)
		},
	}
	cmd.AddCommand(newPlanAutoCmd())
	f := cmd.Flags()
	f.StringVar(&config, "config", "", "job TOML file (default: the reference model)")
	f.IntVar(&workers, "workers", 0, "number of workers (default: dp×sp×tp when dp is set)")
	f.StringVar(&hosts, "hosts", "", "simulate workers on hosts, host:slots,... (places TP/SP groups per host)")
	f.StringVar(&profile, "profile", "", "also print the step-time model's prediction (profile from coordinator calibrate)")
	rootCmd.AddCommand(cmd)
}
