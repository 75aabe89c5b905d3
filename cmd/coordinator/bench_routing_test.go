package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/train"
)

// testAsCoordinatorEnv makes the test binary act as the coordinator binary:
// `bench routing` re-executes os.Executable() (here the test binary) for its
// rank processes.
const (
	testAsCoordinatorEnv = "MOETRAIN_TEST_AS_COORDINATOR"
	// testCancelRankEnv names a rank whose process runs with its context
	// already cancelled: a rank that fails.
	testCancelRankEnv = "MOETRAIN_TEST_CANCEL_RANK"
	// testSpinEnv makes the test binary a busy loop: once a line arrives
	// on stdin it spins for the duration the variable holds, then exits.
	testSpinEnv = "MOETRAIN_TEST_SPIN"
)

func TestMain(m *testing.M) {
	if d := os.Getenv(testSpinEnv); d != "" {
		os.Exit(spin(d))
	}
	if os.Getenv(testAsCoordinatorEnv) != "1" {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if r := os.Getenv(testCancelRankEnv); r != "" {
		for i, a := range os.Args {
			if a == "--rank" && i+1 < len(os.Args) && os.Args[i+1] == r {
				cancel()
			}
		}
	}
	rootCmd.SetArgs(os.Args[1:])
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		os.Stderr.WriteString("coordinator: " + err.Error() + "\n")
		os.Exit(2)
	}
	os.Exit(0)
}

// spin waits for a line on stdin, then keeps one core busy for d of wall
// time; it returns the exit status.
func spin(d string) int {
	dur, err := time.ParseDuration(d)
	if err != nil {
		os.Stderr.WriteString(testSpinEnv + ": " + err.Error() + "\n")
		return 2
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Stderr.WriteString("spin: reading the start line: " + err.Error() + "\n")
		return 2
	}
	x := uint64(1)
	for t0 := time.Now(); time.Since(t0) < dur; {
		for range 1000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	if x == 0 { // keeps the loop from being optimised away
		os.Stderr.WriteString("spin: x is 0\n")
	}
	return 0
}

// tinyRoutingConfig writes a job TOML of a model small enough for a few
// steps in milliseconds (8 experts: ep 2 and 4 split them).
func tinyRoutingConfig(t *testing.T, extra string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.toml")
	text := `[model]
d_model = 16
layers = 2
heads = 2
seq_len = 16
experts = 8
expert_hidden = 32
[data]
seq_len = 16
batch_size = 2
` + extra
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runRoutingCmd runs a fresh `bench routing` command (its rank processes
// are this test binary) and returns its output.
func runRoutingCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	t.Setenv(testAsCoordinatorEnv, "1")
	cmd := newBenchRoutingCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// TestBenchRouting runs the command on 2 rank processes, a tiny model and 3
// timed steps: every router has a row; with the router skewed to rank 0,
// MoGE's IS is 0 and dropless top-k's is larger; the table prints every row.
func TestBenchRouting(t *testing.T) {
	cfg := tinyRoutingConfig(t, "")
	out, err := runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "3", "--warmup", "1", "--skew", "0.2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep benchRoutingReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out)
	}
	if len(rep.Rows) != len(cluster.DefaultRoutingCases) || rep.Anchor != "topk" || rep.K != 2 || rep.EP != 2 {
		t.Fatalf("report: %+v", rep)
	}
	rows := map[string]cluster.RoutingRow{}
	for i, r := range rep.Rows {
		if r.Case.Name != cluster.DefaultRoutingCases[i] {
			t.Errorf("row %d is %q, want %q", i, r.Case.Name, cluster.DefaultRoutingCases[i])
		}
		if r.Case.TopK != 2 || !(r.StepMS > 0) || !(r.Speedup > 0) || !(r.FinalLoss > 0) {
			t.Errorf("row %q: %+v", r.Case.Name, r)
		}
		rows[r.Case.Name] = r
	}
	if rows["moge"].IS != 0 {
		t.Errorf("moge IS = %v, want 0", rows["moge"].IS)
	}
	if !(rows["topk"].IS > rows["moge"].IS) {
		t.Errorf("skewed top-k IS = %v, not above moge's %v", rows["topk"].IS, rows["moge"].IS)
	}
	if rows["topk"].Speedup != 1 || !(rows["topk+cap1.25"].DropRate > 0) || rows["topk"].DropRate != 0 {
		t.Errorf("topk %+v, topk+cap1.25 %+v", rows["topk"], rows["topk+cap1.25"])
	}

	var table bytes.Buffer
	f := &benchRoutingFlags{ep: 2, steps: 3, warmup: 1, skew: 0.2, threads: 1, biasRate: 0.01, timeout: time.Minute,
		routers: strings.Join(cluster.DefaultRoutingCases, ",")}
	spec, err := f.specs(mustLoadJob(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := printBenchRouting(&table, f, spec[0], rep.Rows, rep.Anchor); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	var body []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "router") {
			body = append(body, l)
		}
	}
	if len(body) != len(cluster.DefaultRoutingCases) {
		t.Fatalf("table has %d rows, want %d:\n%s", len(body), len(cluster.DefaultRoutingCases), table.String())
	}
	for i, name := range cluster.DefaultRoutingCases {
		if fields := strings.Fields(body[i]); fields[0] != name {
			t.Errorf("table row %d is %q, want router %q", i, body[i], name)
		}
	}
}

func mustLoadJob(t *testing.T, path string) train.JobConfig {
	t.Helper()
	f := &benchRoutingFlags{config: path}
	j, err := f.job()
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestBenchRoutingRankFails: a rank that fails fails the command with that
// rank's error, and the other rank is stopped instead of waiting for it.
func TestBenchRoutingRankFails(t *testing.T) {
	cfg := tinyRoutingConfig(t, "")
	t.Setenv(testCancelRankEnv, "1")
	_, err := runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "2", "--warmup", "0", "--routers", "moge")
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "rank 1 of 2") || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("error %v: want rank 1's context cancellation", err)
	}

	// Every rank fails on missing data; the error names the data.
	missing := filepath.Join(t.TempDir(), "absent.txt")
	cfg = tinyRoutingConfig(t, "path = \""+missing+"\"\n")
	t.Setenv(testCancelRankEnv, "")
	_, err = runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "2", "--routers", "topk")
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "data") || !strings.Contains(err.Error(), "absent.txt") {
		t.Fatalf("error %v: want the rank's data error", err)
	}
}

func TestBenchRoutingFlags(t *testing.T) {
	cfg := tinyRoutingConfig(t, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ep", "1"}, "--ep 1"},
		{[]string{"--ep", "3"}, "--ep 3 must divide model.experts = 8"},
		{[]string{"--k", "9"}, "--k 9"},
		{[]string{"--k", "-1"}, "--k -1"},
		{[]string{"--steps", "0"}, "--steps 0"},
		{[]string{"--warmup", "-1"}, "--warmup -1"},
		{[]string{"--threads", "0"}, "--threads 0"},
		{[]string{"--skew", "-0.5"}, "--skew -0.5"},
		{[]string{"--skew", "NaN"}, "--skew NaN"},
		{[]string{"--bias-rate", "0"}, "--bias-rate 0"},
		{[]string{"--timeout", "0s"}, "--timeout 0s"},
		{[]string{"--routers", "topk,switch"}, `unknown router configuration "switch"`},
		{[]string{"--routers", "topk,topk"}, "given twice"},
		{[]string{"--routers", ","}, "no router configurations"},
		{[]string{"--routers", "topk+capx"}, "topk+capF"},
		{[]string{"--ep", "2", "--k", "3"}, `router configuration "moge" (k = 3, groups = 2)`},
		{[]string{"--ep", "4", "--k", "5", "--routers", "group_limited"}, `"group_limited"`},
		{[]string{"--config", filepath.Join(t.TempDir(), "none.toml")}, "none.toml"},
		{[]string{"--rank-cpu", "-1"}, "--rank-cpu -1"},
		{[]string{"--rank-cpu", "NaN"}, "--rank-cpu NaN"},
		{[]string{"--rank-cpu", "+Inf"}, "--rank-cpu +Inf"},
		{[]string{"--rank-cpu", "0.001"}, "--rank-cpu 0.001: want 0 (off) or at least 0.01"},
		{[]string{"--ep", "2", "--rank-cpu", fmt.Sprint(float64(runtime.NumCPU())/2 + 0.25)},
			fmt.Sprintf("× --ep 2 = %g cores, more than the %d of this machine", float64(runtime.NumCPU())+0.5, runtime.NumCPU())},
	} {
		args := append([]string{"--config", cfg}, c.args...)
		if _, err := runRoutingCmd(t, args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one containing %q", c.args, err, c.want)
		}
	}
}

// rankCPUGroups skips the test unless this host can make CPU quota groups,
// and returns a function listing this process's bench groups left behind.
func rankCPUGroups(t *testing.T) func() []string {
	t.Helper()
	q, err := newCPUQuota(fmt.Sprintf("moetrain-probe-%d", os.Getpid()), 0.5)
	if ue, ok := errors.AsType[*cgroupUnavailableError](err); ok {
		t.Skipf("cgroups are not writable here: %v", ue)
	}
	if err != nil {
		t.Fatal(err)
	}
	parent := filepath.Dir(q.Dir())
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		left, err := filepath.Glob(filepath.Join(parent, fmt.Sprintf("moetrain-bench-%d-*", os.Getpid())))
		if err != nil {
			t.Fatal(err)
		}
		return left
	}
}

// TestBenchRoutingRankCPU: with --rank-cpu the run completes, reports the
// setting, and removes its groups, also when a rank fails.
func TestBenchRoutingRankCPU(t *testing.T) {
	left := rankCPUGroups(t)
	cfg := tinyRoutingConfig(t, "")
	out, err := runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "2", "--warmup", "0", "--routers", "topk,moge",
		"--rank-cpu", "0.5", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep benchRoutingReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out)
	}
	if rep.RankCPU != 0.5 || len(rep.Rows) != 2 || rep.Rows[1].IS != 0 || !(rep.Rows[0].StepMS > 0) {
		t.Errorf("report %+v", rep)
	}
	if l := left(); len(l) > 0 {
		t.Errorf("groups left after the run: %v", l)
	}

	t.Setenv(testCancelRankEnv, "1")
	_, err = runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "2", "--warmup", "0", "--routers", "moge", "--rank-cpu", "0.5")
	if err == nil || !strings.Contains(err.Error(), "rank 1 of 2") {
		t.Errorf("error %v: want rank 1's failure", err)
	}
	if l := left(); len(l) > 0 {
		t.Errorf("groups left after a failed run: %v", l)
	}

	var table bytes.Buffer
	f := &benchRoutingFlags{ep: 2, steps: 2, skew: 0.5, threads: 1, rankCPU: 0.5}
	spec, err := (&benchRoutingFlags{ep: 2, steps: 2, skew: 0.5, threads: 1, biasRate: 0.01, timeout: time.Minute, routers: "topk,moge"}).specs(mustLoadJob(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := printBenchRouting(&table, f, spec[0], rep.Rows, "topk"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "# rank cpu: 0.50 cores per rank (cgroup cpu quota)") {
		t.Errorf("table header does not give the rank cpu:\n%s", table.String())
	}
}
