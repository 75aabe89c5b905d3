package tokenizer_test

import (
	"iter"
	"sync"
	"testing"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tokenizer"
)

// The benchmarks of docs/tokenizer.md: training a 4,096-token BPE on the
// training documents of the embedded corpus, and encoding them with it.

func corpusTexts(b *testing.B) ([][]byte, int64) {
	c, err := sampling.DefaultCorpus()
	if err != nil {
		b.Fatal(err)
	}
	texts := make([][]byte, len(c.Train))
	n := int64(0)
	for i, d := range c.Train {
		texts[i] = sampling.ByteDetokenize(d.Tokens)
		n += int64(len(texts[i]))
	}
	return texts, n
}

func seq(texts [][]byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, t := range texts {
			if !yield(t) {
				return
			}
		}
	}
}

var corpusTok = sync.OnceValues(func() (*tokenizer.BPE, error) {
	c, err := sampling.DefaultCorpus()
	if err != nil {
		return nil, err
	}
	texts := make([][]byte, len(c.Train))
	for i, d := range c.Train {
		texts[i] = sampling.ByteDetokenize(d.Tokens)
	}
	b, _, err := tokenizer.Train(seq(texts), tokenizer.TrainOptions{VocabSize: 4096})
	return b, err
})

func BenchmarkTrainCorpus4096(b *testing.B) {
	texts, n := corpusTexts(b)
	b.SetBytes(n)
	for b.Loop() {
		if _, _, err := tokenizer.Train(seq(texts), tokenizer.TrainOptions{VocabSize: 4096}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeCorpus4096(b *testing.B) {
	texts, n := corpusTexts(b)
	tk, err := corpusTok()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n)
	var dst []int32
	tokens := 0
	for b.Loop() {
		tokens = 0
		for _, t := range texts {
			dst = tk.Append(dst[:0], t)
			tokens += len(dst)
		}
	}
	b.ReportMetric(float64(n)/float64(tokens), "bytes/token")
}
