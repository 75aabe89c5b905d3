//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
)

// metricsJob is tinyJob for steps steps with a loss line (and expert load)
// at every step, so every scraped step can be checked against the logs.
func metricsJob(t *testing.T, steps int) string {
	t.Helper()
	return writeJobText(t, tinyTrain(steps, 10, 2, 1))
}

// getMetrics scrapes http://addr/metrics: samples by series
// ("name{labels}"); an error when the server does not answer.
func getMetrics(addr string) (map[string]float64, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, nil
}

// TestLaunchMetrics scrapes `coordinator launch --metrics-addr` while the
// job runs and checks the scraped step, loss, throughput, expert load and
// checkpoints against the run's logs, summary.json and checkpoint
// directory; the endpoint is gone after the launch exits.
func TestLaunchMetrics(t *testing.T) {
	const steps = 60
	addr := freeAddr(t)
	run, ckpt := filepath.Join(t.TempDir(), "run"), filepath.Join(t.TempDir(), "ckpt")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", metricsJob(t, steps), "--run-dir", run,
		"--no-bar", "--metrics-addr", addr, "--checkpoint-dir", ckpt, "--checkpoint-every", "20")
	var last map[string]float64 // the scrape of the highest step
	scrapes := 0
	deadline := time.After(90 * time.Second)
poll:
	for {
		select {
		case <-p.done:
			break poll
		case <-deadline:
			t.Fatal("launch did not end within 90 s")
		case <-time.After(20 * time.Millisecond):
		}
		m, err := getMetrics(addr)
		if err != nil {
			continue // not serving yet, or already stopped
		}
		if m["moetrain_step"] > 0 && m["moetrain_step"] >= last["moetrain_step"] {
			last, scrapes = m, scrapes+1
		}
	}
	if code := p.wait(time.Second); code != 0 {
		t.Fatalf("launch exited %d", code)
	}
	if !strings.Contains(p.output(), "metrics on http://"+addr+"/metrics") {
		t.Errorf("launch does not say where the metrics are")
	}
	if scrapes == 0 {
		t.Fatal("no scrape during the job showed a completed step")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the launch exited", addr)
	}
	step := int(last["moetrain_step"])
	t.Logf("%d scrapes with a completed step; the last at step %d of %d", scrapes, step, steps)
	sum := readSummary(t, run)
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != steps || step > steps {
		t.Fatalf("summary: %s at step %d; scraped step %d", sum.Phase, sum.Status.Step, step)
	}
	if last["moetrain_total_steps"] != steps {
		t.Errorf("moetrain_total_steps %v, want %d", last["moetrain_total_steps"], steps)
	}
	// The loss at the scraped step is the one both ranks logged for it.
	losses := stepLosses(t, filepath.Join(run, "worker-0.log"))
	if want, ok := losses[float64(step)]; !ok || last["moetrain_loss"] != want {
		t.Errorf("moetrain_loss %v at step %d; worker-0.log: %v (logged %v)", last["moetrain_loss"], step, want, ok)
	}
	// Throughput: the job's is the ranks' sum; each rank's tokens are its
	// steps × its replica's batch (data.batch_size 4 sequences of 32).
	tps0, tps1 := last[`moetrain_worker_tokens_per_second{rank="0"}`], last[`moetrain_worker_tokens_per_second{rank="1"}`]
	if tps0 <= 0 || tps1 <= 0 || last["moetrain_tokens_per_second"] != tps0+tps1 {
		t.Errorf("tokens/s: job %v, ranks %v + %v", last["moetrain_tokens_per_second"], tps0, tps1)
	}
	for r := 0; r < 2; r++ {
		rs := last[fmt.Sprintf(`moetrain_worker_step{rank="%d"}`, r)]
		if tok := last[fmt.Sprintf(`moetrain_worker_tokens_total{rank="%d"}`, r)]; tok != rs*4*32 || rs < float64(step) {
			t.Errorf("rank %d: %v tokens at step %v (job step %d), want 128 a step", r, tok, rs, step)
		}
		if c := last[fmt.Sprintf(`moetrain_worker_step_phase_seconds_total{phase="compute",rank="%d"}`, r)]; c <= 0 {
			t.Errorf("rank %d: compute seconds %v", r, c)
		}
	}
	// The summary's tokens/s (the final status) is the same sum at the end.
	if sum.Status.TokensPerSec <= 0 {
		t.Errorf("summary tokens/s %v", sum.Status.TokensPerSec)
	}
	// Expert load at its step: the workers' logged load (summary.json).
	ls := int(last["moetrain_expert_load_step"])
	var found bool
	for _, pt := range sum.ExpertLoad {
		if pt.Step != ls {
			continue
		}
		found = true
		for l, per := range pt.Layers {
			for e, n := range per {
				k := fmt.Sprintf(`moetrain_expert_load_slots{expert="%d",layer="%d"}`, e, l)
				if got, ok := last[k]; !ok || got != float64(n) {
					t.Errorf("%s = %v (present %v), summary.json: %d", k, got, ok, n)
				}
			}
		}
	}
	if !found {
		t.Errorf("summary.json has no expert load at the scraped step %d", ls)
	}
	// Checkpoints every 20 steps: the published ones up to the scraped
	// last step, their sizes those of the shard files on disk.
	shardBytes := func(step int) float64 {
		files, err := filepath.Glob(filepath.Join(ckpt, fmt.Sprintf("step-%06d", step), "shard-*"))
		if err != nil || len(files) != 2 {
			t.Fatalf("checkpoint step %d: shard files %v, %v", step, files, err)
		}
		var n int64
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
		return float64(n)
	}
	published, cs := last[`moetrain_checkpoints_total{result="published"}`], int(last["moetrain_checkpoint_last_step"])
	if published < 1 || cs != int(published)*20 || last[`moetrain_checkpoints_total{result="failed"}`] != 0 {
		t.Fatalf("checkpoints: %v published, the last at step %d", published, cs)
	}
	var total float64
	for s := 20; s <= cs; s += 20 {
		total += shardBytes(s)
	}
	if last["moetrain_checkpoint_last_size_bytes"] != shardBytes(cs) || last["moetrain_checkpoint_written_bytes_total"] != total {
		t.Errorf("checkpoint bytes: last %v, all %v; the shard files: %v, %v", last["moetrain_checkpoint_last_size_bytes"],
			last["moetrain_checkpoint_written_bytes_total"], shardBytes(cs), total)
	}
}

// prometheusBinary finds Debian's prometheus server, installing it with
// apt-get when missing and running as root; it skips the test otherwise.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	aptInstall(t, "the prometheus server is", "prometheus")
	p, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skipf("apt-get installed prometheus, but it is not on PATH: %v", err)
	}
	return p
}

// promQuery runs an instant PromQL query against the server at addr and
// returns its result's "result" field.
func promQuery(t *testing.T, addr, query string) json.RawMessage {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/api/v1/query?" + url.Values{"query": {query}}.Encode())
	if err != nil {
		t.Fatalf("query %q: %v", query, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("query %q: %s %v %s", query, resp.Status, err, body.Error)
	}
	return body.Data.Result
}

// TestPrometheusScrapesLaunch runs Debian's prometheus server with a
// generated config scraping `coordinator launch --metrics-addr`, then asks
// its HTTP API for the step series: every scraped step is within the job,
// the series rises, and the loss scraped with each step is the one the
// workers logged at that step.
func TestPrometheusScrapesLaunch(t *testing.T) {
	bin := prometheusBinary(t)
	const steps = 150
	metricsAddr, promAddr := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 100ms
  scrape_timeout: 100ms
scrape_configs:
  - job_name: moetrain
    static_configs:
      - targets: ['%s']
`, metricsAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	var promOut strings.Builder
	prom.Stdout, prom.Stderr = &promOut, &promOut
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
		if t.Failed() {
			t.Logf("--- prometheus output:\n%s", promOut.String())
		}
	}()
	ready := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + promAddr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(ready) {
			t.Fatalf("prometheus not ready within 20 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Prometheus applies its scrape targets a few seconds after it starts:
	// wait until it lists ours (down, as nothing serves it yet).
	for {
		var targets struct {
			Data struct {
				Active []struct {
					ScrapeURL string `json:"scrapeUrl"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		resp, err := http.Get("http://" + promAddr + "/api/v1/targets")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		if err == nil && len(targets.Data.Active) == 1 && strings.Contains(targets.Data.Active[0].ScrapeURL, metricsAddr) {
			break
		}
		if time.Now().After(ready) {
			t.Fatalf("prometheus did not list the scrape target within 20 s: %v %+v", err, targets)
		}
		time.Sleep(100 * time.Millisecond)
	}
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", metricsJob(t, steps), "--run-dir", run,
		"--no-bar", "--metrics-addr", metricsAddr)
	if code := p.wait(90 * time.Second); code != 0 {
		t.Fatalf("launch exited %d", code)
	}
	// Raw samples of the last minute: [timestamp, "value"] pairs.
	type series struct {
		Metric map[string]string `json:"metric"`
		Values [][2]any          `json:"values"`
	}
	samples := func(q string) map[float64]float64 {
		var rs []series
		if err := json.Unmarshal(promQuery(t, promAddr, q), &rs); err != nil {
			t.Fatalf("query %q: %v", q, err)
		}
		out := map[float64]float64{}
		for _, s := range rs {
			if s.Metric["job"] != "moetrain" || s.Metric["instance"] != metricsAddr {
				t.Errorf("query %q: series labels %v", q, s.Metric)
			}
			for _, v := range s.Values {
				ts, _ := v[0].(float64)
				str, _ := v[1].(string)
				f, err := strconv.ParseFloat(str, 64)
				if err != nil {
					t.Fatalf("query %q: sample %v: %v", q, v, err)
				}
				out[ts] = f
			}
		}
		return out
	}
	stepAt, lossAt := samples("moetrain_step[1m]"), samples("moetrain_loss[1m]")
	if len(stepAt) == 0 {
		t.Fatalf("prometheus has no moetrain_step samples")
	}
	losses := stepLosses(t, filepath.Join(run, "worker-0.log"))
	var prev float64
	var ts []float64
	for k := range stepAt {
		ts = append(ts, k)
	}
	sort.Float64s(ts)
	checked := 0
	for _, k := range ts {
		s := stepAt[k]
		if s < prev || s > steps {
			t.Errorf("moetrain_step %v at %v after %v (job of %d steps)", s, k, prev, steps)
		}
		prev = s
		if l, ok := lossAt[k]; ok && s > 0 {
			checked++
			if want := losses[s]; l != want {
				t.Errorf("moetrain_loss %v scraped with step %v; worker-0.log: %v", l, s, want)
			}
		}
	}
	t.Logf("prometheus stored %d moetrain_step samples, up to step %v; %d losses checked against the log", len(stepAt), prev, checked)
	if checked == 0 {
		t.Error("no scrape with a completed step and its loss")
	}
	if v := samples("moetrain_total_steps[1m]"); len(v) == 0 {
		t.Error("no moetrain_total_steps samples")
	} else {
		for _, x := range v {
			if x != steps {
				t.Errorf("moetrain_total_steps %v, want %d", x, steps)
			}
		}
	}
}

// TestMetricsAddrBusy: a --metrics-addr that is taken fails launch and
// serve at once, naming the flag, before any worker is started or awaited.
func TestMetricsAddrBusy(t *testing.T) {
	checkBusyAddrFails(t, "--metrics-addr", "--metrics-addr", "address already in use")
}
