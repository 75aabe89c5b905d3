package train

import (
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tensor"
)

// BenchmarkTrainStep is one full training step (batch, forward, backward,
// AdamW) of the reference model on the embedded corpus, reported as
// tokens/s, for 1 and 2 kernel threads.
//
//	go test ./train -run '^$' -bench TrainStep -benchtime 10x
func BenchmarkTrainStep(b *testing.B) {
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			prev := tensor.Threads()
			tensor.SetThreads(threads)
			defer tensor.SetThreads(prev)
			cfg, _, _, step := benchTrainer(b)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			tokens := float64(b.N * cfg.Data.SeqLen * cfg.Data.BatchSize)
			b.ReportMetric(tokens/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// benchTrainer builds the reference trainer and a window sampler over the
// embedded corpus, and returns them with one training step (batch, forward,
// backward, AdamW), already run once so that activations are allocated
// before the caller starts timing.
func benchTrainer(b *testing.B) (JobConfig, sampling.Sampler, *Trainer, func()) {
	b.Helper()
	cfg := DefaultJobConfig()
	corpus, err := sampling.DefaultCorpus()
	if err != nil {
		b.Fatal(err)
	}
	s, err := sampling.NewWindowSampler(corpus.Train, cfg.Data.SeqLen, cfg.Data.BatchSize, 1, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := NewTrainer(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	step := func() {
		batch, err := s.Next()
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := tr.TrainStep(batch); err != nil {
			b.Fatal(err)
		}
	}
	step()
	return cfg, s, tr, step
}
