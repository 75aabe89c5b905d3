package checkpoint

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The per-entry compression probe. A shard mixes entries that compress well
// (zeros, biases, step counters, blobs) with bulk float32 state whose
// mantissas are noise; one entry's data says nothing about the next one's,
// so each large entry is judged on a sample of its own bytes before its
// chunks are queued. Compression pays only if it saves enough and the
// workers can code at least as fast as the disk writes: otherwise the save
// takes longer than a raw one (the writer waits for the CPU) and the CPU
// time is taken from training. Trained float32 weights and moments save
// little as byte planes and code far slower than a local disk writes
// (docs/decisions.md#compress-only-where-it-pays), so they are stored raw.

const (
	// probeBytes is the size of the sample an entry is judged on; entries
	// no larger are compressed without a probe (the probe would cost as
	// much as compressing them, and a chunk that does not shrink is stored
	// raw anyway).
	probeBytes = 256 << 10
	// probeSlices is how many evenly spaced slices of the entry make up the
	// sample, so that it estimates the saving of the whole entry, not of its
	// head alone.
	probeSlices = 4
)

type probeBufs struct{ sample, tmp, out []byte }

var probePool = sync.Pool{New: func() any {
	return &probeBufs{
		sample: make([]byte, probeBytes),
		tmp:    make([]byte, probeBytes),
		out:    make([]byte, 0, probeBytes+probeBytes/8+1024),
	}
}}

// diskRate is this process's estimate of the rate (bytes/s, float64 bits)
// at which one shard is written when stored raw, from the last such shards
// (noteShardRate); 0 until one was measured, when defaultDiskRate stands in.
var diskRate atomic.Uint64

// defaultDiskRate is assumed before a raw shard was timed: a local SSD or a
// cloud block device.
const defaultDiskRate = 1 << 30

// codeHeadroom is how much faster than the disk the workers must code the
// probe's sample for an entry to be compressed: the sample is timed alone
// on a warm cache, while a save codes whole chunks next to training, the
// checksums and the copies; a coder only just as fast as the disk keeps the
// writer waiting and the shard goes raw after its first chunks anyway.
const codeHeadroom = 2

// minRateSample is the smallest shard whose write time updates diskRate:
// below it, latency (file creation, fsync) rather than bandwidth dominates.
const minRateSample = 64 << 20

func diskRateEstimate() float64 {
	if r := math.Float64frombits(diskRate.Load()); r > 0 {
		return r
	}
	return defaultDiskRate
}

// noteShardRate records that a shard of size bytes, stored raw, took d from
// creation to durable (the mean with the previous estimate, so one slow or
// fast save moves it only half way).
func noteShardRate(size int64, d time.Duration) {
	if size < minRateSample || d <= 0 {
		return
	}
	r := float64(size) / d.Seconds()
	for {
		old := diskRate.Load()
		next := r
		if o := math.Float64frombits(old); o > 0 {
			next = (o + r) / 2
		}
		if diskRate.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

// entryCompressible reports whether compressing raw (float32 words in byte
// planes when shuffle) with the writer's codec is worth it: true when raw is
// no larger than the sample, else whether the sample shrinks by at least
// minSaving and was coded at a rate that, over the writer's workers, keeps
// up with diskRateEstimate. It costs one compression of probeBytes per large
// entry.
func (w *ShardWriter) entryCompressible(raw []byte, shuffle bool) bool {
	if len(raw) <= probeBytes {
		return true
	}
	b := probePool.Get().(*probeBufs)
	defer probePool.Put(b)
	sl := probeBytes / probeSlices // a multiple of 4: slices keep float32 words whole
	for i := 0; i < probeSlices; i++ {
		off := (i * (len(raw) - sl) / (probeSlices - 1)) &^ 3
		copy(b.sample[i*sl:(i+1)*sl], raw[off:off+sl])
	}
	var out []byte
	t0 := time.Now()
	if shuffle {
		out, _ = encodePlanes(b.out[:0], b.tmp, b.sample)
	} else {
		out = w.enc.EncodeAll(b.sample, b.out[:0])
	}
	el := time.Since(t0)
	b.out = out[:0]
	if float64(len(out)) > (1-minSaving)*float64(len(b.sample)) {
		return false
	}
	return float64(len(b.sample))*float64(w.opts.Workers) >= codeHeadroom*diskRateEstimate()*el.Seconds()
}
