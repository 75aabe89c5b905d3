package model_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/train"
)

// A DCCA model's tensors (moe_down, moe_up and the dispatch_dim-wide
// experts) round-trip through a checkpoint under their layout names, and a
// standard-layout trainer refuses the checkpoint instead of loading it.
func TestDCCACheckpointRoundTrip(t *testing.T) {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Heads, cfg.Model.Layers = 32, 2, 2
	cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 16, 4, 48
	cfg.Model.MoELayout, cfg.Model.DispatchDim = "dcca", 8
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 4
	a, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Params() {
		a.Params()[i] = float32(i%977) * 1e-3
	}
	store, err := checkpoint.NewStore(filepath.Join(t.TempDir(), "ckpt"), 0)
	if err != nil {
		t.Fatal(err)
	}
	store.NoSync = true
	cp := train.NewCheckpointer(store, checkpoint.WriterOptions{ChunkBytes: 4096}, zerolog.Nop())
	if err := cp.Save(t.Context(), a, nil); err != nil {
		t.Fatal(err)
	}
	if err := cp.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ResumeCheckpoint(store, "latest", 0); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Params(), b.Params()) {
		t.Fatal("restored parameters differ")
	}
	c, _, err := train.OpenRef(nil, store.Dir())
	if err != nil {
		t.Skipf("opening the checkpoint by path: %v", err)
	}
	defer c.Close()
	names := c.TensorNames()
	for _, want := range []string{"moe_down", "moe_up"} {
		if !slices.ContainsFunc(names, func(n string) bool { return filepath.Ext(n) == "."+want }) {
			t.Errorf("checkpoint has no %s tensor: %v", want, names)
		}
	}
	std := cfg
	std.Model.MoELayout, std.Model.DispatchDim = "standard", 0
	s, err := train.NewTrainer(std, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResumeCheckpoint(store, "latest", 0); err == nil {
		t.Fatal("a standard-layout trainer loaded a DCCA checkpoint")
	} else {
		t.Logf("standard layout refuses it: %v", err)
	}
}
