package sampling

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

// IsPrepared reports whether path is a directory holding a prepared dataset
// (`coordinator data prepare`, docs/dataset-format.md): data.path selects one
// by pointing at it, recognised by its index file.
func IsPrepared(path string) bool {
	if IsEmbedded(path) || IsSynthetic(path) {
		return false
	}
	st, err := os.Stat(filepath.Join(path, tokshard.IndexFile))
	return err == nil && st.Mode().IsRegular()
}

// Prepared is a prepared dataset opened for training: its shards are memory
// mapped, and the samplers read tokens through the maps, so a process's
// memory holds the pages it reads, not the dataset. The held-out split is
// computed from the index alone (docs/dataset-format.md#training-from-a-prepared-dataset):
//
//   - window mode cuts the concatenated documents into blocks of at most
//     2^20 tokens (at least 64 blocks when there are that many tokens) and
//     holds out round(val_fraction × blocks) of them (at least one, never
//     all), chosen by a shuffle seeded by the job seed; training windows are
//     drawn from the other blocks laid end to end. Memory is one offset per
//     block, whatever the number of documents.
//   - pack and bucket modes hold out whole documents by the rule of raw
//     data (heldOut on the document's index), falling back to the last
//     val_fraction of every document when that leaves either side empty.
//     Memory is 12 bytes per document for the split plus what the sampler
//     keeps per document or example.
type Prepared struct {
	Dir        string
	Vocab      int
	Docs       int
	Tokens     int64
	train, val docSource
	ds         *tokshard.Dataset
}

const (
	maxBlockTokens = 1 << 20
	minBlocks      = 64
)

// OpenPrepared maps dir and builds the training and validation sources of
// mode (window, pack or bucket). seed is the job seed (it chooses the
// held-out part, as for raw data).
func OpenPrepared(dir, mode string, valFraction float64, seed uint64) (*Prepared, error) {
	if math.IsNaN(valFraction) || valFraction < 0 || valFraction >= 1 {
		return nil, fmt.Errorf("load %s: validation fraction %v, want 0 <= f < 1", dir, valFraction)
	}
	ds, err := tokshard.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", dir, err)
	}
	x := ds.Index
	p := &Prepared{Dir: dir, Vocab: x.Vocab, Docs: int(x.Docs), Tokens: int64(x.Tokens), ds: ds}
	if x.Docs >= math.MaxUint32 || x.Tokens >= math.MaxInt64/2 {
		ds.Close()
		return nil, fmt.Errorf("load %s: %d documents, %d tokens: more than this reader addresses", dir, x.Docs, x.Tokens)
	}
	switch mode {
	case ModeWindow:
		p.train, p.val = blockSplit(ds, valFraction, seed)
	case ModePack, ModeBucket:
		p.train, p.val = docSplit(ds, valFraction, seed)
	default:
		ds.Close()
		return nil, fmt.Errorf("load %s: a prepared dataset trains in window, pack or bucket mode, not %q", dir, mode)
	}
	if p.train.numDocs() == 0 {
		ds.Close()
		return nil, fmt.Errorf("load %s: no training tokens left after holding out %.3g", dir, valFraction)
	}
	// the split read every document's entry; the sources keep the lengths
	ds.DropIndexPages()
	return p, nil
}

// Close unmaps the dataset; batches made before stay valid (they copy).
func (p *Prepared) Close() error { return p.ds.Close() }

// TrainDocs and ValDocs count the training and held-out pieces (blocks in
// window mode, documents or document parts otherwise).
func (p *Prepared) TrainDocs() int { return p.train.numDocs() }
func (p *Prepared) ValDocs() int   { return p.val.numDocs() }

// shardReader reads ranges of the concatenated shards of a dataset.
type shardReader struct {
	ds     *tokshard.Dataset
	starts []int64 // starts[s] = offset of shard s; starts[n] = total
}

func newShardReader(ds *tokshard.Dataset) shardReader {
	r := shardReader{ds: ds, starts: make([]int64, ds.Index.NumShards()+1)}
	for s := range ds.Index.NumShards() {
		r.starts[s+1] = r.starts[s] + int64(ds.Index.ShardTokens(s))
	}
	return r
}

// appendRange appends tokens [a, b) of the concatenated shards.
func (r shardReader) appendRange(dst []int32, a, b int64) []int32 {
	s := sort.Search(len(r.starts)-1, func(k int) bool { return r.starts[k+1] > a })
	for a < b {
		for r.starts[s+1] <= a {
			s++
		}
		end := min(b, r.starts[s+1])
		dst = r.ds.Shard(s).AppendRange(dst, int(a-r.starts[s]), int(end-r.starts[s]))
		a = end
	}
	return dst
}

// blocks is a docSource of ranges of the concatenated shards.
type blocks struct {
	r    shardReader
	a, n []int64 // block i is tokens [a[i], a[i]+n[i])
}

func (b *blocks) numDocs() int     { return len(b.a) }
func (b *blocks) docLen(i int) int { return int(b.n[i]) }
func (b *blocks) appendTokens(dst []int32, i, from, to int) []int32 {
	return b.r.appendRange(dst, b.a[i]+int64(from), b.a[i]+int64(to))
}

// blockSplit is window mode's split (see Prepared).
func blockSplit(ds *tokshard.Dataset, frac float64, seed uint64) (train, val *blocks) {
	r := newShardReader(ds)
	total := int64(ds.Index.Tokens)
	size := max(min(maxBlockTokens, (total+minBlocks-1)/minBlocks), 1)
	nb := int((total + size - 1) / size)
	held := 0
	if frac > 0 && nb >= 2 {
		held = min(max(int(math.Round(frac*float64(nb))), 1), nb-1)
	}
	order := make([]int, nb)
	for i := range order {
		order[i] = i
	}
	g := rng{s: mix(seed, purposeSplit, uint64(total))}
	g.shuffle(order)
	isVal := make([]bool, nb)
	for _, b := range order[:held] {
		isVal[b] = true
	}
	train, val = &blocks{r: r}, &blocks{r: r}
	for b := 0; b < nb; b++ {
		a := int64(b) * size
		dst := train
		if isVal[b] {
			dst = val
		}
		dst.a = append(dst.a, a)
		dst.n = append(dst.n, min(size, total-a))
	}
	return train, val
}

// docSpan is part of a prepared document: tokens [off, off+n) of doc.
type docSpan struct{ doc, off, n uint32 }

// spans is a docSource of document parts of a prepared dataset.
type spans struct {
	ds *tokshard.Dataset
	s  []docSpan
}

func (p *spans) numDocs() int     { return len(p.s) }
func (p *spans) docLen(i int) int { return int(p.s[i].n) }
func (p *spans) appendTokens(dst []int32, i, from, to int) []int32 {
	sp := p.s[i]
	t, _ := p.ds.Doc(int(sp.doc)) // sp.doc < NumDocs by construction
	return t.AppendRange(dst, int(sp.off)+from, int(sp.off)+to)
}

// docSplit is pack and bucket modes' split (see Prepared), the rule of
// splitTrainVal on document indices (prepared documents have no names).
func docSplit(ds *tokshard.Dataset, frac float64, seed uint64) (train, val *spans) {
	train, val = &spans{ds: ds}, &spans{ds: ds}
	n := ds.NumDocs()
	for i := 0; i < n; i++ {
		sp := docSpan{doc: uint32(i), n: uint32(ds.DocLen(i))}
		if frac > 0 && heldOut(seed, i, "", frac) {
			val.s = append(val.s, sp)
		} else {
			train.s = append(train.s, sp)
		}
	}
	if frac == 0 || (len(train.s) > 0 && len(val.s) > 0) {
		return train, val
	}
	train.s, val.s = train.s[:0], val.s[:0]
	for i := 0; i < n; i++ {
		l := ds.DocLen(i)
		k := int(math.Ceil(frac * float64(l)))
		if l < 4 || k < 2 || l-k < 2 {
			train.s = append(train.s, docSpan{doc: uint32(i), n: uint32(l)})
			continue
		}
		train.s = append(train.s, docSpan{doc: uint32(i), n: uint32(l - k)})
		val.s = append(val.s, docSpan{doc: uint32(i), off: uint32(l - k), n: uint32(k)})
	}
	return train, val
}
