// Package pretrain is test support: a job's model trained a few steps with
// the usual trainer on its data and saved as a committed checkpoint, the
// start that fine-tuning tests (spsa, cluster's SPSA runner) load.
//
// It must not be imported by anything but tests.
package pretrain

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// Trainer returns cfg's trainer after steps training steps on the first
// batches of cfg's data (rank 0 of 1), and the data it trained on. The
// trainer is closed when the test ends.
func Trainer(t testing.TB, cfg train.JobConfig, steps int) (*train.Trainer, *sampling.Data) {
	t.Helper()
	tr, err := train.NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	data, err := sampling.Open(cfg.DataConfig(), cfg.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	s, err := data.Sampler(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	for range steps {
		b, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := tr.TrainStep(b); err != nil {
			t.Fatal(err)
		}
	}
	return tr, data
}

// Save commits tr's state as a checkpoint in the store at dir (created) and
// returns dir.
func Save(t testing.TB, tr *train.Trainer, dir string) string {
	t.Helper()
	store, err := checkpoint.NewStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.SaveCheckpoint(t.Context(), store, nil, checkpoint.WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}
