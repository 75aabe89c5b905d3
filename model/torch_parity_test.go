package model

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// torchPython returns a python3 that can import torch, or "".
func torchPython() string {
	for _, py := range []string{os.Getenv("PYTHON"), "python3", "/usr/bin/python3"} {
		if py != "" && exec.Command(py, "-c", "import torch").Run() == nil {
			return py
		}
	}
	return ""
}

func writeLE(t *testing.T, path string, data ...any) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, d := range data {
		if err := binary.Write(f, binary.LittleEndian, d); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTorchParity runs the reference model on one batch and compares loss,
// CE, aux and every gradient with the PyTorch twin used by the speed
// benchmark (scripts/bench/torch_check.py, float64). Skipped without a
// python3 that has torch, and in -short mode.
func TestTorchParity(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: runs PyTorch")
	}
	py := torchPython()
	if py == "" {
		t.Skip("no python3 with torch")
	}
	cfg := DefaultConfig()
	m, err := New(cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	in := randomInput(cfg, 2, cfg.SeqLen, 5) // the batch file holds tokens then targets
	r, err := m.ForwardBackward(in)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	params, batch, grads := filepath.Join(dir, "p.bin"), filepath.Join(dir, "b.bin"), filepath.Join(dir, "g.bin")
	writeLE(t, params, m.Params)
	writeLE(t, grads, m.Grads)
	writeLE(t, batch, in.Tokens, in.Targets)
	out, err := exec.Command(py, "../scripts/bench/torch_check.py", params, batch, grads).CombinedOutput()
	if err != nil {
		t.Fatalf("torch_check.py: %v\n%s", err, out)
	}
	var loss, ce, aux, gdiff, fdWorst float64
	fdChecked, fdSkipped := -1, -1
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 7 && f[0] == "torch" && f[1] == "loss":
			loss, _ = strconv.ParseFloat(f[2], 64)
			ce, _ = strconv.ParseFloat(f[4], 64)
			aux, _ = strconv.ParseFloat(f[6], 64)
		case strings.HasPrefix(line, "largest"):
			gdiff, _ = strconv.ParseFloat(f[len(f)-1], 64)
		case strings.HasPrefix(line, "finite differences:") && len(f) == 10:
			fdChecked, _ = strconv.Atoi(f[3])
			fdSkipped, _ = strconv.Atoi(f[5])
			fdWorst, _ = strconv.ParseFloat(f[9], 64)
		}
	}
	t.Logf("go loss %.7f ce %.7f aux %.7f; %s", r.Loss, r.CE, r.Aux, strings.TrimSpace(string(out)))
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"loss", r.Loss, loss}, {"ce", r.CE, ce}, {"aux", r.Aux, aux}} {
		if diff := c.got - c.want; diff > 1e-5*c.want || diff < -1e-5*c.want {
			t.Errorf("%s: moetrain %.7f, torch %.7f", c.name, c.got, c.want)
		}
	}
	if !(gdiff < 1e-4) {
		t.Errorf("gradients differ from torch by up to %.3g of each tensor's max (want < 1e-4)", gdiff)
	}
	// float64 central finite differences of the same model's loss, at the
	// largest-gradient coordinate of every tensor.
	total := len(m.Layout.Entries)
	if fdChecked < 0 || fdChecked+fdSkipped != total || fdChecked < total*9/10 {
		t.Errorf("finite differences: %d checked, %d skipped of %d tensors (want >= 90%% checked)", fdChecked, fdSkipped, total)
	}
	if !(fdWorst < 1e-3) {
		t.Errorf("gradient differs from float64 finite differences by %.3g relative (want < 1e-3)", fdWorst)
	}
}
