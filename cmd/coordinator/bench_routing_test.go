package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/rankbench"
)

// TestBenchRouting runs the command on 2 rank processes, a tiny model and 3
// timed steps: every router has a row; with the router skewed to rank 0,
// MoGE's IS is 0 and dropless top-k's is larger; the table prints every row.
func TestBenchRouting(t *testing.T) {
	cfg := tinyRoutingConfig(t, "")
	out, err := runRoutingCmd(t, "--config", cfg, "--ep", "2", "--steps", "3", "--warmup", "1", "--skew", "0.2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep rankbench.RoutingReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out)
	}
	if len(rep.Rows) != len(rankbench.DefaultRoutingCases) || rep.Anchor != "topk" || rep.K != 2 || rep.EP != 2 {
		t.Fatalf("report: %+v", rep)
	}
	rows := map[string]rankbench.RoutingRow{}
	for i, r := range rep.Rows {
		if r.Case.Name != rankbench.DefaultRoutingCases[i] {
			t.Errorf("row %d is %q, want %q", i, r.Case.Name, rankbench.DefaultRoutingCases[i])
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
	f := &rankbench.Routing{EP: 2, Steps: 3, Warmup: 1, Skew: 0.2, Threads: 1, BiasRate: 0.01, Timeout: time.Minute,
		Routers: strings.Join(rankbench.DefaultRoutingCases, ",")}
	spec, err := f.Specs(mustLoadJob(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := rankbench.PrintRouting(&table, f, spec[0], rep.Rows, rep.Anchor); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	var body []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "router") {
			body = append(body, l)
		}
	}
	if len(body) != len(rankbench.DefaultRoutingCases) {
		t.Fatalf("table has %d rows, want %d:\n%s", len(body), len(rankbench.DefaultRoutingCases), table.String())
	}
	for i, name := range rankbench.DefaultRoutingCases {
		if fields := strings.Fields(body[i]); fields[0] != name {
			t.Errorf("table row %d is %q, want router %q", i, body[i], name)
		}
	}
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
	var rep rankbench.RoutingReport
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
	f := &rankbench.Routing{EP: 2, Steps: 2, Skew: 0.5, Threads: 1, RankCPU: 0.5}
	spec, err := (&rankbench.Routing{EP: 2, Steps: 2, Skew: 0.5, Threads: 1, BiasRate: 0.01, Timeout: time.Minute, Routers: "topk,moge"}).Specs(mustLoadJob(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := rankbench.PrintRouting(&table, f, spec[0], rep.Rows, "topk"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "# rank cpu: 0.50 cores per rank (cgroup cpu quota)") {
		t.Errorf("table header does not give the rank cpu:\n%s", table.String())
	}
}
