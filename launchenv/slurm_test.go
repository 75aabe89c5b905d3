package launchenv

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/cluster/pki"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnvOutsideSlurm(t *testing.T) {
	if _, ok, err := FromEnv(envOf(nil)); ok || err != nil {
		t.Fatalf("no SLURM_JOB_ID: ok %v, err %v", ok, err)
	}
}

func TestFromEnvTask(t *testing.T) {
	s, ok, err := FromEnv(envOf(map[string]string{
		"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-08],login", "SLURM_NTASKS": "3",
		"SLURM_PROCID": "2", "SLURMD_NODENAME": "gpu08", "SLURM_CPUS_PER_TASK": "8", "SLURM_SUBMIT_DIR": "/nfs/u",
	}))
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if !reflect.DeepEqual(s.Nodes, []string{"gpu07", "gpu08", "login"}) || s.NTasks != 3 || s.ProcID != 2 || s.CPUsPerTask != 8 || s.NodeName != "gpu08" {
		t.Fatalf("%+v", s)
	}
	if s.Port != PortBase+3456 || s.JoinAddr() != "gpu07:23456" || s.ListenAddr() != "0.0.0.0:23456" {
		t.Fatalf("port %d, join %s, listen %s", s.Port, s.JoinAddr(), s.ListenAddr())
	}
	if s.RunDir() != "/nfs/u/runs/slurm-123456" || s.WorkerLog() != "/nfs/u/runs/slurm-123456/worker-2.log" {
		t.Fatalf("run dir %s, log %s", s.RunDir(), s.WorkerLog())
	}
}

// MOETRAIN_PORT and MOETRAIN_RUN_DIR override the derived values; a
// batch script (no SLURM_PROCID) is not a task.
func TestFromEnvOverrides(t *testing.T) {
	s, _, err := FromEnv(envOf(map[string]string{"SLURM_JOB_ID": "7", "SLURM_NODELIST": "n1",
		PortEnv: "7070", RunDirEnv: "/r"}))
	if err != nil {
		t.Fatal(err)
	}
	if s.JoinAddr() != "n1:7070" || s.RunDir() != "/r" || s.ProcID != -1 || s.NTasks != 0 {
		t.Fatalf("%+v", s)
	}
	if _, err := s.WorkerTLS(); err == nil || !strings.Contains(err.Error(), "SLURM_PROCID") {
		t.Fatalf("worker TLS outside a task: %v", err)
	}
}

func TestFromEnvRefuses(t *testing.T) {
	base := map[string]string{"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1"}
	for name, bad := range map[string]string{
		"SLURM_JOB_ID": "x1", "SLURM_JOB_NODELIST": "n[1-", "SLURM_NTASKS": "-2", "SLURM_PROCID": "one",
		"SLURM_CPUS_PER_TASK": "1e3", PortEnv: "70000",
	} {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		env[name] = bad
		if _, ok, err := FromEnv(envOf(env)); !ok || err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: ok %v, err %v (want an error naming it)", name, bad, ok, err)
		}
	}
	if _, _, err := FromEnv(envOf(map[string]string{"SLURM_JOB_ID": "1"})); err == nil {
		t.Error("a job without a node list was accepted")
	}
}

// TLS files are used when the run directory holds the job's CA; a CA
// without this party's certificate is an error.
func TestTLSFiles(t *testing.T) {
	dir := t.TempDir()
	s := Slurm{JobID: "5", Nodes: []string{"n1"}, ProcID: 1, RunDirSet: dir}
	if f, err := s.WorkerTLS(); err != nil || f.Enabled() {
		t.Fatalf("no CA: %+v %v", f, err)
	}
	if _, err := pki.WriteJob(s.TLSDir(), "5", []string{"n1"}, 2); err != nil {
		t.Fatal(err)
	}
	w, err := s.WorkerTLS()
	if err != nil || w.Cert != filepath.Join(dir, "tls", "worker-1.pem") || w.Check() != nil {
		t.Fatalf("worker: %+v %v", w, err)
	}
	if _, err := w.ClientConfig(); err != nil {
		t.Fatal(err)
	}
	c, err := s.CoordinatorTLS()
	if err != nil || c.Key != filepath.Join(dir, "tls", "coordinator-key.pem") {
		t.Fatalf("coordinator: %+v %v", c, err)
	}
	s.ProcID = 2 // only worker-0 and worker-1 were issued
	if _, err := s.WorkerTLS(); err == nil {
		t.Fatal("a missing worker certificate beside the CA was accepted")
	}
	if err := os.Remove(filepath.Join(dir, "tls", "coordinator.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CoordinatorTLS(); err == nil {
		t.Fatal("a missing coordinator certificate beside the CA was accepted")
	}
}
