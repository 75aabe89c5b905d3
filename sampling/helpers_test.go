package sampling

import "slices"

// batchEqual compares batches field by field (reflect.DeepEqual is slow on
// the many batches the resume tests compare).
func batchEqual(a, b Batch) bool {
	return a.B == b.B && a.T == b.T && slices.Equal(a.Tokens, b.Tokens) && slices.Equal(a.Targets, b.Targets) &&
		slices.Equal(a.Pos, b.Pos) && slices.Equal(a.Seg, b.Seg) && (a.Seg == nil) == (b.Seg == nil)
}
