package cluster

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

// ExpertLoadPoint is one logged step's expert load: Layers[l][e] is the
// number of slots expert e of MoE layer l processed (after capacity) over the
// whole job's batch of that step. Every rank of a mesh logs the same global
// counts (they are summed over the data- and sequence-parallel plane), so one
// worker's log holds the job's series.
type ExpertLoadPoint struct {
	Step   int     `json:"step"`
	Layers [][]int `json:"layers"`
}

// ReadExpertLoad returns the expert load of every "step" record of a
// worker's JSON log (train.LogRouterLoad's expert_load, written every
// train.log_every steps and at step 1), ordered by step, the last record of
// a step winning. Lines that are not JSON records (a torn last line) are
// skipped; a log without such records gives an empty series.
func ReadExpertLoad(path string) ([]ExpertLoadPoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("expert load: %w", err)
	}
	defer f.Close()
	byStep := map[int][][]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for sc.Scan() {
		var rec struct {
			Message    string  `json:"message"`
			Step       *int    `json:"step"`
			ExpertLoad [][]int `json:"expert_load"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Message != "step" || rec.Step == nil || len(rec.ExpertLoad) == 0 {
			continue
		}
		byStep[*rec.Step] = rec.ExpertLoad
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("expert load: %s: %w", path, err)
	}
	out := make([]ExpertLoadPoint, 0, len(byStep))
	for s, l := range byStep {
		out = append(out, ExpertLoadPoint{Step: s, Layers: l})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Step < out[j].Step })
	return out, nil
}

// ExpertLoadFromLogs is the expert-load series of the first of logs that
// has one (see ReadExpertLoad); unreadable logs are skipped, and their errors
// returned only when no log has a series.
func ExpertLoadFromLogs(logs []string) ([]ExpertLoadPoint, error) {
	var firstErr error
	for _, p := range logs {
		pts, err := ReadExpertLoad(p)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if len(pts) > 0 {
			return pts, nil
		}
	}
	return nil, firstErr
}
