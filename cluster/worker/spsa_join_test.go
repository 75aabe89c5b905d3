package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// spsaJoinJob is an SPSA job of jobtest.TinyJob's model from a checkpoint made
// for it, long enough for a worker process to join while it runs.
func spsaJoinJob(t *testing.T, steps int) (train.JobConfig, string) {
	t.Helper()
	cfg := jobtest.TinyJob()
	pre := spsaStartCheckpoint(t, cfg)
	job := cfg
	job.Train.Mode, job.Train.Steps, job.Train.EvalEvery, job.Train.LogEvery = train.ModeSPSA, steps, 0, 50
	job.SPSA.InitFrom = pre
	job.SPSA.LR, job.SPSA.Clip = 1e-3, 8
	return job, pre
}

// spsaServe serves job for workers (as `coordinator serve --run-dir`).
func spsaServe(t testing.TB, job train.JobConfig, workers int, runDir string, onStatus func(cluster.Status)) *cluster.Coordinator {
	t.Helper()
	jobJSON, err := cluster.JobJSON(job)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "tok", JobID: "spsa-join", Workers: workers,
		TotalSteps: job.Train.Steps, Plan: cluster.PlanRequestFor(job), JobConfigJSON: jobJSON, JoinTimeout: time.Minute,
		Membership: cluster.DefaultMembershipConfig(), Log: zerolog.Nop(), OnStatus: onStatus, StateDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startSPSAWorker starts a `worker --join` process (the test binary) whose
// JSON log is runDir/name.log.
func startSPSAWorker(t *testing.T, addr, runDir, name string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSPSAWorkerProcessHelper$", "--", spsaHelperArg,
		"--join", addr, "--threads", "1", "--host", "h", "--log-file", filepath.Join(runDir, name+".log"))
	cmd.Env = append(os.Environ(), cluster.TokenEnv+"=tok")
	out, err := os.Create(filepath.Join(runDir, name+".out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		out.Close()
	})
	return cmd
}

// spsaCatchUp is a joiner's "caught up" log record.
type spsaCatchUp struct {
	Steps    int64   `json:"catchup_steps"`
	LogBytes int64   `json:"catchup_log_bytes"`
	Received int64   `json:"catchup_received_bytes"`
	Fetches  int     `json:"catchup_fetches"`
	Seconds  float64 `json:"catchup_s"`
}

func readCatchUp(t *testing.T, path string) *spsaCatchUp {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var rec struct {
			Message string `json:"message"`
			spsaCatchUp
		}
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Message == "caught up from the coordinator's SPSA log" {
			return &rec.spsaCatchUp
		}
	}
	return nil
}

// replaySPSA replays recs onto the job's starting checkpoint and returns
// the parameters' checksum.
func replaySPSA(t *testing.T, job train.JobConfig, pre string, recs []spsa.Record, steps int64) string {
	t.Helper()
	m, err := model.New(job.Model, job.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := loadSPSAStart(pre, m); err != nil {
		t.Fatal(err)
	}
	w, err := spsa.NewWorker(job.SPSA, 1, m.Params, m.Grads, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Replay(recs, steps); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%08x", spsa.Checksum(m.Params))
}

// A worker process joins a running 2-worker SPSA job (`serve` with `worker
// --join` processes), started once the job runs (its start and replay take
// it to about mid-job while the others run on): the running ranks
// pause at a step boundary the coordinator picks and keep their
// parameters; the joiner catches up from the coordinator's log alone (the
// bytes it received for it are the log's, header and records up to the
// boundary: no parameter transfer) and enters the exchange at the next
// step. Every rank ends bitwise equal to a serial replay of the
// coordinator's log from the starting checkpoint; the records before the
// boundary hold two workers' entries, those after it three.
func TestSPSAJoinRunningJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	const steps = 400
	job, pre := spsaJoinJob(t, steps)
	runDir := t.TempDir()
	var step atomic.Int64
	c := spsaServe(t, job, 2, runDir, func(s cluster.Status) { step.Store(int64(s.Step)) })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	type result struct {
		res cluster.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.Run(ctx)
		done <- result{res, err}
	}()
	for i := range 2 {
		startSPSAWorker(t, c.Addr(), runDir, fmt.Sprintf("worker-%d", i))
	}
	var res result
	joined := false
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-time.After(5 * time.Millisecond):
			if !joined && step.Load() >= 1 {
				startSPSAWorker(t, c.Addr(), runDir, "worker-2")
				joined = true
			}
		}
	}
	logs := []string{filepath.Join(runDir, "worker-0.log"), filepath.Join(runDir, "worker-1.log"), filepath.Join(runDir, "worker-2.log")}
	if res.err != nil || res.res.Phase != cluster.PhaseSucceeded || !joined {
		for _, l := range logs {
			out, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", l, out)
		}
		t.Fatalf("job: %v, %s: %s (joiner started: %v)", res.err, res.res.Phase, res.res.Reason, joined)
	}
	ranks, err := cluster.SPSABytesFromLogs(logs)
	if err != nil || len(ranks) != 3 {
		t.Fatalf("done records: %+v, %v", ranks, err)
	}
	_, recs, err := spsa.ReadLog(filepath.Join(runDir, cluster.SPSALogName))
	if err != nil || len(recs) != steps {
		t.Fatalf("the coordinator's log: %d records, %v", len(recs), err)
	}
	want := replaySPSA(t, job, pre, recs, steps)
	for _, r := range ranks {
		if r.ParamsCRC32C != want {
			t.Fatalf("rank %d ends at %s, the replay of the coordinator's log at %s (%+v)", r.Rank, r.ParamsCRC32C, want, ranks)
		}
	}
	// The running ranks ran every step in memory: no restart, no replay.
	if ranks[0].Steps != steps || ranks[1].Steps != steps {
		t.Fatalf("the running ranks ran %d and %d steps, want %d each", ranks[0].Steps, ranks[1].Steps, steps)
	}
	cu := readCatchUp(t, logs[2])
	if cu == nil || cu.Steps <= 0 || cu.Steps >= steps || ranks[2].Steps != steps-cu.Steps {
		t.Fatalf("the joiner's catch-up %+v, steps run %d", cu, ranks[2].Steps)
	}
	logBytes := int64(spsa.LogHeaderSize)
	for i, rec := range recs {
		if n := len(rec.Entries); int64(i) < cu.Steps && n != 2 || int64(i) >= cu.Steps && n != 3 {
			t.Fatalf("step %d has %d entries; the joiner entered at step %d", i, n, cu.Steps)
		}
		if int64(i) < cu.Steps {
			logBytes += spsa.RecordSize(len(rec.Entries))
		}
	}
	if cu.LogBytes != logBytes || cu.Received != logBytes+int64(cu.Fetches-1)*spsa.LogHeaderSize {
		t.Fatalf("the joiner received %d bytes (%d of log) in %d reads; the log up to step %d is %d bytes",
			cu.Received, cu.LogBytes, cu.Fetches, cu.Steps, logBytes)
	}
	paused := 0.0
	for _, l := range logs[:2] {
		p := readLogFloat(t, l, "resumed after the member set change", "paused_s")
		if p < 0 {
			t.Fatalf("%s: no resume after the member set change", l)
		}
		paused = max(paused, p)
	}
	t.Logf("joined at step %d of %d: %d log bytes in %d reads, caught up in %.3f s; the running ranks paused %.3f s",
		cu.Steps, steps, cu.LogBytes, cu.Fetches, cu.Seconds, paused)
}

// readLogFloat is field of the first record of message in a JSON-lines
// log (-1: none).
func readLogFloat(t *testing.T, path, message, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["message"] == message {
			if v, ok := rec[field].(float64); ok {
				return v
			}
		}
	}
	return -1
}
