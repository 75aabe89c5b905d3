package stepmodel

import (
	"fmt"
	"sort"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
)

// Enumerate lists every mesh of exactly workers ranks that the planner
// accepts for job (cluster.LayoutProblems) and whose job validates with it
// (model shards, sequence chunks, memory bound), in (tp, sp, ep) order.
func Enumerate(job train.JobConfig, workers int) ([]parallel.Mesh, error) {
	if workers < 1 {
		return nil, fmt.Errorf("stepmodel: %d workers: need at least 1", workers)
	}
	req := cluster.PlanRequestFor(job)
	var out []parallel.Mesh
	for m := range parallel.Layouts(workers) {
		c := job.Mesh
		c.DP, c.TP, c.SP, c.EP = m.DP, m.TP, m.SP, m.EP
		if len(cluster.LayoutProblems(c, req, workers)) > 0 {
			continue
		}
		j := job
		j.Mesh = c
		if j.Validate() == nil {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("stepmodel: no valid mesh of %d workers for this job (heads %d, experts %d, seq_len %d)",
			workers, job.Model.Heads, job.Model.Experts, job.Data.SeqLen)
	}
	return out, nil
}

// Rank predicts every mesh and orders them by predicted tokens/s, those that
// fit in memory first.
func Rank(job train.JobConfig, meshes []parallel.Mesh, hosts int, p *Profile) ([]Breakdown, error) {
	var out []Breakdown
	for _, m := range meshes {
		if hosts < 1 || m.World()%hosts != 0 {
			return nil, fmt.Errorf("stepmodel: %d ranks do not split evenly over %d hosts", m.World(), hosts)
		}
		b, err := Predict(job, m, Topology{Hosts: hosts, RanksPerHost: m.World() / hosts}, p)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Fits != out[j].Fits {
			return out[i].Fits
		}
		return out[i].TokensPerSec > out[j].TokensPerSec
	})
	return out, nil
}
