package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Snapshot is a private copy of one rank's state for one checkpoint: taking
// it is the only part of an asynchronous save the training step waits for.
type Snapshot struct {
	Step    int64
	Rank    int
	tensors []snapTensor
	blobs   []snapBlob
	// recycled is set once an AsyncWriter has handed the tensors' buffers
	// to the next snapshot (snapBufs): the snapshot cannot be written again.
	recycled bool
}

// snapBufs holds the tensor buffers of the last snapshot an AsyncWriter
// wrote successfully, by length, for the next snapshot's copies. A rank
// copies the same state into buffers of the same sizes at every
// checkpoint; reusing them makes the copy, which the training step waits
// for, a plain memory copy instead of fresh allocations (page faults,
// zeroing, garbage collection). It holds at most one snapshot's buffers.
var snapBufs struct {
	mu   sync.Mutex
	free map[int][][]float32
}

// takeSnapBuf returns a recycled buffer of n values, or nil.
func takeSnapBuf(n int) []float32 {
	snapBufs.mu.Lock()
	defer snapBufs.mu.Unlock()
	l := snapBufs.free[n]
	if len(l) == 0 {
		return nil
	}
	b := l[len(l)-1]
	snapBufs.free[n] = l[:len(l)-1]
	return b
}

// recycle hands s's tensor buffers to the next snapshot, replacing any
// buffers still unused from an earlier one.
func (s *Snapshot) recycle() {
	free := make(map[int][][]float32, len(s.tensors))
	for _, t := range s.tensors {
		if len(t.data) > 0 {
			free[len(t.data)] = append(free[len(t.data)], t.data)
		}
	}
	s.tensors, s.blobs, s.recycled = nil, nil, true
	snapBufs.mu.Lock()
	snapBufs.free = free
	snapBufs.mu.Unlock()
}

type snapTensor struct {
	name   string
	shape  []int64
	region Region
	data   []float32
}

type snapBlob struct {
	name string
	data []byte
}

// AddTensor copies data (the piece region of tensor name with global shape)
// into the snapshot. Validation happens when the snapshot is written.
func (s *Snapshot) AddTensor(name string, shape []int64, region Region, data []float32) {
	buf := takeSnapBuf(len(data))
	if buf != nil {
		copy(buf, data)
	} else {
		buf = append([]float32(nil), data...)
	}
	s.tensors = append(s.tensors, snapTensor{name: name, shape: append([]int64(nil), shape...),
		region: cloneRegion(region), data: buf})
}

// AddBlob copies data into the snapshot.
func (s *Snapshot) AddBlob(name string, data []byte) {
	s.blobs = append(s.blobs, snapBlob{name: name, data: append([]byte(nil), data...)})
}

// Bytes is the raw size of the snapshot's data.
func (s *Snapshot) Bytes() int64 {
	var n int64
	for _, t := range s.tensors {
		n += 4 * int64(len(t.data))
	}
	for _, b := range s.blobs {
		n += int64(len(b.data))
	}
	return n
}

// WriteShard writes the snapshot as its rank's shard of s.Step in store.
func (s *Snapshot) WriteShard(ctx context.Context, store *Store, opts WriterOptions) (ShardInfo, error) {
	if s.recycled {
		return ShardInfo{}, fmt.Errorf("snapshot of step %d rank %d: already written by an AsyncWriter, which recycled its buffers", s.Step, s.Rank)
	}
	w, err := store.CreateShard(ctx, s.Step, s.Rank, opts)
	if err != nil {
		return ShardInfo{}, err
	}
	for _, t := range s.tensors {
		if err := w.WriteTensor(t.name, t.shape, t.region, t.data); err != nil {
			w.Abort()
			return ShardInfo{}, err
		}
	}
	for _, b := range s.blobs {
		if err := w.WriteBlob(b.name, b.data); err != nil {
			w.Abort()
			return ShardInfo{}, err
		}
	}
	if opts.BeforeClose != nil {
		opts.BeforeClose(w.path)
	}
	return w.Close()
}

// AsyncWriter writes one rank's snapshots in the background, one at a time.
// Its methods are safe for concurrent use.
type AsyncWriter struct {
	store *Store
	opts  WriterOptions
	run   Background[ShardInfo]
}

// NewAsyncWriter returns a writer saving into store with opts.
func NewAsyncWriter(store *Store, opts WriterOptions) *AsyncWriter {
	Prewarm(1)
	return &AsyncWriter{store: store, opts: opts}
}

// Save waits (bounded by ctx) for the previous save, returns its error if it
// failed (then snap is not started), and otherwise starts writing snap in
// the background and returns. Once snap is written successfully its
// buffers go to the next snapshot's copies, so it cannot be saved again
// (a failed one can). The background write runs under ctx as well:
// cancelling ctx aborts it. done, if not nil, is called from the background
// goroutine with the result (e.g. to report the ShardInfo to the committer)
// before the save counts as finished: Wait and the next Save return only
// after done has returned, so reports go out in step order.
func (a *AsyncWriter) Save(ctx context.Context, snap *Snapshot, done func(ShardInfo, error)) error {
	if snap == nil {
		return errors.New("async save: nil snapshot")
	}
	if _, err := a.Wait(ctx); err != nil {
		return fmt.Errorf("async save of step %d: previous save: %w", snap.Step, err)
	}
	err := a.run.Start(ctx, func(wctx context.Context) (ShardInfo, error) {
		info, err := snap.WriteShard(wctx, a.store, a.opts)
		if err != nil {
			err = fmt.Errorf("async save of step %d rank %d: %w", snap.Step, snap.Rank, err)
		} else {
			snap.recycle()
		}
		if done != nil {
			done(info, err)
		}
		return info, err
	})
	if err != nil { // another Save won the race after our Wait
		return fmt.Errorf("async save of step %d: %w", snap.Step, err)
	}
	return nil
}

// Wait blocks until no save is in flight (or ctx ends) and returns the
// result of the last finished save. A failure is returned once: the next
// Wait or Save starts clean.
func (a *AsyncWriter) Wait(ctx context.Context) (ShardInfo, error) {
	return a.run.Wait(ctx, "checkpoint write")
}

// Cancel aborts the in-flight save, if any (its error surfaces on Wait).
func (a *AsyncWriter) Cancel() { a.run.Cancel() }
