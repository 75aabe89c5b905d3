package dashboard

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moetrain/moetrain/metrics"
)

// refPoint is a curve point as the naive reference records it.
type refPoint struct {
	step      int
	loss, tps float64
	val       *float64
}

// refCurve is the coordinator's curve rule written out naively over the
// whole sequence of job states (no bound): what summary.json records.
func refCurve(jobs []metrics.Job) []refPoint {
	var out []refPoint
	lastVal := -1
	newest := func() int { // the largest step of any point so far
		m := 0
		for _, p := range out {
			m = max(m, p.step)
		}
		return m
	}
	for _, j := range jobs {
		if j.Step > 0 && newest() < j.Step {
			out = append(out, refPoint{step: j.Step, loss: j.Loss, tps: j.TokensPerSec})
		}
		ended := j.Phase != "waiting" && j.Phase != "running" && j.Phase != "recovering"
		if j.HasVal && j.ValStep != lastVal && (j.Step >= j.ValStep || ended) {
			lastVal = j.ValStep
			v := j.ValLoss
			out = append(out, refPoint{step: j.ValStep, loss: j.Loss, val: &v})
		}
	}
	return out
}

// randomJobs is a plausible sequence of job states: waiting, then steps
// rising irregularly with validations, then an end.
func randomJobs(r *rand.Rand, n int) []metrics.Job {
	jobs := []metrics.Job{{Phase: "waiting", TotalSteps: n}}
	step, val := 0, metrics.Job{}
	for len(jobs) < n {
		j := metrics.Job{Phase: "running", Step: step, TotalSteps: n, Loss: 5 - float64(step)/float64(n), TokensPerSec: 1000 + r.Float64()}
		if r.IntN(3) > 0 {
			step += r.IntN(3) // reports can repeat a step
		}
		if r.IntN(5) == 0 {
			val = metrics.Job{HasVal: true, ValStep: step + r.IntN(2), ValLoss: 4 + r.Float64()}
		}
		j.HasVal, j.ValStep, j.ValLoss = val.HasVal, val.ValStep, val.ValLoss
		jobs = append(jobs, j)
	}
	end := jobs[len(jobs)-1]
	end.Phase = "succeeded"
	return append(jobs, end)
}

func checkCurve(t *testing.T, got []Point, want []refPoint) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("curve: %d points, reference %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		ok := g.Step == w.step && float64(g.Loss) == w.loss && float64(g.TokensPerSec) == w.tps &&
			(g.ValLoss == nil) == (w.val == nil) && (w.val == nil || float64(*g.ValLoss) == *w.val)
		if !ok {
			t.Fatalf("curve point %d: %+v, reference %+v", i, g, w)
		}
	}
}

// TestCurveMatchesReference: below the bound the curve is exactly the
// reference rule's, through random sequences of job states.
func TestCurveMatchesReference(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		jobs := randomJobs(r, 600)
		s := New(metrics.Limits{Ranks: 2, Layers: 1, Experts: 2})
		for _, j := range jobs {
			s.ObserveJob(j)
		}
		want := refCurve(jobs)
		if len(want) < 50 || len(want) > MaxCurvePoints {
			t.Fatalf("seed %d: reference has %d points; the test wants 50..%d", seed, len(want), MaxCurvePoints)
		}
		snap := s.Snapshot()
		checkCurve(t, snap.Curve, want)
		if snap.CurveThinned != 0 || snap.Phase != "succeeded" {
			t.Fatalf("seed %d: thinned %d, phase %q", seed, snap.CurveThinned, snap.Phase)
		}
	}
}

// TestCurveThinning: past MaxCurvePoints the curve stays bounded, keeps
// the first and newest point, is a subsequence of the reference in order,
// and spans it evenly (no gap wider than 2^thinned + 1 reference points).
func TestCurveThinning(t *testing.T) {
	s := New(metrics.Limits{Ranks: 1})
	var jobs []metrics.Job
	const steps = 10 * MaxCurvePoints
	for i := 1; i <= steps; i++ {
		j := metrics.Job{Phase: "running", Step: i, Loss: float64(i), TokensPerSec: float64(2 * i)}
		if i%7 == 0 {
			j.HasVal, j.ValStep, j.ValLoss = true, i, float64(-i)
		}
		jobs = append(jobs, j)
		s.ObserveJob(j)
		s.mu.Lock()
		n := len(s.curve)
		s.mu.Unlock()
		if n > MaxCurvePoints {
			t.Fatalf("after step %d: %d points", i, n)
		}
	}
	want := refCurve(jobs)
	snap := s.Snapshot()
	got := snap.Curve
	if snap.CurveThinned < 3 {
		t.Fatalf("%d reference points thinned %d times", len(want), snap.CurveThinned)
	}
	if len(got) < MaxCurvePoints/2 {
		t.Errorf("%d points left of %d", len(got), len(want))
	}
	key := func(step int, val bool) string { return fmt.Sprint(step, val) }
	idx := map[string]int{}
	for i, w := range want {
		idx[key(w.step, w.val != nil)] = i
	}
	prev := -1
	for k, g := range got {
		i, ok := idx[key(g.Step, g.ValLoss != nil)]
		if !ok || i <= prev {
			t.Fatalf("point %d %+v: not in the reference after index %d", k, g, prev)
		}
		if gap := i - prev; gap > 1<<snap.CurveThinned+1 {
			t.Fatalf("point %d: gap of %d reference points after %d thinnings", k, gap, snap.CurveThinned)
		}
		prev = i
	}
	if got[0].Step != 1 || prev != len(want)-1 {
		t.Errorf("first point step %d, last at reference index %d of %d", got[0].Step, prev, len(want))
	}
}

func load(step int, perExpert ...[]int64) metrics.Worker {
	w := metrics.Worker{Rank: 0, Step: step, Tokens: int64(step) * 10}
	for _, p := range perExpert {
		w.Load = append(w.Load, metrics.LayerLoad{PerExpert: p, MaxMean: 1.5, SlotsTotal: int64(step) * 8, DroppedTotal: 1})
	}
	return w
}

// TestLoadHistory: the latest load is the highest step's, the history has
// each step once in increasing order, and it is bounded by the cells.
func TestLoadHistory(t *testing.T) {
	s := New(metrics.Limits{Ranks: 2, Layers: 2, Experts: 3})
	s.ObserveWorker(load(2, []int64{1, 2, 3}, []int64{4, 5, 6}))
	s.ObserveWorker(load(2, []int64{1, 2, 3}, []int64{4, 5, 6}))  // the other rank, same step
	s.ObserveWorker(load(1, []int64{9, 9, 9}, []int64{9, 9, 9}))  // late report of an older step
	s.ObserveWorker(metrics.Worker{Rank: 1, Step: 3, Tokens: 77}) // no load in this report
	s.ObserveWorker(load(4, []int64{3, 2, 1}, []int64{6, 5, 4}))
	snap := s.Snapshot()
	if snap.Load == nil || snap.Load.Step != 4 || !reflect.DeepEqual(snap.Load.Layers[1].PerExpert, []int64{6, 5, 4}) ||
		snap.Load.Layers[0].SlotsTotal != 32 || snap.Load.Layers[0].MaxMean != 1.5 {
		t.Fatalf("latest load %+v", snap.Load)
	}
	want := []LoadPoint{{2, [][]int64{{1, 2, 3}, {4, 5, 6}}}, {4, [][]int64{{3, 2, 1}, {6, 5, 4}}}}
	if !reflect.DeepEqual(snap.LoadHistory, want) {
		t.Fatalf("history %+v, want %+v", snap.LoadHistory, want)
	}

	// Bound: cells / (layers × experts) snapshots, clamped.
	for _, c := range []struct{ layers, experts, want int }{{2, 4, maxLoadSnapshots}, {16, 64, 64}, {64, 256, minLoadSnapshots}} {
		s := New(metrics.Limits{Ranks: 1, Layers: c.layers, Experts: c.experts})
		row := make([]int64, c.experts)
		layers := make([][]int64, c.layers)
		for i := range layers {
			layers[i] = row
		}
		for step := 1; step <= 5*c.want; step++ {
			s.ObserveWorker(load(step, layers...))
		}
		snap := s.Snapshot()
		n := len(snap.LoadHistory)
		if n > c.want || n < c.want/2 || snap.LoadThinned == 0 || snap.LoadHistory[n-1].Step != 5*c.want || snap.LoadHistory[0].Step != 1 {
			t.Errorf("%d×%d: %d snapshots (bound %d), thinned %d, steps %d..%d", c.layers, c.experts, n, c.want,
				snap.LoadThinned, snap.LoadHistory[0].Step, snap.LoadHistory[n-1].Step)
		}
	}
}

// TestSnapshotJSON feeds one of everything through a real Metrics and
// compares /api/state's JSON with the text written out by hand.
func TestSnapshotJSON(t *testing.T) {
	m, s := observed(t, metrics.Limits{Ranks: 2, Layers: 1, Experts: 2})
	clock := time.Unix(1700000000, 0)
	s.now = func() time.Time { return clock }
	m.SetStart(time.Unix(1700000000, 0), 0)
	clock = clock.Add(1500 * time.Millisecond)
	table := []metrics.WorkerRow{{ID: "w0", Host: "a<b>", Rank: 0, State: "running", Step: 3, Loss: 2.5, TokensPerSec: 100},
		{ID: "w1", Host: "b", Rank: -1, State: "joined"}}
	if err := m.SetJob(metrics.Job{Phase: "running", Step: 3, TotalSteps: 10, Loss: 2.5, TokensPerSec: 0.1,
		HasVal: true, ValStep: 2, ValLoss: math.NaN(), Workers: map[string]int{"running": 1, "joined": 1}, Table: table}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetWorker(metrics.Worker{Rank: 0, Step: 3, Tokens: 384,
		Load: []metrics.LayerLoad{{PerExpert: []int64{5, 3}, MaxMean: 1.25, Imbalance: 0.5, SlotsTotal: 24, DroppedTotal: 2}}}); err != nil {
		t.Fatal(err)
	}
	// Refused by the metrics (rank beyond the limits): never observed.
	if err := m.SetWorker(metrics.Worker{Rank: 5, Step: 9}); err == nil {
		t.Fatal("rank 5 of 2 accepted")
	}
	b, err := json.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"phase":"running","step":3,"total_steps":10,"loss":2.5,"tokens_per_sec":0.1,"has_val":true,"val_loss":null,"val_step":2,` +
		`"worker_states":{"joined":1,"running":1},"started":1700000000,"elapsed_s":1.5,"resumed_step":0,` +
		`"curve":[{"step":3,"loss":2.5,"tokens_per_sec":0.1,"elapsed_s":1.5},` +
		`{"step":2,"loss":2.5,"tokens_per_sec":0,"val_loss":null,"loss_step":3,"job_tokens_per_sec":0.1,"elapsed_s":1.5}],"curve_thinned":0,` +
		`"workers":[{"id":"w0","host":"a\u003cb\u003e","rank":0,"state":"running","step":3,"loss":2.5,"tokens_per_sec":100,"tokens":384},` +
		`{"id":"w1","host":"b","rank":-1,"state":"joined","step":0,"loss":0,"tokens_per_sec":0}],"workers_omitted":0,` +
		`"layers":1,"experts":2,"load":{"step":3,"layers":[{"per_expert":[5,3],"max_mean":1.25,"imbalance":0.5,"slots_total":24,"dropped_total":2}]},` +
		`"load_history":[{"step":3,"layers":[[5,3]]}],"load_thinned":0}`
	if string(b) != want {
		t.Errorf("JSON\n got %s\nwant %s", b, want)
	}
	// Num round-trips, null as NaN.
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(back.ValLoss)) || back.Loss != 2.5 || back.Curve[0].TokensPerSec != 0.1 {
		t.Errorf("decoded %+v", back)
	}

	// After the end the elapsed time stays at the last observation.
	clock = clock.Add(time.Second)
	if err := m.SetJob(metrics.Job{Phase: "succeeded", Step: 3, TotalSteps: 10}); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Hour)
	if el := s.Snapshot().ElapsedS; el != 2.5 {
		t.Errorf("elapsed after the end %v, want 2.5", el)
	}
}

// TestWorkerTableBound: rows beyond MaxWorkerRows are counted, long ids
// and hosts are cut at a rune boundary.
func TestWorkerTableBound(t *testing.T) {
	s := New(metrics.Limits{Ranks: 1})
	rows := make([]metrics.WorkerRow, MaxWorkerRows+5)
	for i := range rows {
		rows[i] = metrics.WorkerRow{ID: fmt.Sprintf("w%d", i), Host: strings.Repeat("é", 200), Rank: -1}
	}
	s.ObserveJob(metrics.Job{Phase: "waiting", Table: rows})
	snap := s.Snapshot()
	if len(snap.Workers) != MaxWorkerRows || snap.WorkersOmitted != 5 {
		t.Fatalf("%d rows, %d omitted", len(snap.Workers), snap.WorkersOmitted)
	}
	h := snap.Workers[0].Host
	if len(h) > maxText+len("…") || !strings.HasSuffix(h, "…") || !json.Valid([]byte(`"`+h+`"`)) || strings.ContainsRune(h, '\uFFFD') {
		t.Errorf("host cut to %d bytes: %q", len(h), h)
	}
}

// TestConcurrent records from several goroutines while snapshots are
// taken and encoded (run with -race); the end state holds every rank's
// last report.
func TestConcurrent(t *testing.T) {
	m, s := observed(t, metrics.Limits{Ranks: 4, Layers: 2, Experts: 4})
	m.SetStart(time.Now(), 0)
	const steps = 300
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			for step := 1; step <= steps; step++ {
				w := metrics.Worker{Rank: r, Step: step, Tokens: int64(step)}
				for range 2 {
					w.Load = append(w.Load, metrics.LayerLoad{PerExpert: []int64{int64(step), 1, 2, 3}})
				}
				if err := m.SetWorker(w); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for step := 1; step <= steps; step++ {
			if err := m.SetJob(metrics.Job{Phase: "running", Step: step, Loss: 1, Table: []metrics.WorkerRow{{ID: "w0", Rank: 0}}}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for loop := true; loop; {
		select {
		case <-done:
			loop = false
		default:
		}
		if _, err := json.Marshal(s.Snapshot()); err != nil {
			t.Fatal(err)
		}
	}
	snap := s.Snapshot()
	if len(snap.Curve) != steps || snap.Load.Step != steps || *snap.Workers[0].Tokens != steps {
		t.Errorf("end: %d points, load at %d, tokens %v", len(snap.Curve), snap.Load.Step, snap.Workers[0].Tokens)
	}
	for i, p := range snap.LoadHistory {
		if i > 0 && p.Step <= snap.LoadHistory[i-1].Step {
			t.Fatalf("history not increasing at %d: %d after %d", i, p.Step, snap.LoadHistory[i-1].Step)
		}
	}
}

// TestThin: the elements at even indices and the last, in order.
func TestThin(t *testing.T) {
	for n := 1; n <= 9; n++ {
		xs := make([]int, n)
		var want []int
		for i := range xs {
			xs[i] = i
			if i%2 == 0 || i == n-1 {
				want = append(want, i)
			}
		}
		if got := thin(xs); !reflect.DeepEqual(got, want) {
			t.Errorf("thin of %d: %v, want %v", n, got, want)
		}
	}
}
