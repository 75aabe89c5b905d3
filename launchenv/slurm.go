package launchenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/moetrain/moetrain/cluster/pki"
)

// Environment variables of moetrain itself that override a derived value
// for every process of a job at once (the sbatch script may export them).
const (
	RunDirEnv = "MOETRAIN_RUN_DIR" // the run directory (default SUBMIT_DIR/runs/slurm-JOBID)
	PortEnv   = "MOETRAIN_PORT"    // the coordinator's control-plane port (default PortBase + JOBID mod PortSpan)
)

// The derived control-plane port is PortBase + job id mod PortSpan: below
// Linux's default ephemeral range (32768-60999) and Slurm's own ports, and
// different for consecutive jobs sharing a node.
const (
	PortBase = 20000
	PortSpan = 10000
)

// Slurm is a job's and a task's view of Slurm's environment.
type Slurm struct {
	JobID       string
	Nodes       []string // SLURM_JOB_NODELIST, expanded; Nodes[0] runs the batch script
	NTasks      int      // SLURM_NTASKS; 0 when not set
	ProcID      int      // SLURM_PROCID, the task's rank in its step; -1 when not set
	NodeName    string   // SLURMD_NODENAME, the node as Slurm names it
	CPUsPerTask int      // SLURM_CPUS_PER_TASK; 0 when not set
	SubmitDir   string   // SLURM_SUBMIT_DIR
	RunDirSet   string   // $MOETRAIN_RUN_DIR
	Port        int      // $MOETRAIN_PORT, else derived from JobID
}

// FromEnv reads Slurm's variables through getenv (os.Getenv). ok is false
// outside a Slurm job (SLURM_JOB_ID unset); a variable that is set but
// malformed is an error naming it.
func FromEnv(getenv func(string) string) (s Slurm, ok bool, err error) {
	s.JobID = getenv("SLURM_JOB_ID")
	if s.JobID == "" {
		return Slurm{}, false, nil
	}
	jobNum, err := strconv.ParseUint(s.JobID, 10, 32)
	if err != nil {
		return Slurm{}, true, fmt.Errorf("SLURM_JOB_ID=%q: not a job number", s.JobID)
	}
	list := getenv("SLURM_JOB_NODELIST")
	if list == "" {
		list = getenv("SLURM_NODELIST")
	}
	if list == "" {
		return Slurm{}, true, errors.New("SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not")
	}
	if s.Nodes, err = ExpandHostlist(list); err != nil {
		return Slurm{}, true, fmt.Errorf("SLURM_JOB_NODELIST: %w", err)
	}
	ints := []struct {
		name  string
		dst   *int
		unset int
	}{{"SLURM_NTASKS", &s.NTasks, 0}, {"SLURM_PROCID", &s.ProcID, -1}, {"SLURM_CPUS_PER_TASK", &s.CPUsPerTask, 0}, {PortEnv, &s.Port, 0}}
	for _, v := range ints {
		*v.dst = v.unset
		if str := getenv(v.name); str != "" {
			n, err := strconv.Atoi(str)
			if err != nil || n < 0 || n > 1<<24 {
				return Slurm{}, true, fmt.Errorf("%s=%q: not a count", v.name, str)
			}
			*v.dst = n
		}
	}
	if s.Port == 0 {
		s.Port = PortBase + int(jobNum%PortSpan)
	} else if s.Port > 65535 {
		return Slurm{}, true, fmt.Errorf("%s=%d: not a TCP port", PortEnv, s.Port)
	}
	s.NodeName = getenv("SLURMD_NODENAME")
	s.SubmitDir = getenv("SLURM_SUBMIT_DIR")
	s.RunDirSet = getenv(RunDirEnv)
	return s, true, nil
}

// Coordinator is the host the coordinator runs on: the job's first node,
// named as Slurm names it (and resolved by the system's resolver).
func (s Slurm) Coordinator() string { return s.Nodes[0] }

// ListenAddr is the coordinator's control-plane address: every interface,
// the job's port.
func (s Slurm) ListenAddr() string { return net.JoinHostPort("0.0.0.0", strconv.Itoa(s.Port)) }

// JoinAddr is where the workers find the coordinator.
func (s Slurm) JoinAddr() string { return net.JoinHostPort(s.Coordinator(), strconv.Itoa(s.Port)) }

// RunDir is the job's run directory: $MOETRAIN_RUN_DIR, else
// runs/slurm-JOBID under the submit directory (the working directory when
// Slurm did not say), which must be on a file system every node shares.
func (s Slurm) RunDir() string {
	if s.RunDirSet != "" {
		return s.RunDirSet
	}
	return filepath.Join(s.SubmitDir, "runs", "slurm-"+s.JobID)
}

// TLSDir is where `coordinator certs` writes the job's CA and certificates.
func (s Slurm) TLSDir() string { return filepath.Join(s.RunDir(), "tls") }

// WorkerLog is task procID's JSON log file in the run directory.
func (s Slurm) WorkerLog() string {
	return filepath.Join(s.RunDir(), fmt.Sprintf("worker-%d.log", s.ProcID))
}

// CoordinatorTLS is the coordinator's TLS file set in TLSDir, or none
// (cleartext) when the directory holds no ca.pem.
func (s Slurm) CoordinatorTLS() (pki.Files, error) { return tlsFiles(s.TLSDir(), "coordinator") }

// WorkerTLS is task ProcID's TLS file set in TLSDir, or none when the
// directory holds no ca.pem.
func (s Slurm) WorkerTLS() (pki.Files, error) {
	if s.ProcID < 0 {
		return pki.Files{}, errors.New("SLURM_PROCID is not set: not a task of a job step (start workers with srun)")
	}
	return tlsFiles(s.TLSDir(), fmt.Sprintf("worker-%d", s.ProcID))
}

// tlsFiles names dir's files of one party when dir holds a CA; a CA without
// the party's certificate is an error, not a silent fall back to cleartext.
func tlsFiles(dir, name string) (pki.Files, error) {
	f := pki.Files{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem"), CA: filepath.Join(dir, "ca.pem")}
	if _, err := os.Stat(f.CA); errors.Is(err, os.ErrNotExist) {
		return pki.Files{}, nil
	} else if err != nil {
		return pki.Files{}, fmt.Errorf("job TLS: %w", err)
	}
	for _, p := range []string{f.Cert, f.Key} {
		if _, err := os.Stat(p); err != nil {
			return pki.Files{}, fmt.Errorf("job TLS: %s holds ca.pem but: %w", dir, err)
		}
	}
	return f, nil
}
