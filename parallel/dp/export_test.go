package dp

// CutAtLayout makes r use the fixed PlanBuckets plan for every step, as
// ZeRO-1 does, instead of cutting buckets at the backward's ranges: the
// baseline BenchmarkOverlap compares the cut against.
func CutAtLayout(r *Reducer) { r.dynamic = false }

// RandomInput is the internal tests' batch of random tokens and targets.
var RandomInput = randomInput
