//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/train"
)

// launchTiny runs `coordinator launch --workers 2` on the tiny job and
// returns the run directory.
func launchTiny(t *testing.T, flags ...string) string {
	t.Helper()
	run := filepath.Join(t.TempDir(), "run")
	args := append([]string{"launch", "--workers", "2", "--config", writeJob(t), "--run-dir", run, "--no-bar"}, flags...)
	p := start(t, "coordinator launch", nil, args...)
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("launch exited %d", code)
	}
	out := p.output()
	for _, want := range []string{"step 1/20", "job succeeded after 20/20 steps"} {
		if !strings.Contains(out, want) {
			t.Errorf("launch output lacks %q", want)
		}
	}
	return run
}

// stepLosses reads the "step" lines of a worker's JSON log: loss by step.
// Every line after the start must carry rank and step.
func stepLosses(t *testing.T, path string) map[float64]float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	losses := map[float64]float64{}
	started := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: line is not JSON: %q", path, line)
		}
		if m["worker"] == nil {
			t.Errorf("%s: line without the worker id: %s", path, line)
		}
		started = started || m["message"] == "start"
		_, hasRank := m["rank"]
		_, hasStep := m["step"]
		if started && m["component"] == nil && m["node"] == nil && (!hasRank || !hasStep) {
			t.Errorf("%s: line without rank and step: %s", path, line)
		}
		if m["message"] == "step" {
			losses[m["step"].(float64)] = m["loss"].(float64)
		}
	}
	if len(losses) == 0 {
		t.Errorf("%s has no step lines", path)
	}
	return losses
}

// TestLaunchTwoWorkers: on a tiny model, launch with 2 worker processes
// trains to the end, exits 0, and leaves logs and a summary; a second run
// gives bitwise the same losses (deterministic data-parallel training, see
// docs/mesh.md#parallel-equals-serial).
func TestLaunchTwoWorkers(t *testing.T) {
	run := launchTiny(t)
	sum, b := readSummaryJSON(t, run)
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != 20 || len(sum.WorkerExits) != 2 || sum.FinalVal == nil ||
		sum.Plan == nil || sum.Plan.Mesh.DP != 2 {
		t.Fatalf("summary %s", b)
	}
	for _, e := range sum.WorkerExits {
		if e.ExitCode != 0 {
			t.Errorf("worker %d exited %d", e.Index, e.ExitCode)
		}
	}
	// The run directory's job.toml reproduces the job.
	job, err := train.LoadJobConfig(filepath.Join(run, "job.toml"))
	if err != nil {
		t.Fatalf("job.toml of the run: %v", err)
	}
	if !reflect.DeepEqual(job, sum.Config) {
		t.Errorf("job.toml %+v differs from the summary's config %+v", job, sum.Config)
	}
	first := [2]map[float64]float64{stepLosses(t, filepath.Join(run, "worker-0.log")), stepLosses(t, filepath.Join(run, "worker-1.log"))}
	// Both ranks log the same (all-reduced) loss.
	for step, l := range first[0] {
		if first[1][step] != l {
			t.Errorf("step %v: rank losses differ: %v vs %v", step, l, first[1][step])
		}
	}
	// The second run's data plane uses reno, not the default: the losses
	// are the same, and each worker says what it asked for.
	again := launchTiny(t, "--tcp-congestion", "reno")
	for run, want := range map[string]string{run: collective.DefaultCongestion, again: "reno"} {
		for i := 0; i < 2; i++ {
			b, err := os.ReadFile(filepath.Join(run, "worker-"+strconv.Itoa(i)+".log"))
			if err != nil {
				t.Fatal(err)
			}
			if field := `"tcp_congestion":"` + want + `"`; !strings.Contains(string(b), field) {
				t.Errorf("worker-%d.log of %s lacks %s", i, run, field)
			}
		}
	}
	for i := 0; i < 2; i++ {
		second := stepLosses(t, filepath.Join(again, "worker-"+strconv.Itoa(i)+".log"))
		for step, l := range first[i] {
			if second[step] != l {
				t.Errorf("worker-%d step %v: loss %v in the first run, %v in the second", i, step, l, second[step])
			}
		}
	}
}

// A congestion control the kernel refuses fails the launch at once, naming
// the flag and the name, before any worker starts.
func TestLaunchBadCongestion(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", writeJob(t), "--run-dir", run,
		"--no-bar", "--tcp-congestion", "nosuch-cc")
	if code := p.wait(10 * time.Second); code == 0 {
		t.Fatal("launch with --tcp-congestion nosuch-cc succeeded")
	}
	out := p.output()
	for _, want := range []string{"--tcp-congestion", "nosuch-cc"} {
		if !strings.Contains(out, want) {
			t.Errorf("launch output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(run, "worker-0.log")); err == nil {
		t.Error("a worker was started")
	}
}

// TestKillWorker: coordinator + 3 workers as processes; SIGKILL one mid-job;
// the coordinator names it within 10 s and every other process exits by
// itself (docs/control-plane.md#failure-handling).
func TestKillWorker(t *testing.T) {
	addr := freeAddr(t)
	env := []string{cluster.TokenEnv + "=kill-test-token"}
	run := filepath.Join(t.TempDir(), "run")
	coord := start(t, "coordinator serve", env, "serve", "--config", writeJob(t), "--steps", "1000000", "--listen", addr,
		"--workers", "3", "--run-dir", run)
	var workers []*process
	for i := 0; i < 3; i++ {
		workers = append(workers, start(t, "worker "+string(rune('0'+i)), env, "--join", addr, "--threads", "1"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Wait until the job has taken a few steps.
	var victim int32
	for {
		s, err := cluster.QueryStatus(ctx, addr, "kill-test-token")
		if err == nil && s.Phase == "running" && s.Step >= 3 {
			for _, w := range s.Workers {
				if w.Rank == 1 {
					victim = w.Pid
				}
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("job did not reach step 3: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The status command shows the job and every worker.
	st, err := exec.Command(filepath.Join(binDir, "coordinator"), "status", "--addr", addr, "--token", "kill-test-token").CombinedOutput()
	if err != nil {
		t.Fatalf("coordinator status: %v\n%s", err, st)
	}
	if !strings.Contains(string(st), ": running") || !strings.Contains(string(st), "mesh dp=3 sp=1 tp=1 ep=1  workers 3/3") ||
		strings.Count(string(st), " running ") != 3 {
		t.Errorf("status output:\n%s", st)
	}
	var dead *process
	for _, w := range workers {
		if int32(w.cmd.Process.Pid) == victim {
			dead = w
		}
	}
	if dead == nil {
		t.Fatalf("rank 1's pid %d is none of the started workers", victim)
	}
	if err := dead.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The deadline is the acceptance criterion (detection within 10 s), not
	// a performance measurement.
	named, cancelNamed := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelNamed()
	pidText := "pid " + strconv.Itoa(int(victim))
	if _, err := coord.waitLine(named, "job ended", pidText, "died"); err != nil {
		t.Fatal(err)
	}
	if code := coord.wait(20 * time.Second); code == 0 {
		t.Errorf("coordinator exited 0 after a failed job")
	}
	for _, w := range workers {
		if w == dead {
			continue
		}
		if code := w.wait(20 * time.Second); code != 3 {
			t.Errorf("%s exited %d, want 3 (aborted by the coordinator)", w.name, code)
		}
		if !strings.Contains(w.output(), "job aborted by the coordinator: worker w") || !strings.Contains(w.output(), pidText) {
			t.Errorf("%s does not report the abort naming the dead worker", w.name)
		}
	}
	dead.wait(5 * time.Second)
	b, err := os.ReadFile(filepath.Join(run, "summary.json"))
	if err != nil || !strings.Contains(string(b), `"phase": "failed"`) {
		t.Errorf("summary: %v %s", err, b)
	}
}

// TestWrongTokenRefused: a worker with a wrong token is refused with a clear
// message, and the coordinator keeps waiting (then stops on request).
func TestWrongTokenRefused(t *testing.T) {
	addr := freeAddr(t)
	coord := start(t, "coordinator serve", []string{cluster.TokenEnv + "=right"}, "serve", "--config", writeJob(t),
		"--listen", addr, "--workers", "1", "--run-dir", t.TempDir())
	w := start(t, "worker", nil, "--join", addr, "--token", "wrong", "--join-timeout", "10s")
	if code := w.wait(20 * time.Second); code == 0 {
		t.Fatalf("worker with a wrong token exited 0")
	}
	if out := w.output(); !strings.Contains(out, "refused") || !strings.Contains(out, "wrong job token") {
		t.Errorf("worker output does not say the token was refused:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := coord.waitLine(ctx, "refused a request with a wrong job token"); err != nil {
		t.Error(err)
	}
	if _, err := cluster.QueryStatus(ctx, addr, "wrong"); err == nil || !strings.Contains(err.Error(), "wrong job token") {
		t.Errorf("status with a wrong token: %v", err)
	}
	stop := exec.Command(filepath.Join(binDir, "coordinator"), "stop", "--addr", addr, "--token", "right")
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("coordinator stop: %v\n%s", err, out)
	}
	if code := coord.wait(20 * time.Second); code == 0 {
		t.Errorf("coordinator exited 0 after being stopped before the job ran")
	}
	if !strings.Contains(coord.output(), "stopped by operator") {
		t.Errorf("coordinator output does not give the stop reason")
	}
}

// TestBusyPortRefused: a second coordinator on a busy port is refused clearly.
func TestBusyPortRefused(t *testing.T) {
	addr := freeAddr(t)
	first := start(t, "coordinator serve 1", []string{cluster.TokenEnv + "=t"}, "serve", "--config", writeJob(t),
		"--listen", addr, "--workers", "1", "--run-dir", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := first.waitLine(ctx, "coordinator waiting for workers"); err != nil {
		t.Fatal(err)
	}
	second := start(t, "coordinator serve 2", []string{cluster.TokenEnv + "=t"}, "serve", "--config", writeJob(t),
		"--listen", addr, "--workers", "1", "--run-dir", t.TempDir())
	if code := second.wait(10 * time.Second); code == 0 {
		t.Fatalf("second coordinator on a busy port exited 0")
	}
	if out := second.output(); !strings.Contains(out, "address already in use") || !strings.Contains(out, addr) {
		t.Errorf("second coordinator's message does not name the busy port:\n%s", out)
	}
	_ = first.cmd.Process.Signal(syscall.SIGTERM)
	first.wait(20 * time.Second)
}

// startLongLaunch starts `coordinator launch --workers 2` on the tiny job for
// a million steps and returns it with its run directory once step 1 is
// logged.
func startLongLaunch(t *testing.T) (*process, string) {
	t.Helper()
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", writeJob(t), "--steps", "1000000",
		"--run-dir", run, "--no-bar")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.waitLine(ctx, "step 1/1000000"); err != nil {
		t.Fatal(err)
	}
	return p, run
}

// Ctrl-C on launch stops the job on every worker process and leaves no
// process behind.
func TestLaunchInterrupt(t *testing.T) {
	p, run := startLongLaunch(t)
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(30 * time.Second); code == 0 {
		t.Errorf("interrupted launch exited 0")
	}
	sum, b := readSummaryJSON(t, run)
	if sum.Phase != cluster.PhaseStopped || len(sum.WorkerExits) != 2 {
		t.Fatalf("summary %s", b)
	}
	for _, e := range sum.WorkerExits {
		if err := syscall.Kill(e.Pid, 0); err == nil {
			t.Errorf("worker pid %d still exists after launch returned", e.Pid)
		}
	}
}

// pidsWithArg lists processes whose command line contains arg.
func pidsWithArg(arg string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), arg) {
			out = append(out, pid)
		}
	}
	return out
}

// A launch that is SIGKILLed (no chance to clean up) leaves no worker behind:
// they die with it (parent-death signal) or on losing the coordinator.
func TestLaunchKilledLeavesNoOrphans(t *testing.T) {
	p, run := startLongLaunch(t)
	workers := pidsWithArg(filepath.Join(run, "worker-"))
	if len(workers) != 2 {
		t.Fatalf("found worker pids %v, want 2", workers)
	}
	_ = p.cmd.Process.Kill()
	p.wait(10 * time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		for _, pid := range workers {
			if syscall.Kill(pid, 0) == nil {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, pid := range workers {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Fatalf("%d worker processes outlived the killed launch by 10 s", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
