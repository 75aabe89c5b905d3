package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

func newTest(t *testing.T, lim Limits) *Metrics {
	t.Helper()
	m, err := New(lim)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// exposition is the text format of the moetrain_ series of m.
func exposition(t *testing.T, m *Metrics) string {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "moetrain_") {
			if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b.String()
}

// TestExposition feeds one of everything and compares the scrape with the
// series written out by hand (testdata/exposition.txt).
func TestExposition(t *testing.T) {
	m := newTest(t, Limits{Ranks: 2, Layers: 2, Experts: 3})
	m.SetStart(time.Unix(1700000000, 500e6), 40)
	if err := m.SetJob(Job{Phase: "running", Step: 7, TotalSteps: 20, Loss: 2.5, TokensPerSec: 300, HasVal: true, ValLoss: 2.75, ValStep: 5,
		Workers: map[string]int{"running": 2}}); err != nil {
		t.Fatal(err)
	}
	w0 := Worker{Rank: 0, Step: 7, TokensPerSec: 140, Tokens: 896, Phases: Phases{Data: 0.25, Compute: 3.5, Checkpoint: 0.125, Validation: 0.5},
		Load: []LayerLoad{{PerExpert: []int64{10, 20, 30}, MaxMean: 1.5, Imbalance: 0.25, SlotsTotal: 420, DroppedTotal: 6},
			{PerExpert: []int64{20, 20, 20}, MaxMean: 1, Imbalance: 0, SlotsTotal: 420, DroppedTotal: 0}}}
	if err := m.SetWorker(w0); err != nil {
		t.Fatal(err)
	}
	if err := m.SetWorker(Worker{Rank: 1, Step: 6, TokensPerSec: 160, Tokens: 768, Phases: Phases{Compute: 3}}); err != nil {
		t.Fatal(err)
	}
	m.CheckpointPublished(5, 4096, 250*time.Millisecond)
	if err := m.CheckpointNotPublished("dropped"); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/exposition.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got := exposition(t, m); got != string(want) {
		t.Errorf("exposition differs:\n%s", lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// TestEmptyBeforeStart: a registry with nothing recorded has no job series
// (no made-up zeros for step or loss), only the checkpoint counters.
func TestEmptyBeforeStart(t *testing.T) {
	m := newTest(t, Limits{Ranks: 1})
	got := exposition(t, m)
	for _, absent := range []string{"moetrain_step ", "moetrain_loss", "moetrain_start_time_seconds", "moetrain_worker_", "moetrain_expert_load"} {
		if strings.Contains(got, absent) {
			t.Errorf("%q before anything was recorded:\n%s", absent, got)
		}
	}
	if !strings.Contains(got, `moetrain_checkpoints_total{result="published"} 0`) {
		t.Errorf("no zero checkpoint counter:\n%s", got)
	}
	// Step 0: no loss yet.
	if err := m.SetJob(Job{Phase: "waiting", TotalSteps: 3}); err != nil {
		t.Fatal(err)
	}
	if got := exposition(t, m); strings.Contains(got, "moetrain_loss") || !strings.Contains(got, "moetrain_step 0") {
		t.Errorf("step 0:\n%s", got)
	}
}

// TestLint runs the Prometheus naming and help linter over every series.
func TestLint(t *testing.T) {
	m := newTest(t, Limits{Ranks: 1, Layers: 1, Experts: 2})
	m.SetStart(time.Now(), 0)
	must(t, m.SetJob(Job{Phase: "running", Step: 1, HasVal: true, Workers: map[string]int{"running": 1}}))
	must(t, m.SetWorker(Worker{Rank: 0, Step: 1, Load: []LayerLoad{{PerExpert: []int64{1, 2}}}}))
	m.CheckpointPublished(1, 10, time.Millisecond)
	probs, err := testutil.CollectAndLint(m.col)
	if err != nil {
		t.Fatal(err)
	}
	hp, err := testutil.CollectAndLint(m.commit)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(probs, hp...) {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRefusesUnbounded: a report outside the limits, or with values no
// rank can have, is refused whole and changes nothing.
func TestRefusesUnbounded(t *testing.T) {
	m := newTest(t, Limits{Ranks: 2, Layers: 1, Experts: 2})
	must(t, m.SetWorker(Worker{Rank: 1, Step: 3, Tokens: 10, Load: []LayerLoad{{PerExpert: []int64{1, 2}}}}))
	before := exposition(t, m)
	one := []LayerLoad{{PerExpert: []int64{5, 5}}}
	for name, w := range map[string]Worker{
		"rank beyond":        {Rank: 2, Step: 4},
		"negative rank":      {Rank: -1, Step: 4},
		"too many layers":    {Rank: 0, Step: 4, Load: append(one, one...)},
		"too many experts":   {Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 2, 3}}}},
		"negative step":      {Rank: 0, Step: -1},
		"negative tokens":    {Rank: 0, Step: 4, Tokens: -1},
		"NaN rate":           {Rank: 0, Step: 4, TokensPerSec: math.NaN()},
		"infinite phase":     {Rank: 0, Step: 4, Phases: Phases{Compute: math.Inf(1)}},
		"negative phase":     {Rank: 0, Step: 4, Phases: Phases{Data: -1}},
		"negative dropped":   {Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 1}, DroppedTotal: -1}}},
		"NaN imbalance":      {Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 1}, Imbalance: math.NaN()}}},
		"infinite max/mean":  {Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 1}, MaxMean: math.Inf(1)}}},
		"negative slots sum": {Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 1}, SlotsTotal: -5}}},
	} {
		if err := m.SetWorker(w); err == nil {
			t.Errorf("%s: accepted %+v", name, w)
		}
	}
	if got := exposition(t, m); got != before {
		t.Errorf("a refused report changed the metrics:\n%s", lineDiff(before, got))
	}
	if _, err := New(Limits{Ranks: 0}); err == nil {
		t.Error("New accepted 0 ranks")
	}
	if err := m.CheckpointNotPublished("lost"); err == nil {
		t.Error("checkpoint result \"lost\" accepted")
	}
	// Phases and states: at most maxEnumValues distinct values, ever.
	for i := 0; i < maxEnumValues; i++ {
		must(t, m.SetJob(Job{Phase: fmt.Sprint("p", i)}))
	}
	must(t, m.SetJob(Job{Phase: "p0"}))
	if err := m.SetJob(Job{Phase: "one too many"}); !errors.Is(err, errTooMany) {
		t.Errorf("phase %d: %v, want errTooMany", maxEnumValues+1, err)
	}
	states := map[string]int{}
	for i := 0; i <= maxEnumValues; i++ {
		states[fmt.Sprint("s", i)] = 1
	}
	if err := m.SetJob(Job{Phase: "p0", Workers: states}); !errors.Is(err, errTooMany) {
		t.Errorf("%d worker states: %v, want errTooMany", len(states), err)
	}
	if n := strings.Count(exposition(t, m), "moetrain_job_phase{"); n != maxEnumValues {
		t.Errorf("%d phase series, want %d", n, maxEnumValues)
	}
}

// TestLoadOfHighestStep: ranks report the same global load in any order;
// the series shows the newest step's, not the last report's.
func TestLoadOfHighestStep(t *testing.T) {
	m := newTest(t, Limits{Ranks: 2, Layers: 1, Experts: 2})
	must(t, m.SetWorker(Worker{Rank: 1, Step: 5, Load: []LayerLoad{{PerExpert: []int64{7, 9}, SlotsTotal: 80}}}))
	must(t, m.SetWorker(Worker{Rank: 0, Step: 4, Load: []LayerLoad{{PerExpert: []int64{1, 1}, SlotsTotal: 64}}}))
	must(t, m.SetWorker(Worker{Rank: 0, Step: 5})) // no load: keeps the series
	got := exposition(t, m)
	for _, want := range []string{`moetrain_expert_load_slots{expert="1",layer="0"} 9`, `moetrain_routed_slots_total{layer="0"} 80`,
		"moetrain_expert_load_step 5", `moetrain_worker_step{rank="0"} 5`} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("lacks %q:\n%s", want, got)
		}
	}
	// The caller's slices are copied: changing them later changes nothing.
	per := []int64{3, 3}
	must(t, m.SetWorker(Worker{Rank: 0, Step: 6, Load: []LayerLoad{{PerExpert: per}}}))
	per[0] = 100
	if got := exposition(t, m); !strings.Contains(got, `moetrain_expert_load_slots{expert="0",layer="0"} 3`+"\n") {
		t.Errorf("the recorded load aliases the caller's slice:\n%s", got)
	}
}

// TestConcurrent records from many goroutines while scraping (run with
// -race to check the locking).
func TestConcurrent(t *testing.T) {
	m := newTest(t, Limits{Ranks: 4, Layers: 2, Experts: 4})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Go(func() {
			for s := 1; s <= 200; s++ {
				load := []LayerLoad{{PerExpert: []int64{1, 2, 3, 4}}, {PerExpert: []int64{4, 3, 2, 1}}}
				if err := m.SetWorker(Worker{Rank: r, Step: s, Tokens: int64(s), Load: load}); err != nil {
					t.Error(err)
					return
				}
				if err := m.SetJob(Job{Phase: "running", Step: s, Workers: map[string]int{"running": 4}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < 50; i++ {
			if _, err := m.Registry().Gather(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	if got := exposition(t, m); !strings.Contains(got, `moetrain_worker_tokens_total{rank="3"} 200`+"\n") {
		t.Errorf("final scrape:\n%s", got)
	}
}

func TestServer(t *testing.T) {
	m := newTest(t, Limits{Ranks: 1})
	must(t, m.SetJob(Job{Phase: "running", Step: 3, Loss: 1.25}))
	s, err := Serve("127.0.0.1:0", m)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string, error) {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + s.Addr() + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	code, body, err := get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", code, err)
	}
	for _, want := range []string{"moetrain_step 3\n", "moetrain_loss 1.25\n", "go_goroutines ", "process_start_time_seconds "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _, err := get("/other"); err != nil || code != http.StatusNotFound {
		t.Errorf("GET /other: %d, %v; want 404", code, err)
	}
	// A second server on the same port says what is wrong.
	if _, err := Serve(s.Addr(), m); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("second server on %s: %v", s.Addr(), err)
	}
	// A client that opens a connection and sends nothing does not keep
	// Close from returning.
	idle, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Close(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, _, err := get("/metrics"); err == nil {
		t.Error("the server still answers after Close")
	}
}
