package tokenizer

import (
	"iter"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func seqOf(texts []string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, s := range texts {
			if !yield([]byte(s)) {
				return
			}
		}
	}
}

// naiveTrain recounts every pair of every word before each merge.
func naiveTrain(texts []string, vocab int, minFreq int64) [][2]int32 {
	counts := map[string]int64{}
	for _, s := range texts {
		splitWords([]byte(s), func(w []byte) { counts[string(w)]++ })
	}
	var words [][]int32
	var freq []int64
	for w, c := range counts {
		ids := make([]int32, len(w))
		for i := 0; i < len(w); i++ {
			ids[i] = int32(w[i])
		}
		words, freq = append(words, ids), append(freq, c)
	}
	var ranked [][2]int32
	for next := int32(256); int(next) < vocab; next++ {
		pairs := map[[2]int32]int64{}
		for i, w := range words {
			for j := 0; j+1 < len(w); j++ {
				pairs[[2]int32{w[j], w[j+1]}] += freq[i]
			}
		}
		var best [2]int32
		bc := int64(0)
		for p, c := range pairs {
			if c > bc || (c == bc && (p[0] < best[0] || (p[0] == best[0] && p[1] < best[1]))) {
				best, bc = p, c
			}
		}
		if bc < minFreq {
			break
		}
		ranked = append(ranked, best)
		for i, w := range words {
			words[i] = mergePair(w, best[0], best[1], next)
		}
	}
	return ranked
}

func trainTexts(seed uint64, n int) []string {
	r := rand.New(rand.NewPCG(seed, 7))
	vocab := []string{"the", "then", "there", "a", "an", "and", "err", "error", "return", "func", "nil", "if", "x", "xx", "1", "12", "123", "'s", "'t", "!", ".", "{", "}", "ж", "жж", "👋"}
	seps := []string{" ", " ", " ", "  ", "\n", "\n\t", ", ", ""}
	texts := make([]string, n)
	for i := range texts {
		var sb strings.Builder
		for range r.IntN(30) + 1 {
			sb.WriteString(vocab[r.IntN(len(vocab))])
			sb.WriteString(seps[r.IntN(len(seps))])
		}
		texts[i] = sb.String()
	}
	return texts
}

func TestTrainMatchesNaive(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		texts := trainTexts(seed, 300)
		b, st, err := Train(seqOf(texts), TrainOptions{VocabSize: 400})
		if err != nil {
			t.Fatal(err)
		}
		want := naiveTrain(texts, 400, 2)
		if !slices.Equal(b.ranked, want) {
			t.Fatalf("seed %d: merges differ from the naive trainer (got %d, want %d)\n got  %v\n want %v", seed, len(b.ranked), len(want), b.ranked[:min(20, len(b.ranked))], want[:min(20, len(want))])
		}
		if st.Merges != len(want) || b.VocabSize() != 256+len(want) {
			t.Fatalf("seed %d: stats %+v, vocab %d, want %d merges", seed, st, b.VocabSize(), len(want))
		}
	}
}

func TestTrainDeterministic(t *testing.T) {
	texts := trainTexts(9, 200)
	a, _, err := Train(seqOf(texts), TrainOptions{VocabSize: 300, Special: []string{"<eot>"}})
	if err != nil {
		t.Fatal(err)
	}
	rev := slices.Clone(texts)
	slices.Reverse(rev)
	b, _, err := Train(seqOf(rev), TrainOptions{VocabSize: 300, Special: []string{"<eot>"}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("training on the same texts in another order gave another tokenizer")
	}
	if a.VocabSize() != 300 || a.added[0].ID != 299 {
		t.Fatalf("vocab %d, special id %d; want 300 and 299", a.VocabSize(), a.added[0].ID)
	}
	// the trained tokenizer encodes its training text shorter than bytes
	text := []byte(strings.Join(texts, ""))
	if n := len(a.Append(nil, text)); n*10 >= len(text)*9 {
		t.Fatalf("%d tokens for %d bytes: merges do not compress", n, len(text))
	}
}

func TestTrainErrors(t *testing.T) {
	for _, c := range []struct {
		texts []string
		o     TrainOptions
		want  string
	}{
		{[]string{"abc"}, TrainOptions{VocabSize: 100}, "vocab size 100"},
		{[]string{"abc"}, TrainOptions{VocabSize: 257, Special: []string{"a", "b"}}, "vocab size 257"},
		{[]string{"abc"}, TrainOptions{VocabSize: 300, Special: []string{"a", "a"}}, "repeated"},
		{nil, TrainOptions{VocabSize: 300}, "no text"},
	} {
		_, _, err := Train(seqOf(c.texts), c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Train(%q, %+v) = %v, want an error with %q", c.texts, c.o, err, c.want)
		}
	}
	// stops early when no pair repeats
	b, _, err := Train(seqOf([]string{"abcdef"}), TrainOptions{VocabSize: 300})
	if err != nil || b.VocabSize() != 256 {
		t.Fatalf("single word: vocab %v, %v; want 256 (no pair occurs twice)", b, err)
	}
}

func BenchmarkTrain(b *testing.B) {
	texts := trainTexts(1, 5000)
	n := 0
	for _, s := range texts {
		n += len(s)
	}
	b.SetBytes(int64(n))
	for b.Loop() {
		if _, _, err := Train(seqOf(texts), TrainOptions{VocabSize: 1024}); err != nil {
			b.Fatal(err)
		}
	}
}
