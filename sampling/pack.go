package sampling

import (
	"fmt"
	"sort"
)

// PackSampler packs whole documents into rows of SeqLen positions with no
// padding: each epoch the documents are shuffled (seed, epoch) and laid end to
// end as one stream of positions (a document of n tokens gives n-1 positions,
// each predicting the next token), and each rank's batch is a slice of that
// stream cut into rows. A document cut by a row boundary continues in the
// next row as a new segment; positions restart at 0 and Seg ids change at
// every document or row start, so attention never crosses documents.
//
// Steps of one epoch: full steps give each of the D ranks BatchSize rows of
// SeqLen; the remainder is divided evenly over the ranks as a last, smaller
// step (rows of fewer positions), or, when it is smaller than D, together
// with the last full step as two steps. So every position is seen exactly once
// per epoch and every rank takes the same number of steps.
type PackSampler struct {
	src            docSource
	docs           []int // documents of src with >= 2 tokens
	seqLen, rows   int
	seed           uint64
	dpRank, dpSize int
	epoch, step    uint64
	fp             uint64
	dropped        int

	// per-epoch layout
	layoutEpoch uint64
	order       []int   // document order of the epoch
	starts      []int64 // starts[i] = first stream position of order[i]; starts[len] = total
	full        int     // full steps
	tailSteps   int     // 0, 1 or 2 steps after the full ones
	tailStart   int64
	toks        []int32 // scratch: one document's piece
}

// NewPackSampler builds the packing sampler; documents with fewer than two
// tokens are dropped (counted in Dropped).
func NewPackSampler(docs []Document, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (*PackSampler, error) {
	return newPackSampler(memDocs(docs), seqLen, batchSize, seed, dpRank, dpSize)
}

func newPackSampler(src docSource, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (*PackSampler, error) {
	if seqLen <= 0 || batchSize <= 0 || seqLen*batchSize < 2 {
		return nil, fmt.Errorf("pack sampler: seq_len=%d batch_size=%d, want positive with seq_len×batch_size >= 2", seqLen, batchSize)
	}
	if dpSize <= 0 || dpRank < 0 || dpRank >= dpSize {
		return nil, fmt.Errorf("pack sampler: dp rank %d of size %d, want 0 <= rank < size", dpRank, dpSize)
	}
	s := &PackSampler{src: src, seqLen: seqLen, rows: batchSize, seed: seed, dpRank: dpRank, dpSize: dpSize}
	var total int64
	// the fingerprint is mix(seqLen, batchSize, kept document lengths...),
	// folded in one word at a time so no list of the lengths is built
	h := mix()
	fold := func(w uint64) { r := rng{s: h ^ w}; h = r.next() }
	fold(uint64(seqLen))
	fold(uint64(batchSize))
	for i := 0; i < src.numDocs(); i++ {
		n := src.docLen(i)
		if n < 2 {
			s.dropped++
			continue
		}
		s.docs = append(s.docs, i)
		total += int64(n - 1)
		fold(uint64(n))
	}
	if total < int64(dpSize) {
		return nil, fmt.Errorf("pack sampler: %d positions in %d documents, fewer than dp size %d", total, src.numDocs(), dpSize)
	}
	s.fp = h
	s.layout(0)
	return s, nil
}

// Dropped is the number of documents too short to predict anything.
func (s *PackSampler) Dropped() int { return s.dropped }

// StepsPerEpoch is the number of steps of every epoch.
func (s *PackSampler) StepsPerEpoch() int { return s.full + s.tailSteps }

func (s *PackSampler) layout(epoch uint64) {
	if s.order != nil && s.layoutEpoch == epoch {
		return
	}
	s.layoutEpoch = epoch
	s.order = make([]int, len(s.docs))
	for i := range s.order {
		s.order[i] = i
	}
	r := rng{s: mix(s.seed, purposePackShuffle, epoch)}
	r.shuffle(s.order)
	s.starts = make([]int64, len(s.order)+1)
	for i, d := range s.order {
		s.starts[i+1] = s.starts[i] + int64(s.src.docLen(s.docs[d])-1)
	}
	total := s.starts[len(s.order)]
	per := int64(s.dpSize * s.rows * s.seqLen)
	s.full = int(total / per)
	rem := total % per
	switch {
	case rem == 0:
		s.tailSteps = 0
	case rem >= int64(s.dpSize) || s.full == 0:
		s.tailSteps = 1
	default:
		s.full--
		s.tailSteps = 2
	}
	s.tailStart = int64(s.full) * per
}

// span returns the stream range [a, b) of rank r at step st and the row width.
func (s *PackSampler) span(st, r int) (a, b int64, width int) {
	if st < s.full {
		per := int64(s.rows * s.seqLen)
		a = int64(st*s.dpSize+r) * per
		return a, a + per, s.seqLen
	}
	q := s.starts[len(s.order)] - s.tailStart
	shares := int64(s.tailSteps * s.dpSize)
	i := int64((st-s.full)*s.dpSize + r)
	a = s.tailStart + i*q/shares
	b = s.tailStart + (i+1)*q/shares
	p := int(b - a)
	nrows := (p + s.seqLen - 1) / s.seqLen
	return a, b, (p + nrows - 1) / nrows
}

// Next returns this rank's batch of the current step and advances.
func (s *PackSampler) Next() (Batch, error) {
	s.layout(s.epoch)
	a, b, w := s.span(int(s.step), s.dpRank)
	out := s.fill(a, b, w)
	// Roll over eagerly so that the end of an epoch has one State, (e+1, 0).
	if s.step++; s.step == uint64(s.StepsPerEpoch()) {
		s.epoch++
		s.step = 0
	}
	return out, nil
}

// fill cuts stream positions [a, b) into rows of w positions.
func (s *PackSampler) fill(a, b int64, w int) Batch {
	nrows := int((b - a + int64(w) - 1) / int64(w))
	out := newBatch(nrows, w, true)
	// i: index into order of the document holding position a
	i := sort.Search(len(s.order), func(k int) bool { return s.starts[k+1] > a })
	for r := 0; r < nrows; r++ {
		ra := a + int64(r*w)
		rb := min(ra+int64(w), b)
		seg := int32(0)
		for x := ra; x < rb; {
			for s.starts[i+1] <= x {
				i++
			}
			k := int(x - s.starts[i])
			end := min(rb, s.starts[i+1])
			// positions k..k+cnt-1 of the document read tokens k..k+cnt
			s.toks = s.src.appendTokens(s.toks[:0], s.docs[s.order[i]], k, k+int(end-x)+1)
			toks := s.toks
			for p := 0; x < end; p, x = p+1, x+1 {
				j := r*w + int(x-ra)
				out.Tokens[j] = toks[p]
				out.Targets[j] = toks[p+1]
				out.Pos[j] = int32(p)
				out.Seg[j] = seg
			}
			seg++
		}
	}
	return out
}

// State returns (epoch, step) with the seed and a fingerprint of the data.
func (s *PackSampler) State() State {
	return State{Kind: ModePack, Seed: s.seed, Epoch: s.epoch, Step: s.step, DPSize: s.dpSize, Fingerprint: s.fp}
}

// Restore continues at the state's position; like BucketSampler it accepts
// another DP size only at an epoch boundary.
func (s *PackSampler) Restore(st State) error {
	if err := checkRestore(st, ModePack, s.seed, s.fp, s.dpSize); err != nil {
		return fmt.Errorf("pack sampler: %w", err)
	}
	s.layout(st.Epoch)
	if st.Step >= uint64(s.StepsPerEpoch()) {
		return fmt.Errorf("pack sampler: state step %d beyond the %d steps of an epoch", st.Step, s.StepsPerEpoch())
	}
	s.epoch, s.step = st.Epoch, st.Step
	return nil
}
