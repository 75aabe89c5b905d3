package worker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/moe"
)

// scrape GETs url and returns its samples by series ("name{labels}").
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("GET %s: bad sample line %q", url, line)
		}
		out[line[:i]] = v
	}
	return out
}

// metricsRunner reports steps 1..Steps with phase times and an expert load
// that are functions of rank and step; at step pause it waits for release
// (the test scrapes meanwhile).
func metricsRunner(pause int, release <-chan struct{}) Runner {
	return func(ctx context.Context, spec StartSpec) error {
		var tally loadTally
		r := float64(spec.Rank)
		for s := 1; s <= spec.Job.Train.Steps; s++ {
			st, err := moe.NewLoadStats([]int{s, 2 * s, 3, 4}, 10, 20, s, 2)
			if err != nil {
				return err
			}
			u := ProgressUpdate{Step: s, Loss: 5 - float64(s)/8, TokensPerSec: 100 + r, Tokens: int64(32 * s),
				HasVal: s == pause || s == spec.Job.Train.Steps, ValLoss: 4 - float64(s)/16,
				Phases: metrics.Phases{Data: float64(s) / 8, Compute: r + float64(s), Checkpoint: 0.5, Validation: float64(s) / 4},
				Load:   tally.add([]moe.LoadStats{st, st})}
			spec.Report(u)
			if s == pause {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		return nil
	}
}

// TestMetricsDuringJob serves a job's metrics over HTTP, scrapes them while
// the job is paused at a step and after it ended, and checks the values
// against what the runners reported and the job's result.
func TestMetricsDuringJob(t *testing.T) {
	job := jobtest.TinyJob()
	m, err := metrics.New(cluster.MetricsLimits(job, 2))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := metrics.Serve("127.0.0.1:0", m)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	url := "http://" + srv.Addr() + "/metrics"
	release := make(chan struct{})
	var during map[string]float64
	r := runJobWith(t, 2, metricsRunner(3, release), func(c *cluster.Coordinator) {
		defer close(release)
		deadline := time.Now().Add(10 * time.Second)
		for {
			during = scrape(t, url)
			if during[`moetrain_worker_step{rank="0"}`] == 3 && during[`moetrain_worker_step{rank="1"}`] == 3 && during["moetrain_step"] == 3 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("the metrics never showed both ranks at step 3: %v", during)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}, func(cfg *cluster.CoordinatorConfig) { cfg.Metrics = m })
	if r.Err != nil || r.Res.Phase != cluster.PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.Res, r.Err)
	}
	// Paused at step 3: the values of step 3 (every rank sent it: it has a
	// validation loss).
	for k, want := range map[string]float64{
		"moetrain_loss": 5 - 3.0/8, "moetrain_validation_loss": 4 - 3.0/16, "moetrain_validation_step": 3,
		"moetrain_tokens_per_second": 201, `moetrain_worker_tokens_total{rank="1"}`: 96,
		`moetrain_job_phase{phase="running"}`: 1, `moetrain_workers{state="running"}`: 2, "moetrain_total_steps": 5,
		`moetrain_worker_step_phase_seconds_total{phase="compute",rank="1"}`: 4,
		`moetrain_expert_load_slots{expert="1",layer="0"}`:                   6, `moetrain_dropped_slots_total{layer="1"}`: 1 + 2 + 3,
		`moetrain_routed_slots_total{layer="0"}`: 60, "moetrain_resumed_step": 0,
	} {
		if got, ok := during[k]; !ok || got != want {
			t.Errorf("during the job: %s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	// After the end: the job's own result, and each rank's last report.
	s, after := r.Res.Status, scrape(t, url)
	for k, want := range map[string]float64{
		"moetrain_step": float64(s.Step), "moetrain_loss": s.Loss, "moetrain_tokens_per_second": s.TokensPerSec,
		"moetrain_validation_loss": s.ValLoss, "moetrain_validation_step": float64(s.ValStep),
		`moetrain_job_phase{phase="succeeded"}`: 1, `moetrain_job_phase{phase="running"}`: 0,
		`moetrain_worker_tokens_per_second{rank="0"}`: s.Workers[0].TokensPerSec,
		`moetrain_worker_tokens_per_second{rank="1"}`: s.Workers[1].TokensPerSec,
		`moetrain_worker_step{rank="1"}`:              5, `moetrain_worker_tokens_total{rank="0"}`: 160,
		`moetrain_worker_step_phase_seconds_total{phase="data",rank="0"}`:       5.0 / 8,
		`moetrain_worker_step_phase_seconds_total{phase="validation",rank="1"}`: 5.0 / 4,
		`moetrain_worker_step_phase_seconds_total{phase="checkpoint",rank="1"}`: 0.5,
		"moetrain_expert_load_step": 5, `moetrain_expert_load_slots{expert="0",layer="1"}`: 5,
		`moetrain_dropped_slots_total{layer="0"}`: 15, `moetrain_routed_slots_total{layer="1"}`: 100,
	} {
		if got, ok := after[k]; !ok || got != want {
			t.Errorf("after the job: %s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if s.Step != 5 || s.Loss != 5-5.0/8 || s.TokensPerSec != 201 {
		t.Errorf("the job's status %+v is not what the runners reported", s)
	}
}

// TestMetricsRefusedReport: a report for a rank beyond the job's is not
// recorded (no unbounded label values), and the job goes on.
func TestMetricsRefusedReport(t *testing.T) {
	m, err := metrics.New(metrics.Limits{Ranks: 1, Layers: 1, Experts: 4})
	if err != nil {
		t.Fatal(err)
	}
	// Two workers, limits for one: rank 1's reports are refused; and the
	// runner's two-layer load exceeds the one layer allowed, so rank 0's
	// are too.
	r := runJobWith(t, 2, metricsRunner(0, nil), nil, func(cfg *cluster.CoordinatorConfig) { cfg.Metrics = m })
	if r.Err != nil || r.Res.Phase != cluster.PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.Res, r.Err)
	}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "moetrain_worker_") || strings.HasPrefix(mf.GetName(), "moetrain_expert_") {
			t.Errorf("%s recorded from refused reports: %v", mf.GetName(), mf.GetMetric())
		}
		if mf.GetName() == "moetrain_step" && fmt.Sprint(mf.GetMetric()[0].GetGauge().GetValue()) != "5" {
			t.Errorf("job status not recorded: %v", mf)
		}
	}
}
