package metrics

import (
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it gets.
type recorder struct {
	mu      sync.Mutex
	starts  []time.Time
	jobs    []Job
	workers []Worker
}

func (r *recorder) ObserveStart(t time.Time, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, t)
}

func (r *recorder) ObserveJob(j Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.jobs = append(r.jobs, j)
}

func (r *recorder) ObserveWorker(w Worker) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.workers = append(r.workers, w)
}

// TestObserver: observers get every accepted observation as recorded
// (copies the caller cannot change afterwards), and none of the refused.
func TestObserver(t *testing.T) {
	m := newTest(t, Limits{Ranks: 2, Layers: 1, Experts: 2})
	var a, b recorder
	m.AddObserver(&a)
	m.AddObserver(&b)
	t0 := time.Unix(1700000000, 0)
	m.SetStart(t0, 0)
	table := []WorkerRow{{ID: "w0", Host: "h", Rank: 0, State: "running", Step: 2, Loss: 1.5, TokensPerSec: 10}}
	job := Job{Phase: "running", Step: 2, Loss: 1.5, Workers: map[string]int{"running": 1}, Table: table}
	if err := m.SetJob(job); err != nil {
		t.Fatal(err)
	}
	per := []int64{3, 4}
	w := Worker{Rank: 1, Step: 2, Tokens: 64, Load: []LayerLoad{{PerExpert: per, MaxMean: 1.1}}}
	if err := m.SetWorker(w); err != nil {
		t.Fatal(err)
	}
	// The caller reuses its buffers: what the observers got stays.
	table[0].Step, per[0], job.Workers["running"] = 99, 99, 99

	// Refused: rank, layer count, value, too many phases.
	for _, bad := range []Worker{{Rank: 2}, {Rank: 0, Load: make([]LayerLoad, 2)}, {Rank: 0, TokensPerSec: -1}} {
		if err := m.SetWorker(bad); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
	for i := range maxEnumValues + 1 {
		_ = m.SetJob(Job{Phase: strings.Repeat("p", i+1)})
	}

	for _, r := range []*recorder{&a, &b} {
		if !reflect.DeepEqual(r.starts, []time.Time{t0}) || len(r.workers) != 1 || len(r.jobs) != maxEnumValues {
			t.Fatalf("observed %d starts, %d jobs, %d workers", len(r.starts), len(r.jobs), len(r.workers))
		}
		j := r.jobs[0]
		want := []WorkerRow{{ID: "w0", Host: "h", Rank: 0, State: "running", Step: 2, Loss: 1.5, TokensPerSec: 10}}
		if !reflect.DeepEqual(j.Table, want) || j.Workers["running"] != 1 || j.Step != 2 {
			t.Errorf("observed job %+v", j)
		}
		got := r.workers[0]
		if got.Rank != 1 || got.Tokens != 64 || len(got.Load) != 1 || !reflect.DeepEqual(got.Load[0].PerExpert, []int64{3, 4}) {
			t.Errorf("observed worker %+v", got)
		}
	}
}

// TestListenNamesFlag: a busy port's error names the flag that gave it.
func TestListenNamesFlag(t *testing.T) {
	s, err := Listen("127.0.0.1:0", "--x", http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(t.Context())
	if _, err := Listen(s.Addr(), "--http", http.NotFoundHandler()); err == nil ||
		!strings.Contains(err.Error(), "already in use (pick another --http)") {
		t.Errorf("second listener on %s: %v", s.Addr(), err)
	}
}
