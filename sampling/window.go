package sampling

import (
	"errors"
	"fmt"
)

// Sampler yields batches for one data-parallel rank. Every rank of the same
// seed gets a different, deterministic stream, all ranks the same number of
// steps; ranks sharing a dpRank (the TP and SP ranks of one replica) get
// identical batches. A Sampler is not safe for concurrent use.
type Sampler interface {
	Next() (Batch, error)
	State() State // small, serialisable position: resumes in O(1)
	Restore(State) error
}

// WindowSampler draws random windows of SeqLen+1 tokens from the concatenated
// documents: row tokens are the first SeqLen, targets the next token of each,
// Pos 0..T-1. The window of (step, row) depends only on (seed, step, dpRank,
// row), so the stream never ends and State is just the step count.
type WindowSampler struct {
	stepStream
	stream        stream
	seqLen, batch int
	win           []int32 // scratch: one window
}

// NewWindowSampler builds the random-window sampler of the serial trainer and
// of data-parallel training (dpRank in [0, dpSize)).
func NewWindowSampler(docs []Document, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (Sampler, error) {
	return newWindowSampler(memDocs(docs), seqLen, batchSize, seed, dpRank, dpSize)
}

func newWindowSampler(src docSource, seqLen, batchSize int, seed uint64, dpRank, dpSize int) (*WindowSampler, error) {
	if seqLen <= 0 || batchSize <= 0 {
		return nil, fmt.Errorf("window sampler: seq_len=%d batch_size=%d, both must be positive", seqLen, batchSize)
	}
	pos, err := newStepStream(ModeWindow, seed, dpRank, dpSize)
	if err != nil {
		return nil, err
	}
	st := newStream(src)
	if st.total() < int64(seqLen+1) {
		return nil, fmt.Errorf("window sampler: %d tokens in %d documents, need at least seq_len+1 = %d", st.total(), src.numDocs(), seqLen+1)
	}
	return &WindowSampler{stepStream: pos, stream: st, seqLen: seqLen, batch: batchSize}, nil
}

func concat(docs []Document) []int32 {
	stream := make([]int32, 0, TotalTokens(docs))
	for _, d := range docs {
		stream = append(stream, d.Tokens...)
	}
	return stream
}

// Next returns the batch of the current step and advances.
func (w *WindowSampler) Next() (Batch, error) {
	b := newBatch(w.batch, w.seqLen, false)
	span := w.stream.total() - int64(w.seqLen) // window starts in [0, span)
	for r := 0; r < w.batch; r++ {
		g := rng{s: mix(w.seed, purposeWindow, w.step, uint64(w.dpRank), uint64(r))}
		start := g.intn(int(span))
		w.win = w.stream.read(w.win[:0], int64(start), w.seqLen+1)
		fillWindow(b, r, w.win)
	}
	w.step++
	return b, nil
}

// stepStream is the position of a sampler whose batch of a step depends
// only on (seed, step, dp rank, row): the window and random samplers. Its
// State is the step count; the data-parallel size is recorded but a rank's
// stream does not depend on it, so a state restores under any DP size.
type stepStream struct {
	kind           string // ModeWindow or ModeRandom
	seed           uint64
	dpRank, dpSize int
	step           uint64
}

// newStepStream checks the data-parallel rank of a kind sampler.
func newStepStream(kind string, seed uint64, dpRank, dpSize int) (stepStream, error) {
	if dpSize <= 0 || dpRank < 0 || dpRank >= dpSize {
		return stepStream{}, fmt.Errorf("%s sampler: dp rank %d of size %d, want 0 <= rank < size", kind, dpRank, dpSize)
	}
	return stepStream{kind: kind, seed: seed, dpRank: dpRank, dpSize: dpSize}, nil
}

// State returns the position.
func (p *stepStream) State() State {
	return State{Kind: p.kind, Seed: p.seed, Step: p.step, DPSize: p.dpSize}
}

// Restore continues from s; it refuses a state of another kind or seed.
func (p *stepStream) Restore(s State) error {
	if s.Kind != p.kind {
		return fmt.Errorf("%s sampler: cannot restore a %q sampler state", p.kind, s.Kind)
	}
	if s.Seed != p.seed {
		return fmt.Errorf("%s sampler: state has seed %d, sampler %d", p.kind, s.Seed, p.seed)
	}
	p.step = s.Step
	return nil
}

func newBatch(b, t int, packed bool) Batch {
	out := Batch{B: b, T: t, Tokens: make([]int32, b*t), Targets: make([]int32, b*t), Pos: make([]int32, b*t)}
	if packed {
		out.Seg = make([]int32, b*t)
	}
	for i := range out.Targets {
		out.Targets[i] = -1
		out.Pos[i] = int32(i % t)
		if packed {
			out.Seg[i] = -1
		}
	}
	return out
}

// fillWindow writes tokens w[0:len(w)-1] with targets w[1:] into row r,
// starting at position 0; the rest of the row stays padding.
func fillWindow(b Batch, r int, w []int32) {
	row := r * b.T
	for j := 0; j+1 < len(w); j++ {
		b.Tokens[row+j] = w[j]
		b.Targets[row+j] = w[j+1]
	}
}

// FixedBatches returns count deterministic batches of random windows (for
// validation: the same seed gives the same batches). Windows wrap around the
// end of the concatenated documents, so any non-empty set of documents works;
// it returns nil when docs hold fewer than 2 tokens or a size is not positive.
func FixedBatches(docs []Document, seqLen, batchSize, count int, seed uint64) []Batch {
	out, err := FixedBatchesErr(docs, seqLen, batchSize, count, seed)
	if err != nil {
		return nil
	}
	return out
}

// FixedBatchesErr is FixedBatches with the reason for an empty result.
func FixedBatchesErr(docs []Document, seqLen, batchSize, count int, seed uint64) ([]Batch, error) {
	return fixedBatches(memDocs(docs), seqLen, batchSize, count, seed)
}

func fixedBatches(src docSource, seqLen, batchSize, count int, seed uint64) ([]Batch, error) {
	if seqLen <= 0 || batchSize <= 0 || count < 0 {
		return nil, fmt.Errorf("fixed batches: seq_len=%d batch_size=%d count=%d, want positive sizes", seqLen, batchSize, count)
	}
	st := newStream(src)
	if st.total() < 2 {
		return nil, errors.New("fixed batches: documents hold fewer than 2 tokens")
	}
	out := make([]Batch, count)
	var win []int32
	for i := range out {
		b := newBatch(batchSize, seqLen, false)
		for r := 0; r < batchSize; r++ {
			g := rng{s: mix(seed, purposeFixed, uint64(i), uint64(r))}
			start := g.intn(int(st.total()))
			win = st.read(win[:0], int64(start), seqLen+1)
			fillWindow(b, r, win)
		}
		out[i] = b
	}
	return out, nil
}
