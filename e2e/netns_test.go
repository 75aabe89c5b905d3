//go:build linux

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
)

// canMakeNetns reports why network namespaces cannot be made here ("" if
// they can): it needs root and ip, and tries one namespace.
func canMakeNetns() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "iproute2 (ip) not installed"
	}
	name := "moetrain-probe-" + itoaPid()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "ip netns add failed: " + string(out)
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
	return ""
}

func itoaPid() string { return strconv.Itoa(os.Getpid()) }

// TestNetnsCluster: a coordinator and 2 workers on 3 different
// network-namespace hosts (scripts/netns-cluster.sh) run a job to its end.
func TestNetnsCluster(t *testing.T) {
	if why := canMakeNetns(); why != "" {
		t.Skipf("network namespaces cannot be made here (%s); this test needs root and iproute2", why)
	}
	run := filepath.Join(t.TempDir(), "run")
	out, err := runScript(t, 90*time.Second, "../scripts/netns-cluster.sh", "--workers", "2", "--config", writeJob(t), "--steps", "20",
		"--coordinator", filepath.Join(binDir, "coordinator"), "--worker", filepath.Join(binDir, "worker"), "--run-dir", run)
	if err != nil {
		t.Fatalf("netns-cluster.sh: %v\n%s", err, out)
	}
	sum, b := readSummaryJSON(t, run)
	if sum.Phase != cluster.PhaseSucceeded || sum.Plan == nil || len(sum.Plan.Ranks) != 2 {
		t.Fatalf("summary: %s", b)
	}
	hosts := map[string]bool{}
	for _, r := range sum.Plan.Ranks {
		hosts[r.Worker.Host] = true
		if strings.HasPrefix(r.Worker.DataAddr, "127.") {
			t.Errorf("rank %d data address %s is loopback, not its namespace's address", r.Rank, r.Worker.DataAddr)
		}
	}
	if len(hosts) != 2 {
		t.Errorf("workers did not run on 2 distinct hosts: %v", hosts)
	}
}

// A worker host cut off the network (link down, the process keeps running)
// is named by the coordinator within 10 s of the cut, and the job fails on
// every process without a hang.
func TestNetnsWorkerCutOff(t *testing.T) {
	if why := canMakeNetns(); why != "" {
		t.Skipf("network namespaces cannot be made here (%s); this test needs root and iproute2", why)
	}
	run := filepath.Join(t.TempDir(), "run")
	out, err := runScript(t, 90*time.Second, "../scripts/netns-cluster.sh", "--workers", "2", "--config", writeJob(t), "--steps", "1000000",
		"--coordinator", filepath.Join(binDir, "coordinator"), "--worker", filepath.Join(binDir, "worker"), "--run-dir", run,
		"--cut", "2", "--cut-after", "2")
	if err == nil {
		t.Fatalf("job succeeded although a worker was cut off:\n%s", out)
	}
	m := regexp.MustCompile(`cutting host (\S+) off the network at (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no cut reported:\n%s", out)
	}
	host := string(m[1])
	cutAt, perr := time.Parse(time.RFC3339Nano, string(m[2]))
	if perr != nil {
		t.Fatal(perr)
	}
	// The coordinator's first abort must name the cut host, within 10 s.
	b, rerr := os.ReadFile(filepath.Join(run, "coordinator.log"))
	if rerr != nil {
		t.Fatal(rerr)
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		var e struct {
			Message, Reason string
			Time            time.Time
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Message != "aborting worker" {
			continue
		}
		if !strings.Contains(e.Reason, "host "+host) || !strings.Contains(e.Reason, "died") {
			t.Fatalf("first abort does not name the cut host %s as dead: %q", host, e.Reason)
		}
		if d := e.Time.Sub(cutAt); d > 10*time.Second {
			t.Fatalf("cut-off worker named %v after the cut, want ≤ 10 s", d)
		}
		found = true
		break
	}
	if !found {
		t.Fatalf("coordinator never aborted the job:\n%s", out)
	}
	if strings.Contains(string(out), "still running 20 s after the coordinator") {
		t.Errorf("a worker did not exit by itself:\n%s", out)
	}
}
