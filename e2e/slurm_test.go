//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
)

// slurmTools finds Debian's slurm-wlm and munge, installing them with
// apt-get when missing and running as root; it skips the test otherwise.
func slurmTools(t *testing.T) map[string]string {
	t.Helper()
	names := []string{"slurmctld", "slurmd", "sbatch", "munged", "mungekey"}
	find := func() (map[string]string, []string) {
		found, missing := map[string]string{}, []string(nil)
		for _, n := range names {
			p, err := exec.LookPath(n)
			if err != nil {
				for _, dir := range []string{"/usr/sbin", "/sbin"} { // root's PATH may lack them
					if _, serr := os.Stat(filepath.Join(dir, n)); serr == nil {
						p, err = filepath.Join(dir, n), nil
						break
					}
				}
			}
			if err != nil {
				missing = append(missing, n)
			}
			found[n] = p
		}
		return found, missing
	}
	if found, missing := find(); len(missing) == 0 {
		return found
	} else {
		aptInstall(t, fmt.Sprint(missing, " are"), "slurm-wlm", "munge")
	}
	found, missing := find()
	if len(missing) > 0 {
		t.Skipf("apt-get installed slurm-wlm and munge, but %v are not found", missing)
	}
	return found
}

// daemon starts a background process whose output goes to log; it is
// killed (with its process group) and reaped when the test ends.
func daemon(t *testing.T, log string, env []string, bin string, args ...string) {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("--- %s:\n%s", filepath.Base(log), b)
		}
	})
}

// freePort is a currently free loopback TCP port.
func freePort(t *testing.T) int {
	t.Helper()
	_, p, err := net.SplitHostPort(freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestSlurmBatchJob runs a one-node Slurm cluster (munged, slurmctld and
// slurmd with a generated slurm.conf) and submits scripts/slurm's sbatch
// script with 2 tasks and a tiny job: it trains to the end over mutual
// TLS, the logs and summary land in the run directory Slurm's environment
// names, and the losses are bitwise those of `coordinator launch
// --workers 2` (deterministic data parallelism, docs/mesh.md).
func TestSlurmBatchJob(t *testing.T) {
	tools := slurmTools(t)
	if runtime.NumCPU() < 2 {
		t.Skip("a 2-task Slurm job needs 2 CPUs")
	}
	dir, err := os.MkdirTemp("", "moetrain-slurm-") // short: Slurm's and munge's socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The node is named as this host resolves, the way Slurm gives
	// names to the job; an unresolvable host name falls back to localhost.
	node, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	node, _, _ = strings.Cut(node, ".")
	if _, err := net.LookupHost(node); err != nil {
		node = "localhost"
	}
	key, sock := filepath.Join(dir, "munge.key"), filepath.Join(dir, "munge.sock")
	if out, err := exec.Command(tools["mungekey"], "--create", "--keyfile", key).CombinedOutput(); err != nil {
		t.Fatalf("mungekey: %v\n%s", err, out)
	}
	daemon(t, filepath.Join(dir, "munged.out"), nil, tools["munged"], "--foreground", "--force", "--key-file", key,
		"--socket", sock, "--pid-file", filepath.Join(dir, "munged.pid"), "--log-file", filepath.Join(dir, "munged.log"),
		"--seed-file", filepath.Join(dir, "munged.seed"))
	conf := filepath.Join(dir, "slurm.conf")
	cfg := fmt.Sprintf(`ClusterName=moetrain-e2e
SlurmctldHost=%[1]s(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=%[2]d
SlurmdPort=%[3]d
AuthType=auth/munge
AuthInfo=socket=%[4]s
CredType=cred/munge
StateSaveLocation=%[5]s/state
SlurmdSpoolDir=%[5]s/spool
SlurmctldPidFile=%[5]s/slurmctld.pid
SlurmdPidFile=%[5]s/slurmd.pid
SlurmctldLogFile=%[5]s/slurmctld.log
SlurmdLogFile=%[5]s/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=%[1]s NodeAddr=127.0.0.1 CPUs=%[6]d State=UNKNOWN
PartitionName=e2e Nodes=%[1]s Default=YES MaxTime=10 State=UP
`, node, freePort(t), freePort(t), sock, dir, runtime.NumCPU())
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"SLURM_CONF=" + conf}
	daemon(t, filepath.Join(dir, "slurmctld.out"), env, tools["slurmctld"], "-D", "-i", "-f", conf)
	daemon(t, filepath.Join(dir, "slurmd.out"), env, tools["slurmd"], "-D", "-f", conf, "-N", node)
	for _, log := range []string{"slurmctld.log", "slurmd.log"} {
		log := filepath.Join(dir, log)
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(log)
				t.Logf("--- %s:\n%s", filepath.Base(log), b)
			}
		})
	}

	// sbatch --wait returns when the job has ended, with its exit status;
	// slurmd may still be registering when it is submitted (the job then
	// pends until the node is up).
	submit := filepath.Join(dir, "submit")
	if err := os.MkdirAll(submit, 0o755); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("../scripts/slurm/moetrain.sbatch")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sb := exec.CommandContext(ctx, tools["sbatch"], "--wait", "--parsable", "--ntasks=2", "--nodes=1",
		"--chdir="+submit, "--output="+filepath.Join(submit, "slurm-%j.out"), script, writeJob(t))
	sb.Dir = submit // SLURM_SUBMIT_DIR
	sb.Env = append(os.Environ(), "SLURM_CONF="+conf, "MOETRAIN_BIN="+binDir)
	out, err := sb.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the Slurm job did not end within 90 s:\n%s", out)
	}
	jobID := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	jobID, _, _ = strings.Cut(jobID, ";")
	run := filepath.Join(submit, "runs", "slurm-"+jobID)
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{filepath.Join(submit, "slurm-"+jobID+".out"), filepath.Join(run, "coordinator.out"),
				filepath.Join(run, "worker-0.out"), filepath.Join(run, "worker-1.out")} {
				b, _ := os.ReadFile(f)
				t.Logf("--- %s:\n%s", f, b)
			}
		}
	})
	if err != nil {
		t.Fatalf("sbatch --wait: %v\n%s", err, out)
	}

	b, err := os.ReadFile(filepath.Join(run, "summary.json"))
	if err != nil {
		t.Fatalf("no summary in the run directory Slurm's environment names: %v", err)
	}
	var sum cluster.Summary
	if err := json.Unmarshal(b, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Phase != cluster.PhaseSucceeded || sum.Status.Step != 20 || sum.Workers != 2 || sum.Plan == nil || sum.Plan.Mesh.DP != 2 {
		t.Fatalf("summary %s", b)
	}
	for _, f := range []string{"job.toml", "token", "coordinator.log", "coordinator.out", "worker-0.log", "worker-1.log",
		"worker-0.out", "worker-1.out", "tls/ca.pem", "tls/worker-1.pem"} {
		if _, err := os.Stat(filepath.Join(run, f)); err != nil {
			t.Errorf("run directory: %v", err)
		}
	}
	// Every process found its TLS files, so none warned of cleartext, and
	// each worker reported its node as Slurm names it.
	for _, f := range []string{"coordinator.out", "worker-0.out", "worker-1.out"} {
		b, _ := os.ReadFile(filepath.Join(run, f))
		first, _, _ := strings.Cut(string(b), "\n")
		t.Logf("%s: %s", f, first)
		if strings.Contains(string(b), "cleartext") || !strings.Contains(string(b), "TLS true") {
			t.Errorf("%s: not mutual TLS:\n%s", f, b)
		}
		if strings.HasPrefix(f, "worker") && !strings.Contains(string(b), " on "+node+":") {
			t.Errorf("%s: the worker does not name its node %s:\n%s", f, node, b)
		}
	}
	want := launchTiny(t)
	for i := range 2 {
		log := "worker-" + strconv.Itoa(i) + ".log"
		got, ref := stepLosses(t, filepath.Join(run, log)), stepLosses(t, filepath.Join(want, log))
		if len(got) == 0 || len(got) != len(ref) {
			t.Fatalf("%s: %d step losses, launch logged %d", log, len(got), len(ref))
		}
		for step, l := range ref {
			if got[step] != l {
				t.Errorf("%s step %v: loss %v under Slurm, %v under launch", log, step, got[step], l)
			}
		}
	}
}
