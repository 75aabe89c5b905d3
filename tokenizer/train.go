package tokenizer

import (
	"container/heap"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sort"
)

// TrainOptions configure Train.
type TrainOptions struct {
	// VocabSize is the vocabulary wanted: 256 byte tokens plus
	// VocabSize-256 merges. Training stops earlier when no pair occurs
	// MinFrequency times.
	VocabSize int
	// MinFrequency is the fewest occurrences a pair needs to be merged;
	// 0 = 2.
	MinFrequency int64
	// Special tokens are added after the merges (ids VocabSize-len(Special)
	// on) as added tokens, matched verbatim in text before splitting. They
	// count towards VocabSize.
	Special []string
}

// MaxTrainVocab bounds TrainOptions.VocabSize.
const MaxTrainVocab = 1 << 20

// TrainStats describe a training run.
type TrainStats struct {
	Bytes    int64 // text bytes read
	Words    int64 // pre-tokenized words
	Distinct int   // distinct words
	Merges   int   // merges learned
}

// Train learns a byte-level BPE from texts: ids 0..255 are the bytes
// (id = byte value), then one token per merge. Every text is split into
// words (GPT-2's pattern, as Append splits), words are counted, and the
// most frequent adjacent pair over all words (weighted by their counts) is
// merged repeatedly; ties go to the pair of smaller ids (first id, then
// second), so the result depends only on the multiset of words. Pair counts
// are updated incrementally: a merge visits only the words that hold the
// pair (an index from pair to words) and a max-heap with lazy deletion
// finds the next pair, so no merge rescans the corpus.
func Train(texts iter.Seq[[]byte], o TrainOptions) (*BPE, TrainStats, error) {
	var st TrainStats
	if o.VocabSize < 256+len(o.Special) || o.VocabSize > MaxTrainVocab {
		return nil, st, fmt.Errorf("vocab size %d: want %d..%d (256 bytes and %d special tokens)", o.VocabSize, 256+len(o.Special), MaxTrainVocab, len(o.Special))
	}
	for i, sp := range o.Special {
		if sp == "" || slices.Contains(o.Special[:i], sp) {
			return nil, st, fmt.Errorf("special token %d (%q): empty or repeated", i, sp)
		}
	}
	bpeTokens := o.VocabSize - len(o.Special) // tokens before the special ones
	minFreq := o.MinFrequency
	if minFreq == 0 {
		minFreq = 2
	}
	if minFreq < 1 {
		return nil, st, fmt.Errorf("min frequency %d: want >= 1", minFreq)
	}
	counts := map[string]int64{}
	for t := range texts {
		st.Bytes += int64(len(t))
		splitWords(t, func(w []byte) {
			st.Words++
			counts[string(w)]++
		})
	}
	if st.Bytes == 0 {
		return nil, st, errors.New("no text to train on")
	}
	st.Distinct = len(counts)

	// Words in sorted order, so that nothing depends on map iteration.
	keys := make([]string, 0, len(counts))
	for w := range counts {
		keys = append(keys, w)
	}
	sort.Strings(keys)
	words := make([][]int32, len(keys))
	freq := make([]int64, len(keys))
	pairs := map[uint64]int64{}
	where := map[uint64][]int32{}
	for i, w := range keys {
		ids := make([]int32, len(w))
		for j := 0; j < len(w); j++ {
			ids[j] = int32(w[j])
		}
		words[i], freq[i] = ids, counts[w]
		for j := 0; j+1 < len(ids); j++ {
			k := pairKey(ids[j], ids[j+1])
			if pairs[k] == 0 || last(where[k]) != int32(i) {
				where[k] = append(where[k], int32(i))
			}
			pairs[k] += freq[i]
		}
	}
	counts, keys = nil, nil

	tokens := make([][]byte, 256, o.VocabSize)
	for i := range tokens {
		tokens[i] = []byte{byte(i)}
	}
	var ranked [][2]int32
	q := make(heapOf[pairCount], 0, len(pairs))
	for k, c := range pairs {
		q = append(q, pairCount{key: k, count: c})
	}
	heap.Init(&q)
	seen := make([]int32, len(words)) // merge number + 1 that last visited a word
	delta := map[uint64]int64{}
	for len(tokens) < bpeTokens && q.Len() > 0 {
		top := heap.Pop(&q).(pairCount)
		if cur := pairs[top.key]; cur != top.count {
			if cur > 0 { // stale entry: requeue at its current count
				heap.Push(&q, pairCount{key: top.key, count: cur})
			}
			continue
		}
		if top.count < minFreq {
			break
		}
		a, b := int32(top.key>>32), int32(uint32(top.key))
		id := int32(len(tokens))
		tokens = append(tokens, append(append([]byte{}, tokens[a]...), tokens[b]...))
		ranked = append(ranked, [2]int32{a, b})
		stamp := int32(len(ranked))
		clear(delta)
		for _, wi := range where[top.key] {
			if seen[wi] == stamp {
				continue
			}
			seen[wi] = stamp
			w, c := words[wi], freq[wi]
			if !hasPair(w, a, b) {
				continue // the pair was merged away in this word earlier
			}
			for j := 0; j+1 < len(w); j++ {
				delta[pairKey(w[j], w[j+1])] -= c
			}
			w = mergePair(w, a, b, id)
			words[wi] = w
			for j := 0; j+1 < len(w); j++ {
				k := pairKey(w[j], w[j+1])
				delta[k] += c
				if (w[j] == id || w[j+1] == id) && last(where[k]) != wi {
					where[k] = append(where[k], wi)
				}
			}
		}
		delete(where, top.key)
		// apply in key order so that heap contents are deterministic
		ks := make([]uint64, 0, len(delta))
		for k, d := range delta {
			if d != 0 {
				ks = append(ks, k)
			}
		}
		sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
		for _, k := range ks {
			d := delta[k]
			n := pairs[k] + d
			if n <= 0 {
				delete(pairs, k)
				delete(where, k)
				continue
			}
			pairs[k] = n
			if d > 0 {
				heap.Push(&q, pairCount{key: k, count: n})
			}
		}
	}
	st.Merges = len(ranked)
	var added []AddedToken
	for _, sp := range o.Special {
		added = append(added, AddedToken{ID: int32(len(tokens)), Content: sp, Special: true})
		tokens = append(tokens, []byte(sp))
	}
	bpe, err := newBPE(tokens, ranked, added, false, true, false)
	if err != nil {
		return nil, st, fmt.Errorf("trained tokenizer: %w", err)
	}
	return bpe, st, nil
}

func last(s []int32) int32 {
	if len(s) == 0 {
		return -1
	}
	return s[len(s)-1]
}

func hasPair(w []int32, a, b int32) bool {
	for j := 0; j+1 < len(w); j++ {
		if w[j] == a && w[j+1] == b {
			return true
		}
	}
	return false
}

// mergePair replaces the non-overlapping occurrences of (a, b), left to
// right, by id, in place.
func mergePair(w []int32, a, b, id int32) []int32 {
	out := w[:0]
	for j := 0; j < len(w); j++ {
		if j+1 < len(w) && w[j] == a && w[j+1] == b {
			out = append(out, id)
			j++
			continue
		}
		out = append(out, w[j])
	}
	return out
}

type pairCount struct {
	key   uint64
	count int64
}

// before orders the pairs' heap: the larger count first, ties to the
// smaller pair key (first id, then second id).
func (p pairCount) before(q pairCount) bool {
	if p.count != q.count {
		return p.count > q.count
	}
	return p.key < q.key
}
