// Package sampling turns text into training batches: the embedded default
// corpus, a byte tokenizer, readers for a user's data, and the samplers that
// cut data into batches for each data-parallel rank.
//
// Three sampling modes share the Sampler interface and the Batch layout:
//
//   - window (NewWindowSampler): random fixed-length windows of the
//     concatenated documents; the serial trainer's default.
//   - bucket (NewBucketSampler): whole documents as variable-length examples,
//     grouped into length buckets at equal total tokens and batched under a
//     token budget that counts padding (count × longest, optionally with an
//     attention term len²/q). All DP ranks draw each step from the same
//     bucket and take the same number of steps per epoch.
//   - pack (NewPackSampler): documents laid end to end in full rows with
//     per-document segment ids and positions, so nothing is padded.
//
// Every random choice is derived from (seed, purpose, epoch, position) rather
// than from a long-lived generator, so a sampler's State is a few integers
// and Restore continues exactly where the State was taken without replaying
// batches. Open builds everything a job's [data] section describes.
//
// A prepared dataset (data.path naming a directory made by `coordinator
// data prepare`, see IsPrepared) is read through memory maps by the same
// samplers (docs/dataset-format.md#training-from-a-prepared-dataset).
//
// The package imports nothing of the project but its own tokshard (a leaf,
// see docs/architecture.md#import-graph) and must not communicate: data-parallel
// ranks agree on their batches by computing the same plan from the same
// seed, never by exchanging messages.
package sampling
