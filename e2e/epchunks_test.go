package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// With model.ep_chunks = -1 every MoE layer chooses its pipelining degree
// from measured times after trying 1, 2, 4 and 8 chunks for 3 steps each,
// and every rank's log says what it chose, when, and from which medians
// (docs/algorithms/ep-dispatch.md).
func TestLaunchLogsPipeliningChoice(t *testing.T) {
	job := writeJobText(t, tinyModel+"ep_chunks = -1\n"+`
[mesh]
ep = 2

[data]
seq_len = 32
batch_size = 4

[train]
steps = 20
eval_every = 20
log_every = 10
`)
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", job, "--run-dir", run, "--no-bar")
	if code := p.wait(2 * time.Minute); code != 0 {
		t.Fatalf("launch exited %d:\n%s", code, p.output())
	}
	for _, w := range []string{"worker-0.log", "worker-1.log"} {
		f, err := os.Open(filepath.Join(run, w))
		if err != nil {
			t.Fatal(err)
		}
		layers := map[int]bool{}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e struct {
				Message string             `json:"message"`
				Layer   int                `json:"layer"`
				AtStep  int                `json:"at_step"`
				To      int                `json:"to"`
				Medians map[string]float64 `json:"median_ms_by_chunks"`
			}
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.Message != "expert-parallel pipelining changed" {
				continue
			}
			if e.AtStep != 12 || e.To < 1 || e.To > 8 || len(e.Medians) != 4 {
				t.Errorf("%s: %s: want the choice at step 12 among 4 measured counts", w, sc.Bytes())
			}
			layers[e.Layer] = true
		}
		f.Close()
		if len(layers) != 2 {
			t.Errorf("%s: choices logged for layers %v, want both MoE layers", w, layers)
		}
	}
}
