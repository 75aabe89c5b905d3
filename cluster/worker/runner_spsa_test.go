package worker

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/cluster/launch"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/pretrain"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// spsaHelperArg marks the test binary's run as a launched worker process.
const spsaHelperArg = "spsa-worker-process"

// TestSPSAWorkerProcessHelper is a launched worker process (Launch's
// WorkerCmd re-executes the test binary with its join flags after "--");
// in a normal test run it does nothing.
func TestSPSAWorkerProcessHelper(t *testing.T) {
	args := flag.Args()
	if len(args) == 0 || args[0] != spsaHelperArg {
		t.Skip("runs only as a worker process of TestSPSALaunchBitwiseAndResume")
	}
	var o WorkerOptions
	strs := map[string]*string{"--join": &o.Join, "--log-file": &o.LogFile, "--host": &o.Host,
		"--tls-cert": &o.TLS.Cert, "--tls-key": &o.TLS.Key, "--tls-ca": &o.TLS.CA}
	for i := 1; i+1 < len(args); i += 2 {
		if p, ok := strs[args[i]]; ok {
			*p = args[i+1]
		} else if args[i] == "--threads" {
			o.Threads, _ = strconv.Atoi(args[i+1])
		}
	}
	o.Console = os.Stderr
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := RunWorkerProcess(ctx, o)
	var ab *AbortedError
	switch {
	case errors.As(err, &ab):
		os.Exit(ExitAborted)
	case err != nil:
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// spsaStartCheckpoint trains cfg's model two steps with the usual trainer
// and saves it: the fine-tuning start.
func spsaStartCheckpoint(t *testing.T, cfg train.JobConfig) string {
	t.Helper()
	tr, _ := pretrain.Trainer(t, cfg, 2)
	return pretrain.Save(t, tr, filepath.Join(t.TempDir(), "pre"))
}

// launchSPSA runs job over workers test-binary worker processes and returns
// each rank's "done" record.
func launchSPSA(t *testing.T, job train.JobConfig, workers int, runDir string) []cluster.SPSABytes {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sum, err := launch.Launch(ctx, launch.LaunchConfig{Workers: workers, Job: job, RunDir: runDir, Threads: 1,
		Membership: cluster.DefaultMembershipConfig(), Grace: 5 * time.Second,
		WorkerCmd: func(args ...string) *exec.Cmd {
			return exec.Command(os.Args[0], append([]string{"-test.run=^TestSPSAWorkerProcessHelper$", "--", spsaHelperArg}, args...)...)
		}})
	if err != nil {
		for i := range workers {
			out, _ := os.ReadFile(filepath.Join(runDir, fmt.Sprintf("worker-%d.out", i)))
			t.Logf("worker %d:\n%s", i, out)
		}
		t.Fatalf("launch: %v", err)
	}
	logs := make([]string, workers)
	for i := range logs {
		logs[i] = filepath.Join(runDir, fmt.Sprintf("worker-%d.log", i))
	}
	done, err := cluster.SPSABytesFromLogs(logs)
	if err != nil || len(done) != workers {
		out, _ := os.ReadFile(logs[0])
		t.Logf("worker 0's log:\n%s", out)
		t.Fatalf("done records of %d workers: %+v, %v", workers, done, err)
	}
	if sum.Status.Step != job.Train.Steps {
		t.Fatalf("job ended at step %d, want %d", sum.Status.Step, job.Train.Steps)
	}
	if !reflect.DeepEqual(sum.SPSA, done) {
		t.Fatalf("summary's SPSA bytes %+v, the logs' %+v", sum.SPSA, done)
	}
	return done
}

// Under coordinator launch, train.mode = "spsa" ends with every rank's
// parameters equal to a replay of the log onto the starting checkpoint
// (and not to a replay one step short), each rank sending exactly the ring
// all-gather's frames per step; a job stopped halfway and launched again
// replays the log and ends with the same log and parameters as the
// uninterrupted job.
func TestSPSALaunchBitwiseAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	cfg := jobtest.TinyJob()
	pre := spsaStartCheckpoint(t, cfg)
	const workers, steps = 3, 6
	job := cfg
	job.Train.Mode, job.Train.Steps, job.Train.EvalEvery, job.Train.EvalBatches = train.ModeSPSA, steps, 3, 1
	job.SPSA.InitFrom = pre
	job.SPSA.LR, job.SPSA.Clip = 1e-3, 8
	dir := t.TempDir()

	job.SPSA.Log = filepath.Join(dir, "whole.log")
	whole := launchSPSA(t, job, workers, filepath.Join(dir, "whole"))
	for _, d := range whole {
		if d.ParamsCRC32C != whole[0].ParamsCRC32C || d.Steps != steps {
			t.Fatalf("ranks differ: %+v", whole)
		}
		// n−1 frames of a header and one 4-byte word (the padded byte).
		if want := int64(steps * (workers - 1) * (collective.HeaderSize + 4)); d.WireBytes != want || d.PayloadBytes != steps {
			t.Fatalf("rank %d sent %d bytes (%d payload), want %d (%d)", d.Rank, d.WireBytes, d.PayloadBytes, want, steps)
		}
	}
	_, recs, err := spsa.ReadLog(job.SPSA.Log)
	if err != nil || len(recs) != steps || len(recs[0].Entries) != workers {
		t.Fatalf("log: %d records, %v", len(recs), err)
	}
	replay := func(k int) string { return replaySPSA(t, job, pre, recs, int64(k)) }
	if got, short := replay(steps), replay(steps-1); got != whole[0].ParamsCRC32C || short == got {
		t.Fatalf("replay of %d steps: %s, of %d: %s; the ranks hold %s", steps, got, steps-1, short, whole[0].ParamsCRC32C)
	}

	job.SPSA.Log = filepath.Join(dir, "split.log")
	half := job
	half.Train.Steps = steps / 2
	launchSPSA(t, half, workers, filepath.Join(dir, "first"))
	rest := launchSPSA(t, job, workers, filepath.Join(dir, "second"))
	for _, d := range rest {
		if d.Steps != steps-steps/2 || d.ParamsCRC32C != whole[0].ParamsCRC32C {
			t.Fatalf("resumed run: %+v, want %d steps ending at %s", rest, steps-steps/2, whole[0].ParamsCRC32C)
		}
	}
	_, again, err := spsa.ReadLog(job.SPSA.Log)
	if err != nil || !reflect.DeepEqual(again, recs) {
		t.Fatalf("the resumed job's log differs from the uninterrupted job's (%v)", err)
	}

	// A log of another starting point is refused before any step.
	if err := os.WriteFile(filepath.Join(dir, "bad.log"), spsa.EncodeLog(job.SPSA, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := model.New(job.Model, job.Train.Seed)
	if err := loadSPSAStart(pre, m); err != nil {
		t.Fatal(err)
	}
	if _, err := readSPSALog(filepath.Join(dir, "bad.log"), job.SPSA, spsa.Checksum(m.Params)); err == nil {
		t.Fatal("a log without the starting checksum was accepted")
	}
}

// The replica comparison passes when every rank agrees and fails on every
// rank, naming the odd one, when one rank's checksum or step differs.
func TestAgreeSPSA(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []int64
		sums  []uint32
		ok    bool
	}{
		{"equal", []int64{7, 7, 7}, []uint32{0xabcd0123, 0xabcd0123, 0xabcd0123}, true},
		{"checksum", []int64{7, 7, 7}, []uint32{0xabcd0123, 0xabcd0124, 0xabcd0123}, false},
		{"step", []int64{1 << 40, 1 << 40, 1<<40 + 1}, []uint32{5, 5, 5}, false},
	} {
		ts := collective.NewInProcess(3)
		errs := make([]error, 3)
		done := make(chan int)
		for r := range 3 {
			go func() {
				errs[r] = agreeSPSA(t.Context(), collective.NewWorld(ts[r]), "now", tc.steps[r], tc.sums[r])
				done <- r
			}()
		}
		for range 3 {
			<-done
		}
		for _, tr := range ts {
			tr.Close()
		}
		for r, err := range errs {
			if (err == nil) != tc.ok || (!tc.ok && !strings.Contains(err.Error(), "replicas differ now")) {
				t.Errorf("%s: rank %d: %v", tc.name, r, err)
			}
		}
	}
}

// spsa.log wins; else the checkpoint directory holds the log; else none.
func TestSPSALogPath(t *testing.T) {
	job := jobtest.TinyJob()
	if got := SPSALogPath(job, ""); got != "" {
		t.Errorf("no log, no checkpoint directory: %q", got)
	}
	if got, want := SPSALogPath(job, "ck"), filepath.Join("ck", cluster.SPSALogName); got != want {
		t.Errorf("checkpoint directory: %q, want %q", got, want)
	}
	job.SPSA.Log = "x/my.log"
	if got := SPSALogPath(job, "ck"); got != "x/my.log" {
		t.Errorf("spsa.log: %q", got)
	}
}
