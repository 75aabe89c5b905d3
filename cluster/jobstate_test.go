package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/parallel"
)

func sampleJobState(t *testing.T) *JobState {
	t.Helper()
	ws := []WorkerInfo{{ID: "w4", Host: "a", DataAddr: "a:1"}, {ID: "w5", Host: "b", DataAddr: "b:1"}}
	plan, err := MakePlan(PlanRequest{Mesh: parallel.DefaultConfig(), Experts: 4, Heads: 2, SeqLen: 8}, ws)
	if err != nil {
		t.Fatal(err)
	}
	return &JobState{JobID: "job1", TokenHash: tokenHash("tok"), Phase: PhaseRunning, ExpectedWorkers: 2, TotalSteps: 300,
		Generation: 2, Restarts: 2, LastCheckpoint: 40, StartStep: 0, Step: 47, Plan: &plan,
		Recoveries: []RecoveryRecord{{Generation: 1, Cause: "worker w1 died", DetectedS: 1.5, FailedStep: 12, ResumedStep: -1, StepsRedone: 12}},
		Updated:    time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)}
}

func TestJobStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if s, err := ReadJobState(dir); s != nil || err != nil {
		t.Fatalf("empty directory: %v, %v", s, err)
	}
	want := sampleJobState(t)
	if err := WriteJobState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJobState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read back\n%+v\nwant\n%+v", got, want)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != JobStateFile {
		t.Fatalf("directory holds %v, want only %s", ents, JobStateFile)
	}
	if fi, _ := os.Stat(filepath.Join(dir, JobStateFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (it identifies the job token)", fi.Mode().Perm())
	}
}

// Every malformed file is an error naming the file and what is wrong.
func TestJobStateRejects(t *testing.T) {
	good, err := json.Marshal(sampleJobState(t))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		m["version"] = float64(jobStateVersion)
		f(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	for name, tc := range map[string]struct{ text, want string }{
		"not json":      {"{", "unexpected end"},
		"version":       {edit(func(m map[string]any) { m["version"] = 9.0 }), "version 9"},
		"token":         {edit(func(m map[string]any) { delete(m, "token_hash") }), "no token_hash"},
		"phase":         {edit(func(m map[string]any) { m["phase"] = "dancing" }), `unknown phase "dancing"`},
		"workers":       {edit(func(m map[string]any) { m["expected_workers"] = 0.0 }), "expected_workers 0"},
		"generation":    {edit(func(m map[string]any) { m["generation"] = -1.0 }), "generation -1"},
		"checkpoint":    {edit(func(m map[string]any) { m["last_checkpoint"] = -2.0 }), "last_checkpoint -2"},
		"plan":          {edit(func(m map[string]any) { m["plan"].(map[string]any)["ranks"] = []any{} }), "plan:"},
		"wrong type":    {edit(func(m map[string]any) { m["restarts"] = "three" }), "restarts"},
		"huge number":   {edit(func(m map[string]any) { m["step"] = 1e30 }), "step"},
		"negative step": {edit(func(m map[string]any) { m["step"] = -5.0 }), "step -5"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, JobStateFile), []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := ReadJobState(dir)
			if err == nil || !strings.Contains(err.Error(), JobStateFile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s and %q", err, JobStateFile, tc.want)
			}
		})
	}
	// A file too large to be a job state is refused before it is read.
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, JobStateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(maxJobStateBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadJobState(dir); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestJobStateCheckTakeover(t *testing.T) {
	s := sampleJobState(t)
	if err := s.CheckTakeover("run", "tok", 2); err != nil {
		t.Fatalf("a running job of the same token and size: %v", err)
	}
	for _, tc := range []struct {
		phase   Phase
		token   string
		workers int
		want    string
	}{
		{PhaseSucceeded, "tok", 2, "has ended (succeeded)"},
		{PhaseRunning, "other", 2, "another job token"},
		{PhaseRecovering, "tok", 3, "of 2 workers, not 3"},
	} {
		s.Phase = tc.phase
		if err := s.CheckTakeover("run", tc.token, tc.workers); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s/%d: %v, want %q", tc.phase, tc.token, tc.workers, err, tc.want)
		}
	}
}

// FuzzJobState: any bytes give a state or an error, never a panic; a state
// that is accepted survives a write and a read unchanged.
func FuzzJobState(f *testing.F) {
	b, _ := json.Marshal(JobState{Version: jobStateVersion, TokenHash: "x", Phase: PhaseRunning, ExpectedWorkers: 1, LastCheckpoint: -1})
	f.Add(b)
	f.Add([]byte(`{"version":1,"token_hash":"x","phase":"recovering","expected_workers":4,"last_checkpoint":20,"plan":{"mesh":{"DP":1}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseJobState("fuzz", data)
		if err != nil {
			return
		}
		dir := t.TempDir()
		if err := WriteJobState(dir, s); err != nil {
			t.Fatal(err)
		}
		again, err := ReadJobState(dir)
		if err != nil {
			t.Fatalf("an accepted state does not read back: %v", err)
		}
		a, _ := json.Marshal(s)
		b, _ := json.Marshal(again)
		if string(a) != string(b) {
			t.Fatalf("read back differs:\n%s\n%s", a, b)
		}
	})
}
