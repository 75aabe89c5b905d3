package cluster

// The job-state file (docs/control-plane.md#the-job-state-file): what a
// coordinator needs to take a job back after it was killed. It lives in the
// run directory as jobstate.json, rewritten atomically (temp file, fsync,
// rename, fsync of the directory) whenever the phase, the generation, the
// plan or the last committed checkpoint changes. The checkpoint directory
// stays the truth about checkpoints: a takeover resumes from its newest
// intact step, which the file's last_checkpoint can only trail.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/moetrain/moetrain/internal/atomicfile"
)

// JobStateFile is the job-state file's name in the run directory.
const JobStateFile = "jobstate.json"

// jobStateVersion is the file's format version.
const jobStateVersion = 1

// maxJobStateBytes bounds what ReadJobState reads: the file holds a plan
// (a few hundred bytes a rank) and one record per recovery.
const maxJobStateBytes = 16 << 20

// JobState is the coordinator's durable job state.
type JobState struct {
	Version int    `json:"version"`
	JobID   string `json:"job_id"`
	// TokenHash identifies the job token (a SHA-256 of its control-plane
	// credential) so that a takeover with another token is refused.
	TokenHash       string           `json:"token_hash"`
	Phase           Phase            `json:"phase"`
	Reason          string           `json:"reason,omitempty"`
	ExpectedWorkers int              `json:"expected_workers"`
	TotalSteps      int              `json:"total_steps"`
	Generation      int              `json:"generation"`
	Restarts        int              `json:"restarts"`
	LastCheckpoint  int              `json:"last_checkpoint"` // -1: none
	StartStep       int              `json:"start_step"`      // the first generation's --resume step; 0 fresh
	Step            int              `json:"step"`            // the slowest rank's completed steps when written
	Plan            *Plan            `json:"plan,omitempty"`
	Recoveries      []RecoveryRecord `json:"recoveries,omitempty"`
	Updated         time.Time        `json:"updated"`
}

// tokenHash is JobState.TokenHash of token.
func tokenHash(token string) string {
	h := sha256.Sum256([]byte("moetrain job state\x00" + ControlCredential(token)))
	return hex.EncodeToString(h[:])
}

// ReadJobState reads dir's job-state file; (nil, nil) when there is none.
func ReadJobState(dir string) (*JobState, error) {
	path := filepath.Join(dir, JobStateFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("job state: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("job state %s: %w", path, err)
	}
	if st.Size() > maxJobStateBytes {
		return nil, fmt.Errorf("job state %s: %d bytes, more than the %d a job state can hold", path, st.Size(), maxJobStateBytes)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("job state %s: %w", path, err)
	}
	return parseJobState(path, b)
}

// parseJobState decodes and checks a job-state file's bytes; errors name
// path and the field.
func parseJobState(path string, b []byte) (*JobState, error) {
	var s JobState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("job state %s: %w", path, err)
	}
	switch {
	case s.Version != jobStateVersion:
		return nil, fmt.Errorf("job state %s: version %d, this coordinator reads version %d", path, s.Version, jobStateVersion)
	case s.TokenHash == "":
		return nil, fmt.Errorf("job state %s: no token_hash", path)
	case s.ExpectedWorkers < 1:
		return nil, fmt.Errorf("job state %s: expected_workers %d: must be >= 1", path, s.ExpectedWorkers)
	case s.Generation < 0 || s.Restarts < 0 || s.Step < 0 || s.StartStep < 0:
		return nil, fmt.Errorf("job state %s: generation %d, restarts %d, step %d, start_step %d: must be >= 0",
			path, s.Generation, s.Restarts, s.Step, s.StartStep)
	case s.LastCheckpoint < -1:
		return nil, fmt.Errorf("job state %s: last_checkpoint %d: must be >= -1", path, s.LastCheckpoint)
	}
	switch s.Phase {
	case PhaseWaiting, PhaseRunning, PhaseRecovering, PhaseAborting, PhaseStopping, PhaseSucceeded, PhaseFailed, PhaseStopped:
	default:
		return nil, fmt.Errorf("job state %s: unknown phase %q", path, s.Phase)
	}
	if s.Plan != nil {
		if err := s.Plan.Validate(); err != nil {
			return nil, fmt.Errorf("job state %s: plan: %w", path, err)
		}
	}
	return &s, nil
}

// WriteJobState writes s to dir's job-state file atomically and durably.
func WriteJobState(dir string, s *JobState) error {
	s.Version = jobStateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("job state: %w", err)
	}
	return atomicfile.Write(filepath.Join(dir, JobStateFile), append(b, '\n'), 0o600)
}

// CheckTakeover refuses to take over a job that has ended or belongs to
// another token or worker count.
func (s *JobState) CheckTakeover(dir, token string, workers int) error {
	if s.Phase.Final() {
		return fmt.Errorf("run directory %s holds job %s, which has ended (%s): choose another --run-dir for a new job", dir, s.JobID, s.Phase)
	}
	if s.TokenHash != tokenHash(token) {
		return fmt.Errorf("run directory %s holds job %s, started with another job token: pass that job's --token to take it over, or choose another --run-dir", dir, s.JobID)
	}
	if s.ExpectedWorkers != workers {
		return fmt.Errorf("run directory %s holds job %s of %d workers, not %d", dir, s.JobID, s.ExpectedWorkers, workers)
	}
	return nil
}
