package sampling

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type bucketCase struct {
	name        string
	ds          *Dataset
	bk          *Buckets
	budget      int
	q           float64
	maxExamples int
}

func bucketCases(t *testing.T) []bucketCase {
	ds, err := NewDataset("t", testDocs(400, 3), 512, TooLongSplit)
	if err != nil {
		t.Fatal(err)
	}
	var pairs []Pair
	r := rng{s: 9}
	for i := 0; i < 300; i++ {
		in := make([]int32, 1+r.intn(200))
		out := make([]int32, 1+r.intn(100))
		for j := range in {
			in[j] = int32(r.intn(256))
		}
		for j := range out {
			out[j] = int32(r.intn(256))
		}
		pairs = append(pairs, Pair{Input: in, Output: out})
	}
	ds2, err := NewDataset2D("pairs", pairs, 256)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "bb.txt")
	writeFile(t, file, "# upper batch\n64 9\n128 5\n\n300 3 # tail\n512 2\n")
	bf, err := ReadBucketFile(file, false, 512)
	if err != nil {
		t.Fatal(err)
	}
	return []bucketCase{
		{"linear", ds, EstimateBuckets(ds, 8, 1, 0, 1), 2048, 0, 0},
		{"quadratic+cap", ds, EstimateBuckets(ds, 6, 1, 100, 1), 3000, 256, 7},
		{"bucketfile", ds, bf, 2048, 0, 0},
		{"twoD", ds2, EstimateBuckets(ds2, 4, 3, 0, 1), 1024, 0, 0},
	}
}

// TestBucketPlanProperties: for DP sizes 1–8 every example appears exactly
// once per epoch across ranks, no batch exceeds the budget or the caps, every
// step's batches come from one bucket (or carried shorter examples), and the
// same seed gives the same plan.
// With a small planner window the same holds in shuffle windows, and the
// held plan never covers more than one window's examples.
func TestBucketPlanProperties(t *testing.T) {
	for _, tc := range bucketCases(t) {
		for _, window := range []int{DefaultPlanWindow, 100} {
			bucketPlanProperties(t, tc, window)
		}
	}
}

func bucketPlanProperties(t *testing.T, tc bucketCase, window int) {
	t.Helper()
	{
		p, err := NewPlanner(tc.ds, tc.bk, tc.budget, tc.q, tc.maxExamples)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		p.window = window
		tc.name = fmt.Sprintf("%s window %d", tc.name, window)
		for dp := 1; dp <= 8; dp++ {
			for epoch := uint64(0); epoch < 2; epoch++ {
				plan, err := p.Plan(5, epoch, dp)
				if err != nil {
					t.Fatalf("%s dp %d: %v", tc.name, dp, err)
				}
				seen := make([]int, tc.ds.NumExamples())
				for s, step := range stepsOf(plan) {
					if len(step) != dp {
						t.Fatalf("%s dp %d: step %d has %d batches", tc.name, dp, s, len(step))
					}
					for _, ids := range step {
						if len(ids) == 0 {
							t.Fatalf("%s dp %d: empty batch", tc.name, dp)
						}
						if c := p.Cost(ids); c > float64(tc.budget) {
							t.Fatalf("%s dp %d: batch cost %.0f over budget %d", tc.name, dp, c, tc.budget)
						}
						for _, id := range ids {
							seen[id]++
							if b := tc.bk.Index(tc.ds.Example(id)); b > plan.StepBucket(s) {
								t.Fatalf("%s dp %d: example of bucket %d in a step of bucket %d", tc.name, dp, b, plan.StepBucket(s))
							}
						}
						cap := tc.maxExamples
						if tc.bk.MaxCount != nil {
							if m := tc.bk.MaxCount[plan.StepBucket(s)]; cap == 0 || m < cap {
								cap = m
							}
						}
						if cap > 0 && len(ids) > cap {
							t.Fatalf("%s dp %d: %d examples over cap %d", tc.name, dp, len(ids), cap)
						}
					}
				}
				for id, n := range seen {
					if n != 1 {
						t.Fatalf("%s dp %d epoch %d: example %d seen %d times", tc.name, dp, epoch, id, n)
					}
				}
				if n := tc.ds.NumExamples(); n > window && plan.NumWindows() < 2 {
					t.Fatalf("%s dp %d: %d examples planned in %d window(s)", tc.name, dp, n, plan.NumWindows())
				}
				held := 0
				for _, b := range plan.cur.buckets {
					held += len(b.seg)
				}
				if plan.NumWindows() > 1 && held > window+2*planBlock {
					t.Fatalf("%s dp %d: the held window plans %d examples, window %d", tc.name, dp, held, window)
				}
				again, _ := p.Plan(5, epoch, dp)
				if !reflect.DeepEqual(stepsOf(plan), stepsOf(again)) {
					t.Fatalf("%s dp %d: same seed, different plan", tc.name, dp)
				}
				other, _ := p.Plan(6, epoch, dp)
				if reflect.DeepEqual(stepsOf(plan), stepsOf(other)) {
					t.Fatalf("%s dp %d: seeds 5 and 6 gave the same plan", tc.name, dp)
				}
			}
		}
	}
}

// TestBucketSamplerResume: all ranks step in lockstep with equal step counts
// per epoch, batches match the plan, and restoring the state taken at any
// step (through JSON) yields exactly the batches of the uninterrupted run.
func TestBucketSamplerResume(t *testing.T) {
	for _, window := range []int{DefaultPlanWindow, 150} {
		bucketSamplerResume(t, window)
	}
}

func bucketSamplerResume(t *testing.T, window int) {
	for _, tc := range bucketCases(t)[:2] {
		if tc.ds.TwoD {
			continue
		}
		for _, dp := range []int{1, 3, 8} {
			samplers := make([]*BucketSampler, dp)
			for r := range samplers {
				s, err := newBucketSampler(tc.ds, tc.bk, tc.budget, tc.q, tc.maxExamples, 11, r, dp, window)
				if err != nil {
					t.Fatal(err)
				}
				samplers[r] = s
			}
			plan0, _ := samplers[0].Plan()
			plan1, _ := samplers[0].p.Plan(11, 1, dp)
			total := plan0.NumSteps() + plan1.NumSteps() + 2
			var states []State
			var runs [][]Batch // runs[rank][step]
			runs = make([][]Batch, dp)
			for step := 0; step < total; step++ {
				states = append(states, samplers[0].State())
				for r, s := range samplers {
					if s.State() != states[step] {
						t.Fatalf("%s dp %d: rank %d state %v differs from rank 0 %v", tc.name, dp, r, s.State(), states[step])
					}
					b, err := s.Next()
					if err != nil {
						t.Fatal(err)
					}
					if err := b.Validate(Vocab); err != nil {
						t.Fatal(err)
					}
					if b.B*b.T > tc.budget {
						t.Fatalf("batch %dx%d over budget %d", b.B, b.T, tc.budget)
					}
					runs[r] = append(runs[r], b)
				}
			}
			if states[plan0.NumSteps()].Epoch != 1 || states[plan0.NumSteps()].Step != 0 {
				t.Fatalf("%s dp %d: state after epoch 0 is %v", tc.name, dp, states[plan0.NumSteps()])
			}
			want, _ := tc.ds.Batch(plan0.Batch(1, dp-1))
			if !batchEqual(runs[dp-1][1], want) {
				t.Fatal("batch differs from the plan")
			}
			rank := dp - 1
			for k, st := range states {
				js, _ := json.Marshal(st)
				var back State
				if err := json.Unmarshal(js, &back); err != nil {
					t.Fatal(err)
				}
				s, _ := newBucketSampler(tc.ds, tc.bk, tc.budget, tc.q, tc.maxExamples, 11, rank, dp, window)
				if err := s.Restore(back); err != nil {
					t.Fatalf("restore at %d: %v", k, err)
				}
				for j := k; j < total; j++ {
					b, _ := s.Next()
					if !batchEqual(b, runs[rank][j]) {
						t.Fatalf("%s dp %d: resumed at step %d, batch %d differs", tc.name, dp, k, j)
					}
				}
			}
		}
	}
}

func TestBucketSamplerRestoreRules(t *testing.T) {
	tc := bucketCases(t)[0]
	a, _ := NewBucketSampler(tc.ds, tc.bk, tc.budget, 0, 0, 1, 0, 4)
	for i := 0; i < 3; i++ {
		a.Next()
	}
	mid := a.State()
	b, _ := NewBucketSampler(tc.ds, tc.bk, tc.budget, 0, 0, 1, 1, 2)
	err := b.Restore(mid)
	if err == nil || !strings.Contains(err.Error(), "dp size 4") || !strings.Contains(err.Error(), "epoch boundary") {
		t.Fatalf("mid-epoch restore under another DP size: %v", err)
	}
	boundary := State{Kind: ModeBucket, Seed: 1, Epoch: 2, Step: 0, DPSize: 4, Fingerprint: mid.Fingerprint}
	if err := b.Restore(boundary); err != nil {
		t.Fatalf("epoch-boundary restore under another DP size: %v", err)
	}
	if st := b.State(); st.Epoch != 2 || st.DPSize != 2 {
		t.Fatalf("state after restore %v", st)
	}
	other, _ := NewBucketSampler(tc.ds, tc.bk, tc.budget+1, 0, 0, 1, 0, 4)
	if err := other.Restore(mid); err == nil || !strings.Contains(err.Error(), "other data") {
		t.Fatalf("restore under another budget: %v", err)
	}
	if err := a.Restore(State{Kind: ModeBucket, Seed: 1, Step: 1 << 40, DPSize: 4, Fingerprint: mid.Fingerprint}); err == nil {
		t.Fatal("restored a step beyond the epoch")
	}
	if a.State() != mid {
		t.Fatal("failed restore changed the state")
	}
}

func TestTwoLengthBatch(t *testing.T) {
	ds, err := NewDataset2D("p", []Pair{
		{Input: []int32{1, 2, 3}, Output: []int32{4, 5}},
		{Input: []int32{6}, Output: []int32{7, 8, 9, 10, 11, 12}},
		{InLen: 3, OutLen: 0},
	}, 5)
	if err != nil {
		t.Fatal(err)
	}
	if ds.Dropped != 1 || ds.Truncated != 1 || len(ds.Examples) != 2 {
		t.Fatalf("dropped %d truncated %d examples %d", ds.Dropped, ds.Truncated, len(ds.Examples))
	}
	b, err := ds.Batch([]int{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	// row 0: tokens 1 2 3 4 (+pad), predicted: 3->4, 4->5 only
	want := []int32{-1, -1, 4, 5, -1, 7, 8, 9, 10, 11}
	if b.T != 5 || !reflect.DeepEqual(b.Targets, want) {
		t.Fatalf("T=%d targets %v, want %v", b.T, b.Targets, want)
	}
	lo, _ := NewDataset2D("l", []Pair{{InLen: 3, OutLen: 4}}, 16)
	if _, err := lo.Batch([]int{0}); err == nil || !strings.Contains(err.Error(), "lengths only") {
		t.Fatalf("length-only batch: %v", err)
	}
}

func TestReadPairsAndBucketFileErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.jsonl"), "{\"q\":\"ab\",\"a\":\"c\"}\n{\"q\":\"x\"}\n")
	writeFile(t, filepath.Join(dir, "l.jsonl"), "{\"i\":3,\"o\":4}\n{\"i\":2.5,\"o\":1}\n")
	if _, err := ReadPairs(filepath.Join(dir, "p.jsonl"), "q", "a", false); err == nil || !strings.Contains(err.Error(), "p.jsonl:2: missing field \"a\"") {
		t.Fatalf("pairs: %v", err)
	}
	if _, err := ReadPairs(filepath.Join(dir, "l.jsonl"), "i", "o", true); err == nil || !strings.Contains(err.Error(), "l.jsonl:2: field \"i\"") {
		t.Fatalf("length pairs: %v", err)
	}
	for text, want := range map[string]string{
		"10 2\n5 3\n":   ":2: bound 5 not above",
		"10 x\n":        ":1: field 2",
		"10 2 3\n":      ":1: 3 fields, want 2",
		"10 2\n100 1\n": "below max_len 512",
		"":              "no buckets",
	} {
		f := filepath.Join(dir, "b.txt")
		writeFile(t, f, text)
		if _, err := ReadBucketFile(f, false, 512); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bucket file %q: %v, want %q", text, err, want)
		}
	}
	f := filepath.Join(dir, "b2.txt")
	writeFile(t, f, "8 4 10\n8 16 5\n16 16 3\n")
	b, err := ReadBucketFile(f, true, 16)
	if err != nil {
		t.Fatal(err)
	}
	if b.N() != 3 || b.Index(Example{In: 8, Out: 5}) != 1 || b.Index(Example{In: 9, Out: 1}) != 2 {
		t.Fatalf("2-D bucket file: %+v", b)
	}
}

// FuzzBucketFile: the bucket file parser never panics, and what it accepts
// has strictly ascending bounds reaching max_len and one positive batch size
// per bucket.
func FuzzBucketFile(f *testing.F) {
	f.Add([]byte("64 9\n128 5\n512 2\n"), false)
	f.Add([]byte("8 4 10\n8 16 5\n16 16 3\n"), true)
	f.Add([]byte("# c\n\n512 1 # x\n"), false)
	f.Add([]byte("10 2\n5 3\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, twoD bool) {
		const maxLen = 16
		b, err := parseBucketFile(strings.NewReader(string(data)), "fz", twoD, maxLen)
		if err != nil {
			if !strings.Contains(err.Error(), "fz") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(b.MaxCount) != b.N() || b.N() == 0 {
			t.Fatalf("%d batch sizes for %d buckets", len(b.MaxCount), b.N())
		}
		for i, u := range b.Upper {
			if i > 0 && u <= b.Upper[i-1] {
				t.Fatalf("bounds not ascending: %v", b.Upper)
			}
		}
		if b.Upper[len(b.Upper)-1] < maxLen {
			t.Fatalf("last bound %d below max_len", b.Upper[len(b.Upper)-1])
		}
		for _, c := range b.MaxCount {
			if c <= 0 {
				t.Fatalf("batch size %d", c)
			}
		}
		for l := 1; l <= maxLen; l++ {
			if i := b.Index(Example{Len: l, In: l, Out: l}); i < 0 || i >= b.N() {
				t.Fatalf("length %d in bucket %d of %d", l, i, b.N())
			}
		}
	})
}

func lenDataset(lens ...int) *Dataset {
	ds := &Dataset{Name: "lens", MaxLen: 0}
	for i, l := range lens {
		ds.Examples = append(ds.Examples, Example{Doc: i, Tokens: make([]int32, l+1), Len: l})
		ds.MaxLen = max(ds.MaxLen, l)
	}
	return ds
}

// TestPlanSmallData: when the longest bucket alone cannot give every rank a
// batch, the planner takes examples back from earlier steps; when the whole
// data set cannot, it says so.
func TestPlanSmallData(t *testing.T) {
	lens := []int{100, 100, 100}
	for i := 0; i < 81; i++ { // 8 full batches of 10, one of 1: one step, 1 carried
		lens = append(lens, 10)
	}
	ds := lenDataset(lens...)
	bk := &Buckets{Upper: []int{10, 100}}
	p, err := NewPlanner(ds, bk, 100, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := p.Plan(1, 0, 8)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, step := range stepsOf(plan) {
		for _, ids := range step {
			n += len(ids)
			if p.Cost(ids) > 100 {
				t.Fatalf("batch cost %.0f", p.Cost(ids))
			}
		}
	}
	if n != len(lens) {
		t.Fatalf("%d of %d examples planned", n, len(lens))
	}
	ds = lenDataset(100, 100, 100, 100, 100)
	if p, err = NewPlanner(ds, bk, 100, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Plan(1, 0, 8); err == nil || !strings.Contains(err.Error(), "8 data-parallel ranks") {
		t.Fatalf("5 single-example batches over 8 ranks: %v", err)
	}
	if _, err := NewPlanner(ds, bk, 99, 0, 0); err == nil || !strings.Contains(err.Error(), "budget 99") {
		t.Fatalf("budget below one example: %v", err)
	}
}

// A state taken under one shuffle window size is refused under another
// when the data set is planned in windows (the batches differ), and
// accepted where both plan it whole.
func TestBucketSamplerWindowInFingerprint(t *testing.T) {
	tc := bucketCases(t)[0]
	mk := func(window int) *BucketSampler {
		s, err := newBucketSampler(tc.ds, tc.bk, tc.budget, tc.q, tc.maxExamples, 3, 0, 1, window)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	n := tc.ds.NumExamples()
	a, b := mk(100), mk(200)
	if _, err := a.Next(); err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(a.State()); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Fatalf("restore across window sizes 100 and 200 of %d examples: want a fingerprint error, got %v", n, err)
	}
	whole := mk(n)
	if _, err := whole.Next(); err != nil {
		t.Fatal(err)
	}
	if err := mk(DefaultPlanWindow).Restore(whole.State()); err != nil {
		t.Fatalf("both plan %d examples whole: %v", n, err)
	}
}
