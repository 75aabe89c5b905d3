// Package runplot draws the PNG plots of a run directory written by
// `coordinator launch`: the training and validation loss, the throughput and
// the expert load of every MoE layer against the step, from summary.json
// (and, for runs whose summary lacks the expert load, the worker logs).
//
// It must not read anything but the run directory's files.
package runplot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/moetrain/moetrain/cluster"
)

// Files written by Write, in the output directory.
const (
	LossFile          = "loss.png"           // training and validation loss
	ThroughputFile    = "throughput.png"     // tokens/s
	ExpertLoadFile    = "expert_load.png"    // per layer: each expert's load / mean, a heatmap over steps
	ExpertBalanceFile = "expert_balance.png" // per layer: the largest expert's load / mean over steps
)

// Point is one step's value of a curve.
type Point struct {
	Step  int
	Value float64
}

// Run is what the plots show of one run.
type Run struct {
	Name       string  // the job id (the run directory's name)
	Loss       []Point // training loss (as the coordinator's curve records it)
	Val        []Point // validation loss
	Throughput []Point // tokens/s of the whole job
	// ExpertLoad is the per-layer, per-expert load of the logged steps.
	ExpertLoad []cluster.ExpertLoadPoint
}

// Load reads dir/summary.json. When the summary holds no expert load (a run
// of an older version), it is read from dir/worker-*.log instead.
func Load(dir string) (*Run, error) {
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		return nil, fmt.Errorf("run %s: %w (is it a run directory of coordinator launch?)", dir, err)
	}
	var s cluster.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("run %s: summary.json: %w", dir, err)
	}
	r := FromSummary(s)
	if r.Name == "" {
		r.Name = filepath.Base(filepath.Clean(dir))
	}
	if len(r.ExpertLoad) == 0 {
		logs, _ := filepath.Glob(filepath.Join(dir, "worker-*.log"))
		sort.Strings(logs)
		r.ExpertLoad, _ = cluster.ExpertLoadFromLogs(logs) // none: no expert-load plots
	}
	return r, nil
}

// FromSummary extracts the curves of a launch's summary: the coordinator's
// curve has one point per reported step (loss, tokens/s) and one per
// validation (val_loss set).
func FromSummary(s cluster.Summary) *Run {
	r := &Run{Name: s.JobID, ExpertLoad: s.ExpertLoad}
	for _, p := range s.Curve {
		if p.ValLoss != nil {
			r.Val = append(r.Val, Point{p.Step, *p.ValLoss})
			continue
		}
		r.Loss = append(r.Loss, Point{p.Step, p.Loss})
		if p.TokensPerSec > 0 {
			r.Throughput = append(r.Throughput, Point{p.Step, p.TokensPerSec})
		}
	}
	return r
}

// ErrNoCurve is returned by Write for a run that recorded no step.
var ErrNoCurve = errors.New("the run recorded no training step: nothing to plot")

// Write draws the plots of r into outDir (created if needed) and returns the
// files written. The throughput and expert-load plots are left out when r
// has none recorded.
func Write(r *Run, outDir string) ([]string, error) {
	if len(r.Loss) == 0 && len(r.Val) == 0 {
		return nil, ErrNoCurve
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("plots: %w", err)
	}
	type job struct {
		file string
		draw func(string) error
	}
	jobs := []job{{LossFile, func(f string) error { return lossPlot(r, f) }}}
	if len(r.Throughput) > 0 {
		jobs = append(jobs, job{ThroughputFile, func(f string) error { return throughputPlot(r, f) }})
	}
	if len(consistent(r.ExpertLoad)) > 0 {
		jobs = append(jobs,
			job{ExpertLoadFile, func(f string) error { return expertLoadPlot(r, f) }},
			job{ExpertBalanceFile, func(f string) error { return expertBalancePlot(r, f) }})
	}
	var written []string
	for _, j := range jobs {
		f := filepath.Join(outDir, j.file)
		if err := j.draw(f); err != nil {
			return written, fmt.Errorf("plot %s: %w", f, err)
		}
		written = append(written, f)
	}
	return written, nil
}

// WriteDir is Load(runDir) then Write into outDir ("" = runDir).
func WriteDir(runDir, outDir string) ([]string, error) {
	r, err := Load(runDir)
	if err != nil {
		return nil, err
	}
	if outDir == "" {
		outDir = runDir
	}
	return Write(r, outDir)
}
