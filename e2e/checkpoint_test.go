//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/worker"
)

// ckptJob is tinyJob with a loss line at every step (and ZeRO-1 if asked).
func ckptJob(t *testing.T, zero1 bool) string {
	t.Helper()
	job := tinyTrain(20, 10, 2, 1)
	if zero1 {
		job += "\n[dp]\nzero1 = true\n"
	}
	return writeJobText(t, job)
}

// launchRun runs `coordinator launch --workers 2` on job with extra flags
// and env, returning the run directory, the exit code and the output.
func launchRun(t *testing.T, job string, env []string, flags ...string) (string, int, string) {
	t.Helper()
	run := filepath.Join(t.TempDir(), "run")
	args := append([]string{"launch", "--workers", "2", "--config", job, "--run-dir", run, "--no-bar"}, flags...)
	p := start(t, "coordinator launch", env, args...)
	code := p.wait(90 * time.Second)
	return run, code, p.output()
}

// mustLaunch is launchRun that requires success.
func mustLaunch(t *testing.T, job string, flags ...string) string {
	t.Helper()
	run, code, out := launchRun(t, job, nil, flags...)
	if code != 0 {
		t.Fatalf("launch %v exited %d:\n%s", flags, code, out)
	}
	return run
}

// sameLosses requires got to hold, for every step in [from, to], the loss
// want has at that step, bitwise, on both workers' logs.
func sameLosses(t *testing.T, what, wantRun, gotRun string, from, to int) {
	t.Helper()
	for w := 0; w < 2; w++ {
		name := "worker-" + strconv.Itoa(w) + ".log"
		want, got := stepLosses(t, filepath.Join(wantRun, name)), stepLosses(t, filepath.Join(gotRun, name))
		for s := from; s <= to; s++ {
			a, okA := want[float64(s)]
			b, okB := got[float64(s)]
			if !okA || !okB || a != b {
				t.Errorf("%s: %s step %d: loss %v (logged %v) uninterrupted, %v (logged %v) resumed", what, name, s, a, okA, b, okB)
			}
		}
		if _, ok := got[float64(from-1)]; ok && from > 1 {
			t.Errorf("%s: %s: the resumed run trained step %d again", what, name, from-1)
		}
	}
}

func readSummary(t *testing.T, run string) cluster.Summary {
	t.Helper()
	s, _ := readSummaryJSON(t, run)
	return s
}

// readSummaryJSON is run's summary.json, decoded and as read.
func readSummaryJSON(t *testing.T, run string) (cluster.Summary, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(run, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s cluster.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s, b
}

// committedSteps lists a checkpoint directory's published steps and what
// LATEST names.
func committedSteps(t *testing.T, dir string) ([]int64, int64) {
	t.Helper()
	s, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := s.Steps()
	if err != nil {
		t.Fatal(err)
	}
	latest, ok := s.Latest()
	if !ok {
		latest = -1
	}
	return steps, latest
}

// TestLaunchResumeBitwise, with two worker processes: 20 steps uninterrupted
// vs 10 steps, resume, 10 steps: bitwise-identical losses, with and without
// ZeRO-1; checkpointing does not perturb training (same losses as a run
// without it); the coordinator publishes every step and keeps the newest 2.
func TestLaunchResumeBitwise(t *testing.T) {
	for _, zero1 := range []bool{false, true} {
		t.Run(fmt.Sprintf("zero1=%v", zero1), func(t *testing.T) {
			job := ckptJob(t, zero1)
			plain := mustLaunch(t, job)
			ck := filepath.Join(t.TempDir(), "ck")
			full := mustLaunch(t, job, "--checkpoint-dir", ck, "--checkpoint-every", "5", "--checkpoint-keep", "2")
			sameLosses(t, "checkpointing on vs off", plain, full, 1, 20)
			if steps, latest := committedSteps(t, ck); fmt.Sprint(steps) != "[15 20]" || latest != 20 {
				t.Fatalf("checkpoint dir holds steps %v, LATEST %d; want [15 20], 20", steps, latest)
			}
			if sum := readSummary(t, full); sum.Status.LastCheckpoint != 20 {
				t.Errorf("summary last_checkpoint %d, want 20", sum.Status.LastCheckpoint)
			}
			// A 10-step checkpoint of the same 20-step job (keep=2 pruned the
			// first run's), then a run resumed from it by path.
			ck10 := filepath.Join(t.TempDir(), "ck10")
			mustLaunch(t, job, "--checkpoint-dir", ck10, "--checkpoint-every", "10")
			resumed := mustLaunch(t, job, "--resume", filepath.Join(ck10, checkpoint.StepName(10)))
			sameLosses(t, "resumed at 10", plain, resumed, 11, 20)
			sum := readSummary(t, resumed)
			if sum.ResumedStep != 10 || !strings.HasSuffix(sum.ResumedFrom, checkpoint.StepName(10)) || sum.Status.Step != 20 {
				t.Errorf("summary: resumed from %q step %d, ended at step %d", sum.ResumedFrom, sum.ResumedStep, sum.Status.Step)
			}
			for _, w := range []string{"worker-0.log", "worker-1.log"} {
				b, _ := os.ReadFile(filepath.Join(resumed, w))
				if !strings.Contains(string(b), `"resumed_step":10`) {
					t.Errorf("%s does not log the resume", w)
				}
			}
		})
	}
}

// waitFile waits for path to exist and returns its contents.
func waitFile(t *testing.T, path string, d time.Duration, p *process) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before %s appeared", p.name, path)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not appear within %v", path, d)
	return ""
}

// TestCheckpointCrash: SIGKILL of a worker process, and of the coordinator
// (the launch process), while rank 1 is in the middle of writing its shard
// of step 10 (held there by the test hook) leaves step 5 published and
// loadable, step 10 unpublished (docs/checkpoint-format.md#commit-protocol);
// `--resume latest` removes the leftovers, resumes at 5 and reproduces the
// uninterrupted losses.
func TestCheckpointCrash(t *testing.T) {
	job := ckptJob(t, false)
	plain := mustLaunch(t, job)
	for _, victim := range []string{"worker", "coordinator"} {
		t.Run(victim, func(t *testing.T) {
			ck := filepath.Join(t.TempDir(), "ck")
			marker := filepath.Join(t.TempDir(), "paused")
			run := filepath.Join(t.TempDir(), "run")
			p := start(t, "coordinator launch", []string{worker.PauseEnv + "=10:1:" + marker},
				"launch", "--workers", "2", "--config", job, "--run-dir", run, "--no-bar",
				"--checkpoint-dir", ck, "--checkpoint-every", "5", "--grace", "2s")
			fields := strings.Fields(waitFile(t, marker, 60*time.Second, p))
			if len(fields) != 2 || !strings.Contains(fields[1], checkpoint.StepName(10)+".tmp") {
				t.Fatalf("marker %q", fields)
			}
			pid, err := strconv.Atoi(fields[0])
			if err != nil {
				t.Fatal(err)
			}
			// Rank 1 reported its step-5 shard before it began step 10's, so
			// step 5 gets published while step 10 is held: wait for that.
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, latest := committedSteps(t, ck); latest == 5 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("step 5 was not published while step 10 was held")
				}
				time.Sleep(20 * time.Millisecond)
			}
			switch victim {
			case "worker":
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				if code := p.wait(60 * time.Second); code == 0 {
					t.Fatal("launch succeeded after a worker was killed")
				}
				if out := p.output(); !strings.Contains(out, "died") {
					t.Errorf("launch output does not report the dead worker:\n%s", out)
				}
			case "coordinator":
				if err := p.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				p.wait(10 * time.Second)
				// The workers die with it (parent-death signal); wait for
				// the held one so it cannot touch the directory later.
				deadline = time.Now().Add(10 * time.Second)
				for syscall.Kill(pid, 0) == nil {
					if time.Now().After(deadline) {
						t.Fatalf("worker pid %d outlived the killed coordinator", pid)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			steps, latest := committedSteps(t, ck)
			if fmt.Sprint(steps) != "[5]" || latest != 5 {
				t.Fatalf("after the crash: committed steps %v, LATEST %d; want [5], 5", steps, latest)
			}
			if _, err := os.Stat(filepath.Join(ck, checkpoint.StepName(10)+".tmp")); err != nil {
				t.Errorf("the interrupted step's temporary directory: %v", err)
			}
			c, err := checkpoint.OpenDir(filepath.Join(ck, checkpoint.StepName(5)), checkpoint.OpenOptions{Verify: checkpoint.VerifyFull})
			if err != nil {
				t.Fatalf("previous checkpoint not loadable: %v", err)
			}
			c.Close()

			resumed := mustLaunch(t, job, "--checkpoint-dir", ck, "--checkpoint-every", "5", "--resume", "latest")
			sameLosses(t, "resumed after "+victim+" kill", plain, resumed, 6, 20)
			b, _ := os.ReadFile(filepath.Join(resumed, "coordinator.log"))
			if !strings.Contains(string(b), "removed incomplete checkpoints") {
				t.Errorf("the resumed coordinator does not report removing the leftovers")
			}
			if steps, latest := committedSteps(t, ck); fmt.Sprint(steps) != "[5 10 15 20]" || latest != 20 {
				t.Errorf("after the resumed run: steps %v, LATEST %d", steps, latest)
			}
		})
	}
}

// TestResumeDetectsDamage: a truncated shard and a shard with one
// flipped bit in the newest checkpoint of a 2-rank job are each named when
// that step is asked for; `--resume latest` falls back to the previous one,
// says so, sets the damaged one aside, and the run matches an uninterrupted
// one.
func TestResumeDetectsDamage(t *testing.T) {
	job := ckptJob(t, false)
	plain := mustLaunch(t, job)
	for _, damage := range []string{"flip", "truncate"} {
		t.Run(damage, func(t *testing.T) {
			ck := filepath.Join(t.TempDir(), "ck")
			mustLaunch(t, job, "--checkpoint-dir", ck, "--checkpoint-every", "5")
			shard := filepath.Join(ck, checkpoint.StepName(20), checkpoint.ShardName(1))
			b, err := os.ReadFile(shard)
			if err != nil {
				t.Fatal(err)
			}
			switch damage {
			case "flip":
				b[len(b)/3] ^= 0x04
			case "truncate":
				b = b[:len(b)-64]
			}
			if err := os.WriteFile(shard, b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, code, out := launchRun(t, job, nil, "--checkpoint-dir", ck, "--resume", "20")
			if code == 0 || !strings.Contains(out, checkpoint.ShardName(1)) || !strings.Contains(out, checkpoint.StepName(20)) {
				t.Fatalf("resume of the damaged step: exit %d, want an error naming %s:\n%s", code, shard, out)
			}
			resumed := mustLaunch(t, job, "--checkpoint-dir", ck, "--checkpoint-every", "5", "--resume", "latest")
			log, _ := os.ReadFile(filepath.Join(resumed, "coordinator.log"))
			if !strings.Contains(string(log), "resuming from the newest intact one") || !strings.Contains(string(log), "skipped step 20") {
				t.Errorf("coordinator.log does not report the fallback:\n%s", log)
			}
			if _, err := os.Stat(filepath.Join(ck, checkpoint.StepName(20)+".damaged")); err != nil {
				t.Errorf("damaged checkpoint not set aside: %v", err)
			}
			sameLosses(t, "resumed at 15 after "+damage, plain, resumed, 16, 20)
		})
	}
}
