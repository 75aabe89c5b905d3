package launch

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/train"
)

// A job too large for one rank is refused by launch before it creates the
// run directory or starts a worker, with the memory estimate in the error.
func TestLaunchRefusesHugeModel(t *testing.T) {
	for _, set := range []func(*train.JobConfig){
		func(j *train.JobConfig) { j.Model.DModel = 1 << 40 },
		func(j *train.JobConfig) { j.Model.Experts = 1 << 30 },
	} {
		job := train.DefaultJobConfig()
		set(&job)
		dir := filepath.Join(t.TempDir(), "run")
		started := false
		_, err := Launch(context.Background(), LaunchConfig{Workers: 2, Job: job, RunDir: dir,
			WorkerCmd: func(args ...string) *exec.Cmd { started = true; return exec.Command("false") }})
		if err == nil || !strings.Contains(err.Error(), "estimated memory per rank") {
			t.Fatalf("launch: %v, want the memory estimate", err)
		}
		if _, serr := os.Stat(dir); started || serr == nil {
			t.Fatalf("launch started a worker (%v) or made the run directory (%v) before refusing", started, serr)
		}
		t.Log(err)
	}
}
