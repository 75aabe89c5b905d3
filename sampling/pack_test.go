package sampling

import (
	"reflect"
	"strings"
	"testing"
)

type pair struct{ tok, tgt int32 }

// TestPackSamplerProperties: for DP sizes 1–8 and several row shapes, every
// next-token prediction of every document appears exactly once per epoch, in
// stream order when read step by step and rank by rank; segments restart
// positions at 0, carry one Seg id, and never exceed a row; all ranks take
// the same number of steps; batches never exceed BatchSize×SeqLen.
func TestPackSamplerProperties(t *testing.T) {
	docs := testDocs(60, 4)
	docs = append(docs, Document{Name: "one", Tokens: []int32{5}}) // dropped
	for _, shape := range [][2]int{{64, 4}, {37, 3}, {1, 2}, {512, 8}} {
		seqLen, rows := shape[0], shape[1]
		for dp := 1; dp <= 8; dp++ {
			ss := make([]*PackSampler, dp)
			for r := range ss {
				s, err := NewPackSampler(docs, seqLen, rows, 3, r, dp)
				if err != nil {
					t.Fatal(err)
				}
				ss[r] = s
			}
			if ss[0].Dropped() != 1 {
				t.Fatalf("dropped %d", ss[0].Dropped())
			}
			for epoch := uint64(0); epoch < 2; epoch++ {
				ss[0].layout(epoch)
				var want []pair
				for _, i := range ss[0].order {
					d := ss[0].src.(memDocs)[ss[0].docs[i]].Tokens
					for k := 0; k+1 < len(d); k++ {
						want = append(want, pair{d[k], d[k+1]})
					}
				}
				var got []pair
				steps := ss[0].StepsPerEpoch()
				for step := 0; step < steps; step++ {
					for r, s := range ss {
						if st := s.State(); st.Epoch != epoch || st.Step != uint64(step) {
							t.Fatalf("rank %d state %v at epoch %d step %d", r, st, epoch, step)
						}
						b, err := s.Next()
						if err != nil {
							t.Fatal(err)
						}
						if err := b.Validate(Vocab); err != nil {
							t.Fatal(err)
						}
						if b.B > rows || b.T > seqLen {
							t.Fatalf("batch %dx%d exceeds %dx%d", b.B, b.T, rows, seqLen)
						}
						if b.RealTokens() == 0 {
							t.Fatalf("seq %d rows %d dp %d: rank %d got an empty batch", seqLen, rows, dp, r)
						}
						for row := 0; row < b.B; row++ {
							prevSeg, pos := int32(-2), int32(0)
							for j := row * b.T; j < (row+1)*b.T; j++ {
								if b.Targets[j] < 0 {
									if b.Seg[j] != -1 {
										t.Fatal("padding with a segment id")
									}
									continue
								}
								if b.Seg[j] != prevSeg {
									if b.Seg[j] != prevSeg+1 && !(prevSeg == -2 && b.Seg[j] == 0) {
										t.Fatalf("segment ids %d then %d", prevSeg, b.Seg[j])
									}
									prevSeg, pos = b.Seg[j], 0
								}
								if b.Pos[j] != pos {
									t.Fatalf("position %d, want %d", b.Pos[j], pos)
								}
								pos++
								got = append(got, pair{b.Tokens[j], b.Targets[j]})
							}
						}
					}
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("seq %d rows %d dp %d epoch %d: packed stream (%d predictions) differs from the documents (%d)", seqLen, rows, dp, epoch, len(got), len(want))
				}
				if st := ss[0].State(); st.Epoch != epoch+1 || st.Step != 0 {
					t.Fatalf("after epoch %d state %v", epoch, st)
				}
			}
		}
	}
}

func TestPackSamplerResume(t *testing.T) {
	docs := testDocs(30, 5)
	for _, dp := range []int{1, 2, 5} {
		s, _ := NewPackSampler(docs, 50, 2, 9, dp-1, dp)
		n := 2*s.StepsPerEpoch() + 1
		var states []State
		var run []Batch
		for i := 0; i < n; i++ {
			states = append(states, s.State())
			b, _ := s.Next()
			run = append(run, b)
		}
		for k, st := range states {
			r, _ := NewPackSampler(docs, 50, 2, 9, dp-1, dp)
			if err := r.Restore(st); err != nil {
				t.Fatal(err)
			}
			for j := k; j < n; j++ {
				b, _ := r.Next()
				if !batchEqual(b, run[j]) {
					t.Fatalf("dp %d resumed at %d: batch %d differs", dp, k, j)
				}
			}
		}
		other, _ := NewPackSampler(docs, 50, 2, 9, 0, dp+1)
		if err := other.Restore(states[1]); err == nil || !strings.Contains(err.Error(), "mid-epoch") {
			t.Fatalf("mid-epoch restore under another DP size: %v", err)
		}
		if err := other.Restore(states[s.StepsPerEpoch()]); err != nil {
			t.Fatalf("epoch-boundary restore under another DP size: %v", err)
		}
	}
	if _, err := NewPackSampler([]Document{{Tokens: []int32{1, 2, 3}}}, 4, 1, 1, 0, 3); err == nil {
		t.Fatal("2 positions over 3 ranks accepted")
	}
}
