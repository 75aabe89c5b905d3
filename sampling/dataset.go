package sampling

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Example is one variable-length example of a Dataset.
//
// One-length examples hold Len+1 tokens and fill Len row positions, every one
// with a target. Two-length examples hold In input tokens followed by Out
// output tokens and fill Len = In+Out-1 positions; only the Out positions that
// predict output tokens have targets. Length-only examples (two-length data
// read from length fields) have no Tokens and can be planned but not batched.
type Example struct {
	Doc    int     // index of the source document or record
	Tokens []int32 // see above; nil for length-only examples and for examples read from Dataset's source
	Off    int     // with a source: offset of the example's first token in document Doc
	Len    int     // row positions the example fills
	In     int     // two-length: input tokens; 0 for one-length
	Out    int     // two-length: output tokens; 0 for one-length
}

// Dataset is a list of examples no longer than MaxLen positions, with counts
// of what was done to fit them. Read its examples with NumExamples, Example
// and Each: Examples holds them only for data in memory; a dataset over
// another source (a prepared dataset) computes them from its document
// lengths (exampleIndex), so its memory does not grow with the examples.
type Dataset struct {
	Name      string
	Examples  []Example // in-memory data; nil when ix computes the examples
	MaxLen    int
	TwoD      bool
	Docs      int // source documents or records read
	Split     int // documents split into several examples (too_long = split)
	Truncated int // examples truncated (too_long = truncate, and two-length data)
	Dropped   int // documents with fewer than 2 tokens (nothing to predict)

	src docSource     // when set, examples' tokens are read from it (Doc, Off) at batch time
	ix  *exampleIndex // when set, the examples (Examples is nil)
}

// NumExamples is the number of examples.
func (d *Dataset) NumExamples() int {
	if d.ix != nil {
		return d.ix.count()
	}
	return len(d.Examples)
}

// Example returns example i (0 <= i < NumExamples).
func (d *Dataset) Example(i int) Example {
	if d.ix != nil {
		return d.ix.example(i)
	}
	return d.Examples[i]
}

// exLen is Example(i).Len, without building the example (no search, see
// exampleIndex).
func (d *Dataset) exLen(i int) int {
	if d.ix != nil {
		return d.ix.exLen(i)
	}
	return d.Examples[i].Len
}

// Each calls f on every example in order.
func (d *Dataset) Each(f func(i int, e Example)) {
	if d.ix != nil {
		d.ix.each(f)
		return
	}
	for i, e := range d.Examples {
		f(i, e)
	}
}

// trainable reports whether batches can be made (tokens in memory or in a
// source, not lengths only).
func (d *Dataset) trainable() bool {
	return d.src != nil || len(d.Examples) == 0 || d.Examples[0].Tokens != nil
}

// Lengths returns every example's Len.
func (d *Dataset) Lengths() []int {
	out := make([]int, d.NumExamples())
	d.Each(func(i int, e Example) { out[i] = e.Len })
	return out
}

// Tokens is the total of Len over the examples (the positions with targets
// for one-length data).
func (d *Dataset) Tokens() int {
	n := 0
	d.Each(func(_ int, e Example) { n += e.Len })
	return n
}

// NewDataset turns documents into one-length examples of at most maxLen
// positions. A document of n tokens gives n-1 positions; longer than maxLen
// it is split into consecutive pieces of maxLen+1 tokens overlapping by one
// token (so every prediction is kept exactly once), or truncated to its first
// maxLen+1 tokens.
func NewDataset(name string, docs []Document, maxLen int, tooLong string) (*Dataset, error) {
	return newDataset(name, memDocs(docs), maxLen, tooLong)
}

// newDataset is NewDataset over a source; the examples of an in-memory source
// share its token slices, those of another source are computed from its
// document lengths (exampleIndex) and read their tokens when batched.
func newDataset(name string, src docSource, maxLen int, tooLong string) (*Dataset, error) {
	if maxLen <= 0 {
		return nil, fmt.Errorf("dataset %s: max_len %d, want > 0", name, maxLen)
	}
	if tooLong != TooLongSplit && tooLong != TooLongTruncate {
		return nil, fmt.Errorf("dataset %s: too_long %q, want split or truncate", name, tooLong)
	}
	mem, inMem := src.(memDocs)
	ds := &Dataset{Name: name, MaxLen: maxLen, Docs: src.numDocs()}
	for i := 0; i < src.numDocs(); i++ {
		switch n := src.docLen(i); {
		case n < 2:
			ds.Dropped++
		case n-1 <= maxLen:
		case tooLong == TooLongTruncate:
			ds.Truncated++
		default:
			ds.Split++
		}
	}
	if !inMem {
		ix, err := newExampleIndex(src, maxLen, tooLong == TooLongSplit)
		if err != nil {
			return nil, fmt.Errorf("dataset %s: %w", name, err)
		}
		if ix.count() == 0 {
			return nil, fmt.Errorf("dataset %s: no example has 2 or more tokens (%d documents)", name, src.numDocs())
		}
		ds.src, ds.ix = src, ix
		return ds, nil
	}
	count := 0 // examples, counted first so the slice is allocated once
	for i := 0; i < src.numDocs(); i++ {
		count += examplesOf(src.docLen(i), maxLen, tooLong == TooLongSplit)
	}
	ds.Examples = make([]Example, 0, count)
	for i := range mem {
		n := len(mem[i].Tokens)
		for k := range examplesOf(n, maxLen, tooLong == TooLongSplit) {
			off, l := pieceOf(n, k, maxLen)
			ds.Examples = append(ds.Examples, Example{Doc: i, Tokens: mem[i].Tokens[off : off+l+1], Len: l})
		}
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("dataset %s: no example has 2 or more tokens (%d documents)", name, src.numDocs())
	}
	return ds, nil
}

// Pair is a two-length record: input and output tokens, or bare lengths
// (Input and Output nil).
type Pair struct {
	Name          string
	Input, Output []int32
	InLen, OutLen int
}

// NewDataset2D turns pairs into two-length examples. A pair whose row
// (In+Out-1 positions) exceeds maxLen is truncated, output first (keeping at
// least one output token), then input, and counted in Truncated; pairs with
// an empty input or output are dropped and counted.
func NewDataset2D(name string, pairs []Pair, maxLen int) (*Dataset, error) {
	if maxLen <= 0 {
		return nil, fmt.Errorf("dataset %s: max_len %d, want > 0", name, maxLen)
	}
	ds := &Dataset{Name: name, MaxLen: maxLen, TwoD: true, Docs: len(pairs)}
	for i, p := range pairs {
		in, out := p.InLen, p.OutLen
		if p.Input != nil || p.Output != nil {
			in, out = len(p.Input), len(p.Output)
		}
		if in < 1 || out < 1 {
			ds.Dropped++
			continue
		}
		if in+out-1 > maxLen {
			ds.Truncated++
			out = max(1, maxLen+1-in)
			in = min(in, maxLen+1-out)
		}
		e := Example{Doc: i, Len: in + out - 1, In: in, Out: out}
		if p.Input != nil {
			e.Tokens = make([]int32, 0, in+out)
			e.Tokens = append(append(e.Tokens, p.Input[:in]...), p.Output[:out]...)
		}
		ds.Examples = append(ds.Examples, e)
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("dataset %s: no record has a non-empty input and output (%d records)", name, len(pairs))
	}
	return ds, nil
}

// ReadPairs reads two-length records from a .jsonl file or a directory of
// them: two text fields (inField, outField) or, when lenFields is true, two
// integer length fields. Errors name the file and line.
func ReadPairs(path, inField, outField string, lenFields bool) ([]Pair, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	var files []string
	if st.IsDir() {
		err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("read data: %w", err)
			}
			if d.Type().IsRegular() && isJSONL(p) {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	} else {
		files = []string{path}
	}
	var pairs []Pair
	for _, file := range files {
		if !isJSONL(file) {
			return nil, fmt.Errorf("read data %s: two-length data must be .jsonl", file)
		}
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read data: %w", err)
		}
		err = scanJSONL(f, file, func(line int, obj map[string]json.RawMessage) error {
			p := Pair{Name: fmt.Sprintf("%s:%d", file, line)}
			if lenFields {
				if p.InLen, err = intField(obj, inField); err != nil {
					return err
				}
				if p.OutLen, err = intField(obj, outField); err != nil {
					return err
				}
			} else {
				in, err := stringField(obj, inField)
				if err != nil {
					return err
				}
				out, err := stringField(obj, outField)
				if err != nil {
					return err
				}
				p.Input, p.Output = ByteTokenize([]byte(in)), ByteTokenize([]byte(out))
			}
			pairs = append(pairs, p)
			return nil
		})
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	if len(pairs) == 0 {
		return nil, fmt.Errorf("read data %s: no JSON records", path)
	}
	return pairs, nil
}

// LoadDatasets builds the training and validation datasets of cfg (bucket
// mode's examples): documents of the corpus, or two-length pairs when cfg
// names input/output fields (split into validation by the same hash rule as
// LoadCorpus). cfg must be valid.
func LoadDatasets(cfg Config, seed uint64) (train, val *Dataset, err error) {
	cfg = cfg.WithDefaults()
	maxLen := cfg.EffectiveMaxLen()
	if !cfg.TwoD() && IsPrepared(cfg.Path) {
		// the datasets read their tokens through the maps, which stay open
		// for the life of the process
		p, err := OpenPrepared(cfg.Path, ModeBucket, cfg.ValFraction, seed)
		if err != nil {
			return nil, nil, err
		}
		if train, err = newDataset(cfg.Path, p.train, maxLen, cfg.TooLong); err == nil && p.val.numDocs() > 0 {
			val, err = newDataset(cfg.Path+" (validation)", p.val, maxLen, cfg.TooLong)
		}
		if err != nil {
			p.Close()
			return nil, nil, err
		}
		return train, val, nil
	}
	if !cfg.TwoD() {
		c, err := loadCorpusField(cfg.Path, cfg.ValFraction, seed, cfg.TextField)
		if err != nil {
			return nil, nil, err
		}
		return corpusDatasets(c, maxLen, cfg.TooLong)
	}
	lenFields := cfg.InputLenField != ""
	inF, outF := cfg.InputField, cfg.OutputField
	if lenFields {
		inF, outF = cfg.InputLenField, cfg.OutputLenField
	}
	if IsEmbedded(cfg.Path) {
		return nil, nil, fmt.Errorf("two-length data needs data.path to a .jsonl file; the embedded corpus has one length")
	}
	pairs, err := ReadPairs(cfg.Path, inF, outF, lenFields)
	if err != nil {
		return nil, nil, err
	}
	var tp, vp []Pair
	for i, p := range pairs {
		if heldOut(seed, i, p.Name, cfg.ValFraction) {
			vp = append(vp, p)
		} else {
			tp = append(tp, p)
		}
	}
	if len(tp) == 0 {
		return nil, nil, fmt.Errorf("data %s: no training records after holding out %.3g", cfg.Path, cfg.ValFraction)
	}
	if train, err = NewDataset2D(cfg.Path, tp, maxLen); err != nil {
		return nil, nil, err
	}
	if len(vp) > 0 {
		if val, err = NewDataset2D(cfg.Path+" (validation)", vp, maxLen); err != nil {
			return nil, nil, err
		}
	}
	return train, val, nil
}

// corpusDatasets builds the training and validation datasets of c's
// documents (val is nil when c holds none out).
func corpusDatasets(c *Corpus, maxLen int, tooLong string) (train, val *Dataset, err error) {
	if train, err = NewDataset(c.Name, c.Train, maxLen, tooLong); err != nil {
		return nil, nil, err
	}
	if len(c.Val) > 0 {
		if val, err = NewDataset(c.Name+" (validation)", c.Val, maxLen, tooLong); err != nil {
			return nil, nil, err
		}
	}
	return train, val, nil
}
