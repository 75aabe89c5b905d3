//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cluster"
)

// Chaos tests of automatic recovery and of the coordinator's takeover
// (docs/control-plane.md#automatic-recovery). The faults' victims and
// moments come from a seed that is logged; MOETRAIN_CHAOS_SEED replays one.

// chaosJob is a 300-step job of tinyModel: checkpoints every 20 steps,
// validation at steps 100, 200 and 300.
var chaosJob = tinyTrain(300, 100, 4, 50)

func chaosSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MOETRAIN_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MOETRAIN_CHAOS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("chaos seed %d (replay with MOETRAIN_CHAOS_SEED=%d)", seed, seed)
	return seed
}

// readJobState reads run's job-state file (nil while there is none).
func readJobState(t *testing.T, run string) *cluster.JobState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(run, cluster.JobStateFile))
	if err != nil {
		return nil
	}
	var s cluster.JobState
	if json.Unmarshal(b, &s) != nil {
		return nil // rewritten under us: the next read gets it
	}
	return &s
}

// fault is one injected failure.
type fault struct {
	sig    syscall.Signal
	slot   int           // worker slot (worker-<slot>.log)
	step   int           // once the job (slowest rank) reached this step
	jitter time.Duration // and this much later
	pid    int
	at     time.Time
}

// chaosSchedule draws the faults: kills SIGKILLs and stops SIGSTOPs in a
// random order, to random worker slots, fault i once the job reached a
// random step of [15+40i, 35+40i] (so every fault lands inside a 300-step
// run), plus up to 300 ms.
func chaosSchedule(rng *rand.Rand, kills, stops, workers int) []fault {
	var fs []fault
	for i := 0; i < kills+stops; i++ {
		sig := syscall.SIGKILL
		if i >= kills {
			sig = syscall.SIGSTOP
		}
		fs = append(fs, fault{sig: sig, slot: rng.IntN(workers)})
	}
	rng.Shuffle(len(fs), func(i, j int) { fs[i], fs[j] = fs[j], fs[i] })
	for i := range fs {
		fs[i].step = 15 + 40*i + rng.IntN(21)
		fs[i].jitter = time.Duration(rng.IntN(300)) * time.Millisecond
	}
	return fs
}

// waitFault waits until run's job runs generation gen (or a later one),
// has caught up with the previous recovery (so each fault's time lost is
// measured alone) and its slowest rank reached step; false when the launch
// exited first.
func waitFault(t *testing.T, run string, gen, step int, p *process, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		s := readJobState(t, run)
		if s != nil && s.Generation >= gen && s.Phase == cluster.PhaseRunning && s.Step >= step &&
			(len(s.Recoveries) == 0 || s.Recoveries[len(s.Recoveries)-1].CaughtUpS > 0) {
			return true
		}
		select {
		case <-p.done:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("the job did not reach step %d in generation %d within %v", step, gen, d)
	return false
}

// injectFaults carries out fs on launch p of run, one per generation.
func injectFaults(t *testing.T, p *process, run string, fs []fault) {
	t.Helper()
	for i := range fs {
		f := &fs[i]
		if !waitFault(t, run, i, f.step, p, 2*time.Minute) {
			t.Fatalf("the job ended before fault %d of %d:\n%s", i, len(fs), p.output())
		}
		time.Sleep(f.jitter)
		pids := pidsWithArg(filepath.Join(run, fmt.Sprintf("worker-%d.log", f.slot)))
		if len(pids) != 1 {
			t.Fatalf("fault %d: worker slot %d has processes %v, want one", i, f.slot, pids)
		}
		f.pid, f.at = pids[0], time.Now()
		if err := syscall.Kill(f.pid, f.sig); err != nil {
			t.Fatalf("fault %d: %v", i, err)
		}
		t.Logf("fault %d: %v to worker slot %d (pid %d) at step >= %d (+%v), generation %d", i, f.sig, f.slot, f.pid, f.step, f.jitter, i)
		if f.sig == syscall.SIGSTOP {
			t.Cleanup(func() { _ = syscall.Kill(f.pid, syscall.SIGKILL) })
		}
	}
}

// reportRecoveries logs each fault's recovery and returns the time lost
// per fault: from the signal to the slowest rank being back at the step
// the fault interrupted.
func reportRecoveries(t *testing.T, sum cluster.Summary, fs []fault) []time.Duration {
	t.Helper()
	var recs []cluster.RecoveryRecord
	for _, r := range sum.Recoveries {
		if r.Grow {
			t.Logf("grew back: %s; steps %d→%d (%d redone), mesh %s, %.2fs from the re-plan to catch-up",
				r.Cause, r.FailedStep, r.ResumedStep, r.StepsRedone, r.Mesh, r.TimeLostS)
			continue
		}
		recs = append(recs, r)
	}
	if len(recs) != len(fs) {
		t.Errorf("%d recoveries for %d faults: %+v", len(recs), len(fs), recs)
	}
	var lost []time.Duration
	for i, r := range recs {
		caught := sum.Started.Add(time.Duration(r.CaughtUpS * float64(time.Second)))
		detect := sum.Started.Add(time.Duration(r.DetectedS * float64(time.Second)))
		line := fmt.Sprintf("recovery %d: %s; steps %d→%d (%d redone), mesh %s, shrunk %v", i, r.Cause, r.FailedStep, r.ResumedStep, r.StepsRedone, r.Mesh, r.Shrunk)
		if i < len(fs) {
			tl := caught.Sub(fs[i].at)
			lost = append(lost, tl)
			line += fmt.Sprintf("; %v: detected after %.2fs, time lost %.2fs (detection to catch-up %.2fs)",
				fs[i].sig, detect.Sub(fs[i].at).Seconds(), tl.Seconds(), r.TimeLostS)
			if r.CaughtUpS == 0 {
				t.Errorf("recovery %d never caught up: %+v", i, r)
			}
		}
		t.Log(line)
	}
	return lost
}

// sameCheckpoints requires every tensor of a's and b's step to be bitwise
// equal.
func sameCheckpoints(t *testing.T, a, b string, step int64) {
	t.Helper()
	ca, err := checkpoint.OpenDir(filepath.Join(a, checkpoint.StepName(step)), checkpoint.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := checkpoint.OpenDir(filepath.Join(b, checkpoint.StepName(step)), checkpoint.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	names := ca.TensorNames()
	if !slices.Equal(names, cb.TensorNames()) || len(names) == 0 {
		t.Fatalf("step %d: tensors %v vs %v", step, names, cb.TensorNames())
	}
	for _, n := range names {
		x, _, err := ca.ReadTensor(n)
		if err != nil {
			t.Fatal(err)
		}
		y, _, err := cb.ReadTensor(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(x) != len(y) {
			t.Fatalf("step %d: tensor %s has %d vs %d values", step, n, len(x), len(y))
		}
		for i := range x {
			if x[i] != y[i] && !(x[i] != x[i] && y[i] != y[i]) {
				t.Fatalf("step %d: tensor %s differs at %d: %v vs %v", step, n, i, x[i], y[i])
			}
		}
	}
}

// everyCheckpoint requires dir to hold every step of every steps up to
// last, each intact.
func everyCheckpoint(t *testing.T, dir string, every, last int64) {
	t.Helper()
	steps, latest := committedSteps(t, dir)
	var want []int64
	for s := every; s <= last; s += every {
		want = append(want, s)
	}
	if !slices.Equal(steps, want) || latest != last {
		t.Fatalf("committed steps %v (LATEST %d), want %v", steps, latest, want)
	}
	for _, s := range steps {
		c, err := checkpoint.OpenDir(filepath.Join(dir, checkpoint.StepName(s)), checkpoint.OpenOptions{})
		if err == nil {
			err = c.Verify()
			c.Close()
		}
		if err != nil {
			t.Errorf("checkpoint step %d: %v", s, err)
		}
	}
}

// chaosLaunch starts `launch --workers 4` of chaosJob with checkpoints
// every 20 steps in ck, and flags.
func chaosLaunch(t *testing.T, job, run, ck string, flags ...string) *process {
	t.Helper()
	args := append([]string{"launch", "--workers", "4", "--config", job, "--run-dir", run, "--no-bar",
		"--checkpoint-dir", ck, "--checkpoint-every", "20", "--grace", "5s"}, flags...)
	return start(t, "coordinator launch", nil, args...)
}

// chaosReference runs chaosJob uninterrupted and returns its run and
// checkpoint directories.
func chaosReference(t *testing.T, job string) (string, string) {
	t.Helper()
	run, ck := filepath.Join(t.TempDir(), "ref"), filepath.Join(t.TempDir(), "ref-ck")
	p := chaosLaunch(t, job, run, ck)
	t0 := time.Now()
	if code := p.wait(3 * time.Minute); code != 0 {
		t.Fatalf("uninterrupted launch exited %d:\n%s", code, p.output())
	}
	t.Logf("uninterrupted run: %v", time.Since(t0).Round(time.Millisecond))
	return run, ck
}

// faultedLaunch is a launch of chaosJob under faults and the uninterrupted
// launch it is compared with: their run and checkpoint directories.
type faultedLaunch struct {
	refRun, refCk, run, ck string
	faults                 []fault
}

// launchUnderFaults runs chaosJob uninterrupted, then again under 5 SIGKILLs
// and a SIGSTOP of random workers at random moments (stream of the chaos
// seed) with --rejoin-timeout 60s, the flags that more gives, and
// --max-restarts restarts(number of faults). It fails t unless both
// launches exit 0.
func launchUnderFaults(t *testing.T, stream uint64, restarts func(faults int) int, more ...string) faultedLaunch {
	t.Helper()
	const kills, stops = 5, 1
	rng := rand.New(rand.NewPCG(chaosSeed(t), stream))
	job := writeJobText(t, chaosJob)
	var l faultedLaunch
	l.refRun, l.refCk = chaosReference(t, job)
	l.run, l.ck = filepath.Join(t.TempDir(), "chaos"), filepath.Join(t.TempDir(), "chaos-ck")
	l.faults = chaosSchedule(rng, kills, stops, 4)
	t0 := time.Now()
	flags := append([]string{"--max-restarts", strconv.Itoa(restarts(len(l.faults))), "--rejoin-timeout", "60s"}, more...)
	p := chaosLaunch(t, job, l.run, l.ck, flags...)
	injectFaults(t, p, l.run, l.faults)
	if code := p.wait(3 * time.Minute); code != 0 {
		t.Fatalf("launch under faults exited %d:\n%s", code, p.output())
	}
	t.Logf("run with %d faults: %v", len(l.faults), time.Since(t0).Round(time.Millisecond))
	return l
}

// TestChaosRecovery: SIGKILLs and a SIGSTOP of random workers at random
// moments; the launch replaces them and finishes by itself, every
// checkpoint is committed and bitwise the uninterrupted run's.
func TestChaosRecovery(t *testing.T) {
	l := launchUnderFaults(t, 1, func(faults int) int { return faults + 2 })
	sum := readSummary(t, l.run)
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != 300 {
		t.Fatalf("summary: %s at step %d: %s", sum.Phase, sum.Status.Step, sum.Reason)
	}
	reportRecoveries(t, sum, l.faults)
	everyCheckpoint(t, l.ck, 20, 300)
	for s := int64(20); s <= 300; s += 20 {
		sameCheckpoints(t, l.refCk, l.ck, s)
	}
}

// TestChaosRecoveryMayShrink: the same faults on `launch --allow-shrink`.
// The launcher restarts a dead worker itself, so a recovery keeps the mesh
// when the replacement joins in time and shrinks when it does not: either
// way the job finishes by itself, every checkpoint is committed, and its
// final validation loss is within 0.05 of the uninterrupted run's.
func TestChaosRecoveryMayShrink(t *testing.T) {
	l := launchUnderFaults(t, 4, func(faults int) int { return 2*faults + 2 }, "--allow-shrink")
	sum, want := readSummary(t, l.run), readSummary(t, l.refRun)
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != 300 || sum.FinalVal == nil || want.FinalVal == nil {
		t.Fatalf("summary: %s at step %d: %s (validation %v, reference %v)", sum.Phase, sum.Status.Step, sum.Reason, sum.FinalVal, want.FinalVal)
	}
	reportRecoveries(t, sum, l.faults)
	shrunk := 0
	for _, r := range sum.Recoveries {
		if r.Shrunk {
			shrunk++
		}
	}
	d := *sum.FinalVal - *want.FinalVal
	t.Logf("%d recoveries, %d shrunk; final validation loss %.4f, uninterrupted %.4f: delta %+.4f",
		len(sum.Recoveries), shrunk, *sum.FinalVal, *want.FinalVal, d)
	if d > 0.05 || d < -0.05 {
		t.Errorf("final validation loss %.4f is more than 0.05 from the uninterrupted run's %.4f", *sum.FinalVal, *want.FinalVal)
	}
	everyCheckpoint(t, l.ck, 20, 300)
}

// serveWorker starts `worker --join addr` for slot of run (its log file
// names the slot, for injectFaults).
func serveWorker(t *testing.T, env []string, addr, run string, slot int) *process {
	t.Helper()
	return start(t, "worker "+strconv.Itoa(slot), env, "--join", addr, "--threads", "1",
		"--log-file", filepath.Join(run, fmt.Sprintf("worker-%d.log", slot)))
}

// TestChaosShrink: `serve --allow-shrink` of four workers, two of which
// die: with no replacement in sight the job goes on with the survivors
// (dp 3, then 2); two new workers join then, and the job grows back onto
// them (dp 4) at the next committed checkpoint. Its final validation loss
// is within 0.05 of the uninterrupted run's.
func TestChaosShrink(t *testing.T) {
	rng := rand.New(rand.NewPCG(chaosSeed(t), 2))
	job := writeJobText(t, chaosJob)
	ref, _ := chaosReference(t, job)

	addr := freeAddr(t)
	env := []string{cluster.TokenEnv + "=shrink-test-token"}
	run, ck := filepath.Join(t.TempDir(), "shrink"), filepath.Join(t.TempDir(), "shrink-ck")
	coord := start(t, "coordinator serve", env, "serve", "--config", job, "--listen", addr, "--workers", "4", "--run-dir", run,
		"--checkpoint-dir", ck, "--checkpoint-every", "20", "--max-restarts", "4", "--rejoin-timeout", "60s", "--allow-shrink")
	var workers []*process
	for i := 0; i < 4; i++ {
		workers = append(workers, serveWorker(t, env, addr, run, i))
	}
	fs := chaosSchedule(rng, 2, 0, 4)
	for i := range fs { // two different workers
		fs[i].slot = i * 2
	}
	injectFaults(t, coord, run, fs)
	// The replacements are started as soon as the job runs shrunk to two
	// workers (a launcher would start them at once); the job runs shrunk
	// until they joined and the next checkpoint is committed.
	if !waitFault(t, run, 2, 0, coord, 2*time.Minute) {
		t.Fatalf("the job ended before the replacements joined:\n%s", coord.output())
	}
	for _, slot := range []int{4, 5} {
		workers = append(workers, serveWorker(t, env, addr, run, slot))
	}
	if code := coord.wait(3 * time.Minute); code != 0 {
		t.Fatalf("serve under faults exited %d:\n%s", code, coord.output())
	}
	for _, w := range workers { // stopped by the job's end, or killed by a fault
		w.wait(30 * time.Second)
	}
	sum, want := readSummary(t, run), readSummary(t, ref)
	if sum.Phase != cluster.PhaseSucceeded || sum.FinalVal == nil || want.FinalVal == nil {
		t.Fatalf("summary: %s: %s (validation %v, reference %v)", sum.Phase, sum.Reason, sum.FinalVal, want.FinalVal)
	}
	reportRecoveries(t, sum, fs)
	var meshes []string
	grown := 0
	for _, r := range sum.Recoveries {
		meshes = append(meshes, r.Mesh)
		if r.Grow {
			grown++
		} else if !r.Shrunk {
			t.Errorf("a recovery without replacements did not shrink: %+v", r)
		}
	}
	if want := "[dp=3 sp=1 tp=1 ep=1 dp=2 sp=1 tp=1 ep=1 dp=4 sp=1 tp=1 ep=1]"; fmt.Sprint(meshes) != want || grown != 1 || sum.Restarts != 2 {
		t.Errorf("meshes %v (want %s), %d grow-backs, %d restarts", meshes, want, grown, sum.Restarts)
	}
	d := *sum.FinalVal - *want.FinalVal
	t.Logf("final validation loss %.4f, uninterrupted %.4f: delta %+.4f", *sum.FinalVal, *want.FinalVal, d)
	if d > 0.05 || d < -0.05 {
		t.Errorf("final validation loss %.4f is more than 0.05 from the uninterrupted run's %.4f", *sum.FinalVal, *want.FinalVal)
	}
	everyCheckpoint(t, ck, 20, 300)
}

// TestCoordinatorRestart: `serve` is SIGKILLed at a random moment and
// started again on the same run directory; its workers rejoin, the job
// finishes and its checkpoints are bitwise those of an uninterrupted run.
func TestCoordinatorRestart(t *testing.T) {
	rng := rand.New(rand.NewPCG(chaosSeed(t), 3))
	job := writeJobText(t, chaosJob)
	refRun, refCk := filepath.Join(t.TempDir(), "ref"), filepath.Join(t.TempDir(), "ref-ck")
	ref := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", job, "--run-dir", refRun, "--no-bar",
		"--threads", "1", "--checkpoint-dir", refCk, "--checkpoint-every", "20")
	if code := ref.wait(3 * time.Minute); code != 0 {
		t.Fatalf("uninterrupted launch exited %d:\n%s", code, ref.output())
	}

	addr := freeAddr(t)
	const token = "restart-test-token"
	env := []string{cluster.TokenEnv + "=" + token}
	run, ck := filepath.Join(t.TempDir(), "run"), filepath.Join(t.TempDir(), "ck")
	serveArgs := []string{"serve", "--config", job, "--listen", addr, "--workers", "2", "--run-dir", run,
		"--checkpoint-dir", ck, "--checkpoint-every", "20", "--max-restarts", "3", "--rejoin-timeout", "60s"}
	coord := start(t, "coordinator serve", env, serveArgs...)
	var workers []*process
	for i := 0; i < 2; i++ {
		workers = append(workers, serveWorker(t, env, addr, run, i))
	}
	killAt := 30 + rng.IntN(200) // a step, so the moment falls inside the run
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var atKill int64 // the job's step as the coordinator last said
	for {
		s, err := cluster.QueryStatus(ctx, addr, token)
		if err == nil && s.Phase == "running" && s.Step >= int64(killAt) {
			atKill = s.Step
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("job did not reach step %d: %v\n%s", killAt, err, coord.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed := time.Now()
	if err := coord.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	coord.wait(10 * time.Second)
	coord2 := start(t, "coordinator serve (restarted)", env, serveArgs...)
	// Time lost: from the kill until the restarted job is back at the step
	// the killed coordinator last reported.
	var back time.Duration
	for back == 0 {
		s, err := cluster.QueryStatus(ctx, addr, token)
		if err == nil && s.Phase == "running" && s.Step >= atKill {
			back = time.Since(killed)
		}
		select {
		case <-coord2.done:
			t.Fatalf("the restarted coordinator exited before the job was back at step %d:\n%s", atKill, coord2.output())
		case <-ctx.Done():
			t.Fatalf("the restarted job did not reach step %d:\n%s", atKill, coord2.output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Logf("coordinator SIGKILLed at step %d; the restarted job was back there %.2fs after the kill", atKill, back.Seconds())
	if code := coord2.wait(3 * time.Minute); code != 0 {
		t.Fatalf("restarted coordinator exited %d:\n%s", code, coord2.output())
	}
	for _, w := range workers {
		if code := w.wait(30 * time.Second); code != 0 {
			t.Errorf("%s exited %d:\n%s", w.name, code, w.output())
		}
	}
	sum := readSummary(t, run)
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != 300 || len(sum.Recoveries) != 1 {
		t.Fatalf("summary: %s at step %d: %s; recoveries %+v", sum.Phase, sum.Status.Step, sum.Reason, sum.Recoveries)
	}
	r := sum.Recoveries[0]
	caught := sum.Started.Add(time.Duration(r.CaughtUpS * float64(time.Second)))
	t.Logf("takeover: %s; resumed from step %d, %d steps redone by the job state's last step; its catch-up %.2fs after the kill",
		r.Cause, r.ResumedStep, r.StepsRedone, caught.Sub(killed).Seconds())
	everyCheckpoint(t, ck, 20, 300)
	for s := int64(20); s <= 300; s += 20 {
		sameCheckpoints(t, refCk, ck, s)
	}
	// A third start on the finished job's run directory is refused.
	again := start(t, "coordinator serve (third)", env, serveArgs...)
	if code := again.wait(30 * time.Second); code == 0 || !strings.Contains(again.output(), "which has ended (succeeded)") {
		t.Errorf("serve on a finished job's run directory exited %d:\n%s", code, again.output())
	}
}
