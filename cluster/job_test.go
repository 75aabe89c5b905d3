package cluster

import (
	"errors"
	"testing"

	"github.com/moetrain/moetrain/train"
)

// TestCheckLayoutCUDA: a cuda job runs on one worker only, also when
// mesh.dp is auto and the worker count comes from the launch.
func TestCheckLayoutCUDA(t *testing.T) {
	cfg := train.DefaultJobConfig()
	cfg.Train.Device = train.DeviceCUDA
	if err := CheckLayout(cfg, 1); err != nil {
		t.Fatal(err)
	}
	if err := CheckLayout(cfg, 2); !errors.Is(err, train.ErrCUDAOneRank) {
		t.Fatalf("two workers: %v", err)
	}
	cfg.Train.Device = train.DeviceCPU
	if err := CheckLayout(cfg, 2); err != nil {
		t.Fatal(err)
	}
}
