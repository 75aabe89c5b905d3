package checkpoint

import "sync"

// The per-entry compression probe. A shard mixes entries that compress well
// (zeros, biases, step counters, blobs) with bulk float32 state whose
// mantissas are noise; one entry's data says nothing about the next one's,
// so each large entry is judged on a sample of its own bytes before its
// chunks are queued.

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

// entryCompressible reports whether compressing raw (float32 words in byte
// planes when shuffle) with the writer's codec is worth it: true when raw is
// no larger than the sample, else whether the sample shrinks by at least
// minSaving. It costs one compression of probeBytes per large entry.
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
	if shuffle {
		out, _ = encodePlanes(b.out[:0], b.tmp, b.sample)
	} else {
		out = w.enc.EncodeAll(b.sample, b.out[:0])
	}
	b.out = out[:0]
	return float64(len(out)) <= (1-minSaving)*float64(len(b.sample))
}
