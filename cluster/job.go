package cluster

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/moetrain/moetrain/internal/atomicfile"
	"github.com/moetrain/moetrain/train"
)

// PlanRequestFor extracts the layout constraints of a job.
func PlanRequestFor(cfg train.JobConfig) PlanRequest {
	return PlanRequest{Mesh: cfg.Mesh, Experts: cfg.Model.Experts, Heads: cfg.Model.Heads, SeqLen: cfg.Data.SeqLen}
}

// WorkersFor is the worker count a job's mesh implies when dp is fixed
// (dp·sp·tp), or 0 when dp is auto and the count must be given.
func WorkersFor(cfg train.JobConfig) int {
	if cfg.Mesh.DP <= 0 {
		return 0
	}
	return cfg.Mesh.DP * cfg.Mesh.SP * cfg.Mesh.TP
}

// RandomToken returns a fresh 128-bit job token.
func RandomToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("job token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// DefaultRunDir is runs/<UTC timestamp> under the current directory.
func DefaultRunDir(now time.Time) string {
	return filepath.Join("runs", now.UTC().Format("20060102-150405"))
}

// Summary is what a run leaves in summary.json.
type Summary struct {
	Result
	Config      train.JobConfig `json:"config"`
	Workers     int             `json:"workers"`
	WorkerExits []WorkerExit    `json:"worker_exits,omitempty"`
	DurationS   float64         `json:"duration_s"`
	FinalLoss   float64         `json:"final_loss"`
	FinalVal    *float64        `json:"final_val_loss,omitempty"`
	// ExpertLoad is the per-layer, per-expert load of the logged steps,
	// gathered from the worker logs at the end of a launch.
	ExpertLoad []ExpertLoadPoint `json:"expert_load,omitempty"`
	// SPSA is each rank's bytes sent in a train.mode = "spsa" job, from
	// the worker logs (docs/algorithms/spsa.md).
	SPSA []SPSABytes `json:"spsa,omitempty"`
}

// WorkerExit records how a launched worker process ended.
type WorkerExit struct {
	Index    int    `json:"index"`
	Pid      int    `json:"pid"`
	ExitCode int    `json:"exit_code"` // -1 = killed by a signal
	Signal   string `json:"signal,omitempty"`
	Log      string `json:"log"`
}

// WriteSummary writes dir/summary.json atomically (atomicfile.Write).
func WriteSummary(dir string, s Summary) error {
	s.DurationS = s.Ended.Sub(s.Started).Seconds()
	s.FinalLoss = s.Status.Loss
	if s.Status.HasVal {
		v := s.Status.ValLoss
		s.FinalVal = &v
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	return nil
}

// JobJSON encodes the job config for the start command.
func JobJSON(cfg train.JobConfig) ([]byte, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode job config: %w", err)
	}
	return b, nil
}

// TokenOrEnv returns token, or $MOETRAIN_TOKEN when token is empty. Flags
// default to "" (not the variable) so --help never prints a token.
func TokenOrEnv(token string) string {
	if token != "" {
		return token
	}
	return os.Getenv(TokenEnv)
}

// CheckRunnable refuses, before anything starts, a job that the runners
// cannot run. Every mesh the planner can lay out runs (RunMesh); what is left to refuse is what a mesh
// needs of the data, which the job config's validation already checks.
func CheckRunnable(cfg train.JobConfig) error { return cfg.Validate() }

// CheckLayout refuses a job whose mesh cannot be laid over n workers (see
// MakePlan), naming the conflict and a layout that works, and a cuda job over
// more than one worker (its config alone cannot tell when mesh.dp is auto)
// unless it is an SPSA job (train.validateDevice says why).
func CheckLayout(cfg train.JobConfig, n int) error {
	if cfg.Train.Device == train.DeviceCUDA && cfg.Train.Mode != train.ModeSPSA && n > 1 {
		return fmt.Errorf("%w: %d workers, want 1", train.ErrCUDAOneRank, n)
	}
	probe := make([]WorkerInfo, n)
	for i := range probe {
		probe[i] = WorkerInfo{ID: fmt.Sprintf("w%d", i), Host: "local"}
	}
	_, err := MakePlan(PlanRequestFor(cfg), probe)
	return err
}

// SPSABytes is one SPSA rank's traffic and memory, from the "done" record
// of its log.
type SPSABytes struct {
	Rank int `json:"rank"`
	// Steps are the steps this process ran (replayed ones excluded), and
	// WireBytes what it sent for them, collective framing included
	// (setup and the final checksum comparison excluded).
	Steps        int64   `json:"steps"`
	WireBytes    int64   `json:"wire_bytes"`
	PayloadBytes int64   `json:"payload_bytes"`
	BytesPerStep float64 `json:"wire_bytes_per_step"`
	ParamsCRC32C string  `json:"params_crc32c"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
}

// SPSABytesFromLogs reads the last "done" record of an SPSA runner in each
// worker log (a launch's worker-<i>.log), ordered by rank; logs without one
// are skipped, and so are lines that are not JSON (a torn last line).
func SPSABytesFromLogs(logs []string) ([]SPSABytes, error) {
	var out []SPSABytes
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			return out, fmt.Errorf("spsa bytes: %w", err)
		}
		var got *SPSABytes
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
		for sc.Scan() {
			var rec struct {
				Message  string  `json:"message"`
				Rank     int     `json:"rank"`
				StepsRun *int64  `json:"steps_run"`
				Wire     int64   `json:"wire_bytes"`
				Payload  int64   `json:"payload_bytes"`
				PerStep  float64 `json:"wire_bytes_per_step"`
				CRC      string  `json:"params_crc32c"`
				PeakRSS  int64   `json:"peak_rss_bytes"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Message != "done" || rec.StepsRun == nil {
				continue
			}
			got = &SPSABytes{Rank: rec.Rank, Steps: *rec.StepsRun, WireBytes: rec.Wire, PayloadBytes: rec.Payload,
				BytesPerStep: rec.PerStep, ParamsCRC32C: rec.CRC, PeakRSSBytes: rec.PeakRSS}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return out, fmt.Errorf("spsa bytes: %s: %w", path, err)
		}
		if got != nil {
			out = append(out, *got)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out, nil
}

// TokenEnv is the environment variable that carries the job token to worker
// processes (so it does not show in ps) and the default of --token.
const TokenEnv = "MOETRAIN_TOKEN"
