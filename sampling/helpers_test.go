package sampling

import (
	"encoding/json"
	"slices"
	"testing"
)

// batchEqual compares batches field by field (reflect.DeepEqual is slow on
// the many batches the resume tests compare).
func batchEqual(a, b Batch) bool {
	return a.B == b.B && a.T == b.T && slices.Equal(a.Tokens, b.Tokens) && slices.Equal(a.Targets, b.Targets) &&
		slices.Equal(a.Pos, b.Pos) && slices.Equal(a.Seg, b.Seg) && (a.Seg == nil) == (b.Seg == nil)
}

// newSampler is d.Sampler(rank, world), failing the test on an error.
func newSampler(tb testing.TB, d *Data, rank, world int) Sampler {
	tb.Helper()
	s, err := d.Sampler(rank, world)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// checkDrawAndResume draws steps batches from s, each valid for vocab and
// passed to check; it saves s's state before step at, sends it through
// JSON and restores it into resumed, which must then give the batches of
// steps at.. exactly. It returns the state as restored.
func checkDrawAndResume(t *testing.T, s, resumed Sampler, vocab, steps, at int, check func(step int, b Batch)) State {
	t.Helper()
	var saved State
	var want []Batch
	for step := 0; step < steps; step++ {
		if step == at {
			saved = s.State()
		}
		b, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Validate(vocab); err != nil {
			t.Fatal(err)
		}
		check(step, b)
		if step >= at {
			want = append(want, b)
		}
	}
	js, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if err := resumed.Restore(back); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		got, err := resumed.Next()
		if err != nil || !batchEqual(got, w) {
			t.Fatalf("resumed batch %d differs (%v)", i, err)
		}
	}
	return back
}
