// Package checkpoint stores training state as sharded, checksummed,
// compressed checkpoints that commit atomically and load under any layout.
// The on-disk format and the protocol: docs/checkpoint-format.md.
//
// It imports nothing of the project and must not know the model, the mesh
// or the optimizer: callers name tensors and the regions they hold (package
// train maps a rank's state to them). A checkpoint must become visible only
// through Store.Commit's rename.
//
// # Model
//
// A checkpoint holds named float32 tensors and opaque byte blobs. Every rank
// writes its own shard file with a ShardWriter (or, off the training step's
// critical path, an AsyncWriter from a Snapshot). For each tensor a shard
// stores one piece: the tensor's global shape plus a Region of it, either a
// box (per-dimension start/count: tensor- and expert-parallel splits) or a
// flat range of the row-major flattening (ZeRO-1 shards of a flat buffer).
// Readers ask for any Region and get it assembled from whichever pieces
// cover it, so a checkpoint written under one mesh loads under another.
//
// # Commit protocol
//
//  1. Every rank writes DIR/step-N.tmp/shard-RRRRR.mtck (Store.CreateShard);
//     Close fsyncs it and reports a ShardInfo (size, CRC, pieces).
//  2. Once all ranks reported success, one committer calls Store.Commit with
//     a Manifest of all ShardInfos, the mesh and the config: it re-checks
//     each shard's size and CRC, writes manifest.json (temp, fsync, rename,
//     fsync dir), renames step-N.tmp to step-N (the publication point),
//     fsyncs DIR, rewrites LATEST the same way, and prunes to Store.Keep.
//  3. Store.Cleanup (at coordinator start) removes *.tmp leftovers.
//
// In a multi-rank job (package cluster) every rank writes its shard with an
// AsyncWriter and reports the ShardInfo to the coordinator over the control
// plane (ReportShard); the coordinator's core collects one per rank of the
// plan and issues the commit, which the coordinator carries out as the
// single committer (manifest with the job config and mesh, LATEST, pruning
// to --checkpoint-keep), one step at a time in step order.
//
// A crash before the rename leaves only a .tmp directory, which readers
// ignore; after it, the new checkpoint is complete. Store.Open("latest")
// takes the newest committed directory that opens cleanly, reporting every
// newer one it skipped and why.
//
// # Write path
//
// A ShardWriter cuts entries into chunks that workers checksum and, when it
// pays, compress (float32 tensors as Huffman-coded byte planes, planes.go;
// blobs as zstd frames); the codec is recorded per chunk, so a reader needs
// no other hint. Compression is skipped for an entry whose sample saves less
// than minSaving or codes too slowly for the disk (probe.go), and for the
// rest of a shard once compression has kept the file writer waiting. The
// file writer writes through the page cache from a small bounce buffer,
// asking the kernel to start writeback every few MiB (writeback.go); with
// WriterOptions.DirectIO it writes with O_DIRECT where the file system takes
// it: aligned blocks, several in flight (direct.go).
//
// # Read path
//
// A read of raw chunks wanted whole uses O_DIRECT where the file system
// takes it, several chunks in flight, copying from bounce buffers
// (readSegsDirect). Other reads and Verify read the chunks they need in
// file order on one goroutine (the kernel reads ahead of a sequential
// stream; raw chunks go straight into the caller's buffer) and check,
// decode and copy them on others (reader.go, pipeChunks).
//
// # Integrity
//
// Each chunk (default 4 MiB raw) carries CRC-32C of its stored and of its
// raw bytes; each piece a CRC-32C over its chunks' raw CRCs; each file a
// checksum over its header, chunk CRCs and index (format.go), also recorded
// in the manifest.
// Errors name the shard file and the tensor or blob.
//
// # Tensor names
//
// The trainer names tensors by role and model layout entry (see
// model.Layout): ModelPrefix+"layers.0.w1" for a weight, MomentMPrefix and
// MomentVPrefix for AdamW's moments. Blobs are per rank: BlobSampler,
// BlobOptimizer, and the trainer's routing biases; BlobRNG is reserved and
// not written (the trainer holds no random stream). ExportSafetensors
// writes the ModelPrefix tensors with the prefix stripped, so
// model.safetensors names are the layout entry names ("tok_emb", "layers.0.qkv", "layers.0.w1" with shape
// [experts, hidden, d_model], ..., "lm_head") with the layout's shapes.
package checkpoint

// Naming convention shared by the trainer and the exporter.
const (
	ModelPrefix   = "model."
	MomentMPrefix = "optim.m."
	MomentVPrefix = "optim.v."
	BlobRNG       = "rng"
	BlobSampler   = "sampler"
	BlobOptimizer = "optimizer" // step count, schedule position
)
