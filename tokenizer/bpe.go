package tokenizer

import (
	"container/heap"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
)

// AddedToken is a token matched verbatim in the text before pre-tokenizing
// (tokenizer.json's added_tokens): the leftmost, then longest, occurrence
// wins, and the text between occurrences is encoded by BPE.
type AddedToken struct {
	ID      int32
	Content string
	Special bool
}

// BPE is a GPT-2-style byte-level BPE tokenizer: text is split into added
// tokens and pre-tokenized words (splitWords), each word's bytes start as
// single-byte tokens, and adjacent pairs are merged lowest rank first
// (leftmost first among equal ranks) until no pair has a merge. Build one
// with LoadFile, Parse or Train.
type BPE struct {
	tokens  [][]byte         // id → raw bytes; nil for an id that is not used
	byteID  [256]int32       // the single-byte tokens
	merges  map[uint64]merge // pair (a<<32 | b) → rank and result
	ranked  [][2]int32       // the merges by rank
	vocab   map[string]int32 // raw bytes → id of BPE tokens (ignoreMerges only)
	added   []AddedToken
	byFirst [256][]int // added-token indices by first byte, longest first

	addPrefixSpace bool // prepend ' ' to every segment not starting with one
	useRegex       bool // split words with the GPT-2 pattern (else a segment is one word)
	ignoreMerges   bool // a word that is a token is that token (no merging)

	fp    string
	cache wordCache
}

type merge struct{ rank, id int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// newBPE checks and indexes a vocabulary and merges. tokens[i] is the raw
// bytes of id i (nil = unused); every byte must be a token of its own;
// merges are by rank, and each result must be a token.
func newBPE(tokens [][]byte, ranked [][2]int32, added []AddedToken, addPrefixSpace, useRegex, ignoreMerges bool) (*BPE, error) {
	b := &BPE{tokens: tokens, ranked: ranked, added: added, addPrefixSpace: addPrefixSpace, useRegex: useRegex, ignoreMerges: ignoreMerges}
	isAdded := make(map[int32]bool, len(added))
	for _, a := range added {
		isAdded[a.ID] = true
	}
	byRaw := make(map[string]int32, len(tokens))
	for i := range b.byteID {
		b.byteID[i] = -1
	}
	for id, t := range tokens {
		if t == nil || isAdded[int32(id)] {
			continue
		}
		if prev, dup := byRaw[string(t)]; dup {
			return nil, fmt.Errorf("model.vocab: ids %d and %d are the same bytes %q", prev, id, t)
		}
		byRaw[string(t)] = int32(id)
		if len(t) == 1 {
			b.byteID[t[0]] = int32(id)
		}
	}
	for i, id := range b.byteID {
		if id < 0 {
			return nil, fmt.Errorf("model.vocab: no token for byte 0x%02x (%q): a byte-level vocabulary has all 256", i, string(byteRune[i]))
		}
	}
	b.merges = make(map[uint64]merge, len(ranked))
	for r, m := range ranked {
		ta, tb := b.tokens[m[0]], b.tokens[m[1]]
		id, ok := byRaw[string(ta)+string(tb)]
		if !ok {
			return nil, fmt.Errorf("merges[%d]: result %q of %q + %q is not in model.vocab", r, toByteLevel(append(append([]byte{}, ta...), tb...)), toByteLevel(ta), toByteLevel(tb))
		}
		k := pairKey(m[0], m[1])
		if prev, dup := b.merges[k]; dup {
			return nil, fmt.Errorf("merges[%d]: %q + %q repeats merges[%d]", r, toByteLevel(ta), toByteLevel(tb), prev.rank)
		}
		b.merges[k] = merge{rank: int32(r), id: id}
	}
	if ignoreMerges {
		b.vocab = byRaw
	}
	for i, a := range added {
		c := a.Content[0]
		b.byFirst[c] = append(b.byFirst[c], i)
	}
	for c := range b.byFirst {
		s := b.byFirst[c]
		sort.SliceStable(s, func(i, j int) bool { return len(added[s[i]].Content) > len(added[s[j]].Content) })
	}
	b.fp = b.fingerprint()
	b.cache.m = make(map[string][]int32)
	return b, nil
}

// fingerprint hashes everything that decides the ids of a text.
func (b *BPE) fingerprint() string {
	h := sha256.New()
	var w [8]byte
	put := func(v uint64) { binary.LittleEndian.PutUint64(w[:], v); h.Write(w[:]) }
	flags := uint64(0)
	for i, f := range []bool{b.addPrefixSpace, b.useRegex, b.ignoreMerges} {
		if f {
			flags |= 1 << i
		}
	}
	h.Write([]byte("moetrain-bpe-1\n"))
	put(flags)
	put(uint64(len(b.tokens)))
	for _, t := range b.tokens {
		if t == nil {
			put(1 << 63)
			continue
		}
		put(uint64(len(t)))
		h.Write(t)
	}
	put(uint64(len(b.ranked)))
	for _, m := range b.ranked {
		put(pairKey(m[0], m[1]))
	}
	put(uint64(len(b.added)))
	for _, a := range b.added {
		put(uint64(uint32(a.ID)))
		put(uint64(len(a.Content)))
		h.Write([]byte(a.Content))
	}
	return "bpe-" + hex.EncodeToString(h.Sum(nil)[:8])
}

// VocabSize is the number of ids (the largest id + 1).
func (b *BPE) VocabSize() int { return len(b.tokens) }

// Fingerprint identifies the vocabulary, merges, added tokens and options.
func (b *BPE) Fingerprint() string { return b.fp }

// NumMerges is the number of merges.
func (b *BPE) NumMerges() int { return len(b.ranked) }

// TokenLen is the byte length of id's text.
func (b *BPE) TokenLen(id int32) int {
	if id < 0 || int(id) >= len(b.tokens) {
		return 0
	}
	return len(b.tokens[id])
}

// Decode concatenates the tokens' bytes. Unlike Hugging Face's ByteLevel
// decoder it returns the bytes as they are (no lossy UTF-8 repair) and
// keeps added and special tokens.
func (b *BPE) Decode(ids []int32) ([]byte, error) {
	n := 0
	for i, id := range ids {
		if id < 0 || int(id) >= len(b.tokens) || b.tokens[id] == nil {
			return nil, fmt.Errorf("decode: ids[%d] = %d is not in the vocabulary (size %d)", i, id, len(b.tokens))
		}
		n += len(b.tokens[id])
	}
	out := make([]byte, 0, n)
	for _, id := range ids {
		out = append(out, b.tokens[id]...)
	}
	return out, nil
}

// Append encodes text as Hugging Face's tokenizer.encode(text,
// add_special_tokens=False) does: added tokens first, then each segment
// between them pre-tokenized and merged. With add_prefix_space false (what
// Train writes) Decode(Append(nil, text)) == text for every byte string.
func (b *BPE) Append(dst []int32, text []byte) []int32 {
	if len(b.added) == 0 {
		return b.appendSegment(dst, text)
	}
	seg := 0
	for i := 0; i < len(text); {
		k := b.addedAt(text, i)
		if k < 0 {
			i++
			continue
		}
		dst = b.appendSegment(dst, text[seg:i])
		dst = append(dst, b.added[k].ID)
		i += len(b.added[k].Content)
		seg = i
	}
	return b.appendSegment(dst, text[seg:])
}

// addedAt is the index of the longest added token at text[i:], or -1.
func (b *BPE) addedAt(text []byte, i int) int {
	for _, k := range b.byFirst[text[i]] {
		c := b.added[k].Content
		if len(text)-i >= len(c) && string(text[i:i+len(c)]) == c {
			return k
		}
	}
	return -1
}

func (b *BPE) appendSegment(dst []int32, seg []byte) []int32 {
	if len(seg) == 0 {
		return dst
	}
	if b.addPrefixSpace && seg[0] != ' ' {
		seg = append([]byte{' '}, seg...)
	}
	if !b.useRegex {
		return b.appendWord(dst, seg)
	}
	splitWords(seg, func(w []byte) { dst = b.appendWord(dst, w) })
	return dst
}

// maxCachedWord is the longest word kept in the cache, in bytes.
const maxCachedWord = 64

func (b *BPE) appendWord(dst []int32, w []byte) []int32 {
	if len(w) == 1 {
		return append(dst, b.byteID[w[0]])
	}
	if b.ignoreMerges {
		if id, ok := b.vocab[string(w)]; ok {
			return append(dst, id)
		}
	}
	if len(w) <= maxCachedWord {
		if ids, ok := b.cache.get(w); ok {
			return append(dst, ids...)
		}
	}
	start := len(dst)
	dst = b.mergeWord(dst, w)
	if len(w) <= maxCachedWord {
		b.cache.put(w, dst[start:])
	}
	return dst
}

// mergeWord appends the BPE tokens of one word: a doubly linked list of
// symbols and a heap of candidate merges (rank, left position), stale
// entries skipped on pop, so a word of n bytes costs O(n log n).
func (b *BPE) mergeWord(dst []int32, w []byte) []int32 {
	n := len(w)
	sym := make([]wsym, n)
	for i, c := range w {
		sym[i] = wsym{id: b.byteID[c], prev: i - 1, next: i + 1}
	}
	q := make(heapOf[cand], 0, n)
	push := func(l int) {
		r := sym[l].next
		if r >= n {
			return
		}
		if m, ok := b.merges[pairKey(sym[l].id, sym[r].id)]; ok {
			q = append(q, cand{rank: m.rank, pos: l, right: r, id: m.id})
		}
	}
	for i := 0; i+1 < n; i++ {
		push(i)
	}
	heap.Init(&q)
	for q.Len() > 0 {
		c := heap.Pop(&q).(cand)
		l, r := c.pos, c.right
		// stale: the left symbol was merged away or changed, or its right
		// neighbour is no longer the one this candidate paired it with
		if sym[l].dead || sym[l].next != r || sym[r].dead {
			continue
		}
		if m, ok := b.merges[pairKey(sym[l].id, sym[r].id)]; !ok || m.rank != c.rank {
			continue
		}
		sym[l].id = c.id
		sym[r].dead = true
		sym[l].next = sym[r].next
		if sym[l].next < n {
			sym[sym[l].next].prev = l
		}
		if p := sym[l].prev; p >= 0 {
			if m, ok := b.merges[pairKey(sym[p].id, sym[l].id)]; ok {
				heap.Push(&q, cand{rank: m.rank, pos: p, right: l, id: m.id})
			}
		}
		if nx := sym[l].next; nx < n {
			if m, ok := b.merges[pairKey(sym[l].id, sym[nx].id)]; ok {
				heap.Push(&q, cand{rank: m.rank, pos: l, right: nx, id: m.id})
			}
		}
	}
	for i := 0; i < n; i = sym[i].next {
		dst = append(dst, sym[i].id)
	}
	return dst
}

type wsym struct {
	id         int32
	prev, next int
	dead       bool
}

type cand struct {
	rank, id   int32
	pos, right int
}

// before orders merge candidates: lowest rank first, then leftmost.
func (c cand) before(d cand) bool {
	if c.rank != d.rank {
		return c.rank < d.rank
	}
	return c.pos < d.pos
}

// heapOf is a container/heap of T: the first by T's before on top.
type heapOf[T interface{ before(T) bool }] []T

func (h heapOf[T]) Len() int           { return len(h) }
func (h heapOf[T]) Less(i, j int) bool { return h[i].before(h[j]) }
func (h heapOf[T]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heapOf[T]) Push(x any)        { *h = append(*h, x.(T)) }
func (h *heapOf[T]) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// wordCache remembers the ids of frequent short words. It is bounded: when
// it holds maxCacheWords it is emptied and refills with what comes next.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]int32
}

const maxCacheWords = 1 << 16

func (c *wordCache) get(w []byte) ([]int32, bool) {
	c.mu.RLock()
	ids, ok := c.m[string(w)]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w []byte, ids []int32) {
	c.mu.Lock()
	if len(c.m) >= maxCacheWords {
		clear(c.m)
	}
	c.m[string(w)] = append([]int32(nil), ids...)
	c.mu.Unlock()
}

// AddPrefixSpace reports whether the tokenizer prepends a space to every
// segment that does not start with one (pre_tokenizer.add_prefix_space).
func (b *BPE) AddPrefixSpace() bool { return b.addPrefixSpace }
