// Package datastats writes the report of `coordinator data-stats`: a data
// set's length histogram, its length buckets and, at one token budget per
// batch, how naive, bucketed and packed batching compare (padding, examples
// and tokens per batch, batches per epoch), as text and optionally as a PNG.
//
// It must not hold the sampling algorithms (it calls package sampling for
// loading, bucketing, planning and the statistics), train or communicate,
// define flags, or write anything but its writer and the plot file it is
// given.
package datastats
