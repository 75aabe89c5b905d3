package worker

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// meshRanks builds the ranks of mesh for job over in-process transports,
// each with its replica's sampler, and runs fn on every rank at once.
func meshRanks(t *testing.T, job train.JobConfig, mesh parallel.Mesh, fn func(r int, s *train.MeshRankState) error) {
	t.Helper()
	data, err := sampling.Open(job.DataConfig(), job.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	errs := testkit.OnRanks(mesh.World(), func(r int, tr collective.Transport) error {
		mr, err := train.NewMeshRank(job, mesh, r, collective.NewWorldConfig(tr, collective.Config{Timeout: 30 * time.Second}), zerolog.Nop())
		if err != nil {
			return err
		}
		s, err := data.Sampler(mesh.Coord(r).DP, mesh.DP)
		if err != nil {
			return err
		}
		return fn(r, &train.MeshRankState{Rank: mr, Sampler: s, Log: zerolog.Nop()})
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// A checkpoint of a dp=2 job restored under dp=1 (a shrunk job) and dp=4
// (grown) continues every replica's window stream at the saved position:
// its next batch is the one a sampler that had run from the start would
// give at that step, never one a replica already trained on; under the
// same degree each replica gets its own position back.
func TestRestoreContinuesSamplersUnderAnotherDP(t *testing.T) {
	job := train.DefaultJobConfig()
	job.Model.DModel, job.Model.Layers, job.Model.Heads, job.Model.SeqLen = 32, 1, 2, 32
	job.Model.Experts, job.Model.ExpertHidden = 4, 32
	job.Data.SeqLen, job.Data.BatchSize = 32, 2
	job.Train.Threads = 1
	const steps = 3
	store, err := checkpoint.NewStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	saved := parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 1}
	shards := make([]checkpoint.ShardInfo, saved.World())
	meshRanks(t, job, saved, func(r int, s *train.MeshRankState) error {
		for range steps {
			b, err := s.Sampler.Next()
			if err != nil {
				return err
			}
			if _, err := s.Rank.Step(context.Background(), b); err != nil {
				return err
			}
		}
		snap, err := s.Snapshot(r)
		if err != nil {
			return err
		}
		shards[r], err = snap.WriteShard(context.Background(), store, checkpoint.WriterOptions{})
		return err
	})
	m := checkpoint.NewManifest(steps, shards)
	m.Mesh = map[string]int{"dp": saved.DP, "sp": 1, "tp": 1, "ep": 1}
	if err := store.Commit(m); err != nil {
		t.Fatal(err)
	}
	data, err := sampling.Open(job.DataConfig(), job.Train.Seed)
	if err != nil {
		t.Fatal(err)
	}
	// want is replica d's batch at step (of a sampler that never stopped).
	want := func(d, dp int) []int32 {
		s, err := data.Sampler(d, dp)
		if err != nil {
			t.Fatal(err)
		}
		var b sampling.Batch
		for range steps + 1 {
			if b, err = s.Next(); err != nil {
				t.Fatal(err)
			}
		}
		return b.Tokens
	}
	for _, dp := range []int{1, 2, 4} {
		mesh := parallel.Mesh{DP: dp, SP: 1, TP: 1, EP: 1}
		meshRanks(t, job, mesh, func(r int, s *train.MeshRankState) error {
			c, err := checkpoint.OpenDir(store.StepDir(steps), checkpoint.OpenOptions{})
			if err != nil {
				return err
			}
			defer c.Close()
			if err := s.Restore(c, r); err != nil {
				return err
			}
			b, err := s.Sampler.Next()
			if err != nil {
				return err
			}
			if !slices.Equal(b.Tokens, want(mesh.Coord(r).DP, dp)) {
				t.Errorf("dp=%d rank %d: the batch after the restore is not its replica's batch of step %d", dp, r, steps+1)
			}
			return nil
		})
	}
	// Rank 0's sampler blob damaged on disk (one bit of it flipped, so its
	// chunk checksum fails): under another degree too the restore is an
	// error, not a fresh start.
	c, err := checkpoint.OpenDir(store.StepDir(steps), checkpoint.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := c.Blob(0, checkpoint.BlobSampler)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(store.StepDir(steps), shards[0].File)
	raw, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw, blob)
	if at < 0 {
		t.Fatal("rank 0's sampler blob is not stored raw in its shard")
	}
	raw[at+len(blob)/2] ^= 1
	if err := os.WriteFile(shard, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	shrunk := parallel.Mesh{DP: 1, SP: 1, TP: 1, EP: 1}
	errs := testkit.OnRanks(1, func(r int, tr collective.Transport) error {
		mr, err := train.NewMeshRank(job, shrunk, r, collective.NewWorldConfig(tr, collective.Config{Timeout: 30 * time.Second}), zerolog.Nop())
		if err != nil {
			return err
		}
		smp, err := data.Sampler(0, 1)
		if err != nil {
			return err
		}
		c, err := checkpoint.OpenDir(store.StepDir(steps), checkpoint.OpenOptions{})
		if err != nil {
			return err
		}
		defer c.Close()
		return (&train.MeshRankState{Rank: mr, Sampler: smp, Log: zerolog.Nop()}).Restore(c, r)
	})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "sampler") {
		t.Fatalf("restore under dp=1 with rank 0's sampler blob damaged: %v, want an error naming the sampler blob", errs[0])
	}
}
