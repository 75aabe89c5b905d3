package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAsyncWriterSnapshotsAndCommits(t *testing.T) {
	s := newTestStore(t, 0)
	aw := NewAsyncWriter(s, WriterOptions{ChunkBytes: 256})
	params := newTestTensor(rand.New(rand.NewPCG(15, 16)), "model.w", 33, 17)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[int64][]float32{}
	for step := int64(1); step <= 3; step++ {
		snap := &Snapshot{Step: step, Rank: 0}
		snap.AddTensor(params.name, params.shape, Whole(params.shape), params.data)
		snap.AddBlob(BlobOptimizer, []byte{byte(step)})
		want[step] = append([]float32(nil), params.data...)
		infos := make(chan ShardInfo, 1)
		if err := aw.Save(ctx, snap, func(info ShardInfo, err error) {
			if err == nil {
				infos <- info
			}
			close(infos)
		}); err != nil {
			t.Fatal(err)
		}
		// Training goes on: the live buffer changes while the save runs.
		for i := range params.data {
			params.data[i] += 1
		}
		info, err := aw.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := <-infos; got.Size != info.Size {
			t.Fatalf("callback info %+v, Wait info %+v", got, info)
		}
		if err := s.Commit(NewManifest(step, []ShardInfo{info})); err != nil {
			t.Fatal(err)
		}
	}
	for step, w := range want {
		c, _, err := s.Open(StepName(step)[5:], OpenOptions{Verify: VerifyFull})
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := c.ReadTensor("model.w")
		if err != nil || !slices.Equal(got, w) {
			t.Fatalf("step %d: snapshot not what was saved (%v)", step, err)
		}
		b, err := c.Blob(0, BlobOptimizer)
		if err != nil || len(b) != 1 || b[0] != byte(step) {
			t.Fatalf("step %d blob %v %v", step, b, err)
		}
		c.Close()
	}
}

func TestAsyncWriterErrorSurfacesOnNextCall(t *testing.T) {
	s := newTestStore(t, 0)
	aw := NewAsyncWriter(s, WriterOptions{})
	ctx := t.Context()
	bad := &Snapshot{Step: 1}
	bad.AddTensor("x", []int64{2}, Whole([]int64{2}), []float32{1}) // 1 value for 2 elements
	if err := aw.Save(ctx, bad, nil); err != nil {
		t.Fatalf("Save returned the background error early: %v", err)
	}
	good := &Snapshot{Step: 2}
	good.AddTensor("x", []int64{1}, Whole([]int64{1}), []float32{1})
	err := aw.Save(ctx, good, nil)
	if err == nil || !strings.Contains(err.Error(), "previous save") || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("next Save: %v", err)
	}
	// The failure was reported once; the writer is usable again.
	if err := aw.Save(ctx, good, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := aw.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAsyncWriterCancel(t *testing.T) {
	s := newTestStore(t, 0)
	aw := NewAsyncWriter(s, WriterOptions{ChunkBytes: 64, Workers: 1, InFlight: 1})
	ctx, cancel := context.WithCancel(context.Background())
	snap := &Snapshot{Step: 1}
	big := make([]float32, 1<<20)
	snap.AddTensor("x", []int64{int64(len(big))}, FlatRange(0, int64(len(big))), big)
	cancel() // cancelled before the background write gets far
	if err := aw.Save(ctx, snap, nil); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	_, err := aw.Wait(wctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v", err)
	}
	// Waiting under an expired context returns promptly.
	if err := aw.Save(context.Background(), snap, nil); err != nil {
		t.Fatal(err)
	}
	expired, ecancel := context.WithCancel(context.Background())
	ecancel()
	if _, err := aw.Wait(expired); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with expired ctx: %v", err)
	}
	aw.Cancel()
	aw.Wait(wctx)
}

// After a successful asynchronous save the snapshot's buffers serve the
// next snapshot's copies (same memory, new values), the written checkpoint
// keeps its values, and the recycled snapshot cannot be written again.
func TestAsyncWriterRecyclesSnapshotBuffers(t *testing.T) {
	s := newTestStore(t, 0)
	aw := NewAsyncWriter(s, WriterOptions{})
	ctx := t.Context()
	first := &Snapshot{Step: 1}
	first.AddTensor("x", []int64{3}, Whole([]int64{3}), []float32{1, 2, 3})
	buf := &first.tensors[0].data[0]
	var infos []ShardInfo
	done := func(info ShardInfo, err error) {
		if err == nil {
			infos = append(infos, info)
		}
	}
	if err := aw.Save(ctx, first, done); err != nil {
		t.Fatal(err)
	}
	if _, err := aw.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	second := &Snapshot{Step: 2}
	second.AddTensor("x", []int64{3}, Whole([]int64{3}), []float32{4, 5, 6})
	if &second.tensors[0].data[0] != buf {
		t.Fatal("the second snapshot did not reuse the first one's buffer")
	}
	if _, err := first.WriteShard(ctx, s, WriterOptions{}); err == nil || !strings.Contains(err.Error(), "recycled") {
		t.Fatalf("writing a recycled snapshot: %v", err)
	}
	if err := aw.Save(ctx, second, done); err != nil {
		t.Fatal(err)
	}
	if _, err := aw.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]float32{{1, 2, 3}, {4, 5, 6}} {
		step := int64(i + 1)
		if err := s.Commit(&Manifest{Version: ManifestVersion, Step: step, Shards: infos[i : i+1]}); err != nil {
			t.Fatal(err)
		}
		c, _, err := s.Open(fmt.Sprint(step), OpenOptions{Verify: VerifyFull})
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := c.ReadTensor("x")
		c.Close()
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("step %d: %v %v, want %v", step, got, err, want)
		}
	}
}
