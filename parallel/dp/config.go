// Package dp is data parallelism: the flat gradient buffer reduced over the
// data-parallel group in buckets that start while the backward still runs,
// and ZeRO-1 (optimizer state sharded over the group: reduce-scatter the
// gradient, update the local shard, all-gather the parameters).
//
// Loss semantics: the reduced gradient is that of the serial trainer on the
// concatenation of every rank's batch. The model makes each rank's gradient
// its share of the global-batch gradient before the reduction (it divides
// its loss by the global target count and computes the auxiliary and z-loss
// from global routing statistics, exchanged through model.Comms), so the
// reducer only sums the buckets (collective.Sum). It must not scale or
// otherwise change gradients, and knows the model only through its layout
// table (entry boundaries, expert flags). See
// docs/architecture.md#one-training-step.
package dp

import (
	"fmt"
	"math"
)

// Config is the [dp] section of a job (train.JobConfig.DP; keys bucket_mb,
// zero1, overlap), starting from DefaultConfig.
type Config struct {
	// BucketMB is the size of a gradient bucket in MB (10⁶ bytes of float32
	// gradients). Buckets end on parameter-tensor boundaries, so one holds at
	// least one whole tensor and otherwise at most this much; without ZeRO-1
	// they also end where the backward reports gradients final, once they
	// hold 1 MiB (see Reducer). Default 25 (6.25 M floats): large enough
	// that per-message latency is noise, small enough that the first bucket
	// starts early in the backward.
	BucketMB float64 `toml:"bucket_mb"`
	// Zero1 shards the optimizer state over the data-parallel group:
	// gradients are reduce-scattered, each rank updates its shard of every
	// bucket and the parameters are all-gathered. Default false.
	Zero1 bool `toml:"zero1"`
	// Overlap starts each bucket's reduction from the backward hook as soon
	// as its gradients are final; when false every bucket starts after the
	// backward (a baseline for benchmarks). Default true.
	Overlap bool `toml:"overlap"`
}

// DefaultConfig is 25 MB buckets, overlap on, ZeRO-1 off.
func DefaultConfig() Config { return Config{BucketMB: 25, Overlap: true} }

// Validate checks the bucket size.
func (c Config) Validate() error {
	if !(c.BucketMB > 0) || math.IsInf(c.BucketMB, 0) {
		return fmt.Errorf("dp: bucket_mb = %v: want a positive size in MB (default 25)", c.BucketMB)
	}
	return nil
}

// BucketFloats is the bucket size in float32 elements (at least 1).
func (c Config) BucketFloats() int {
	return max(1, int(c.BucketMB*1e6/4))
}
