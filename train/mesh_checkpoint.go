package train

import (
	"encoding/json"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
)

// Checkpoints of a mesh. Every tensor is saved under its global name and
// shape; each rank writes the blocks it is the canonical holder of (the same
// rule that counts each block once in the gradient norm), so the step's
// shards cover every tensor exactly once, and reads back the blocks it holds
// in whatever layout it now has (checkpoint.ReadRegion assembles them from
// the shards that wrote them). A checkpoint saved under one mesh therefore
// loads under any other, experts and their moments included.

// entryPieces describes the local flat range [lo, hi) of entry e (offsets in
// the rank's flat buffer) as checkpoint pieces of the global tensor: the
// whole local box when the range covers it, else flat ranges of the global
// tensor (one per contiguous run of the box). base is subtracted from the
// local offsets (an optimizer shard's Lo); opt indexes that optimizer.
func entryPieces(e model.Entry, lo, hi, base, opt int) []LocalPiece {
	lo, hi = max(lo, e.Offset), min(hi, e.Offset+e.Size())
	if lo >= hi {
		return nil
	}
	shape := int64Shape(e.GlobalShape())
	if lo == e.Offset && hi == e.Offset+e.Size() {
		r := checkpoint.Whole(shape)
		if e.IsSharded() {
			r = checkpoint.Box(int64Shape(e.Start), int64Shape(e.Shape))
		}
		return []LocalPiece{{Name: e.Name, Shape: shape, Region: r, Offset: lo - base, Opt: opt}}
	}
	if !e.IsSharded() {
		return []LocalPiece{{Name: e.Name, Shape: shape, Region: checkpoint.FlatRange(int64(lo-e.Offset), int64(hi-lo)), Offset: lo - base, Opt: opt}}
	}
	var out []LocalPiece
	a, b := lo-e.Offset, hi-e.Offset
	e.Runs(func(local, global, n int) {
		s, t := max(a, local), min(b, local+n)
		if s >= t {
			return
		}
		out = append(out, LocalPiece{Name: e.Name, Shape: shape, Region: checkpoint.FlatRange(int64(global+s-local), int64(t-s)),
			Offset: e.Offset + s - base, Opt: opt})
	})
	return out
}

// checkpointLayouts returns what this rank writes and what it reads back.
func (r *MeshRank) checkpointLayouts() (save, restore ShardLayout) {
	for i, e := range r.tr.Layout().Entries {
		whole := entryPieces(e, e.Offset, e.Offset+e.Size(), 0, 0)
		restore.Params = append(restore.Params, whole...)
		if !r.zero1 {
			restore.Moments = append(restore.Moments, whole...)
			if r.normWeight[i] {
				save.Params = append(save.Params, whole...)
				save.Moments = append(save.Moments, whole...)
			}
			continue
		}
		for k, o := range r.shards {
			part := entryPieces(e, o.Lo, o.Hi, o.Lo, k)
			restore.Moments = append(restore.Moments, part...)
			if r.normWeight[i] {
				save.Moments = append(save.Moments, part...)
				save.Params = append(save.Params, entryPieces(e, o.Lo, o.Hi, 0, 0)...)
			}
		}
	}
	return save, restore
}

// Snapshot copies this rank's part of a checkpoint of the last completed
// step (sampler: its DP replica's sampler state, or nil).
func (r *MeshRank) Snapshot(sampler *sampling.State) (*checkpoint.Snapshot, error) {
	save, _ := r.checkpointLayouts()
	return r.tr.SnapshotWith(r.rank, save, r.shards, sampler)
}

// Restore loads every block this rank holds (parameters, AdamW moments),
// the step, schedule and routing biases from c, whatever mesh saved it, and
// returns the sampler state saved by this rank (or the nearest rank that
// saved one; nil if none).
func (r *MeshRank) Restore(c *checkpoint.Checkpoint) (*sampling.State, error) {
	_, restore := r.checkpointLayouts()
	return r.tr.RestoreWith(c, r.rank, restore, r.shards)
}

// MeshRankState is what a mesh rank's checkpoints hold: the rank's blocks of
// every tensor (MeshRank.Snapshot and Restore, which load under any mesh)
// and its data-parallel replica's sampler position. The cluster runner's
// rank checkpointer saves and restores it; this package owns what goes in.
type MeshRankState struct {
	Rank    *MeshRank
	Sampler sampling.Sampler
	Log     zerolog.Logger
}

// Snapshot copies the rank's state after its last completed step.
func (s *MeshRankState) Snapshot(rank int) (*checkpoint.Snapshot, error) {
	st := s.Sampler.State()
	return s.Rank.Snapshot(&st)
}

// Restore loads the model and optimizer blocks this rank holds and, when the
// checkpoint was written with the same number of data-parallel replicas,
// the sampler position of this rank's replica (saved by every rank of the
// replica, so any of them serves). With a different DP degree (a shrunk or
// regrown job, a resume under another mesh) the replicas' streams are other
// ones: each sampler continues at the position every replica had reached
// where its kind allows (window and random streams depend on the replica
// and the position only, so no replica sees again what one saw before),
// and starts afresh otherwise (bucket and pack epochs are laid out per DP
// degree); the log says which. A sampler blob the checkpoint lists but that
// cannot be read is an error under any degree.
func (s *MeshRankState) Restore(c *checkpoint.Checkpoint, rank int) error {
	if _, err := s.Rank.Restore(c); err != nil {
		return err
	}
	m := s.Rank.Mesh()
	saved := c.Manifest.Mesh
	old := parallel.Mesh{DP: saved["dp"], SP: max(1, saved["sp"]), TP: max(1, saved["tp"]), EP: max(1, saved["ep"])}
	if old.DP != m.DP || old.Validate() != nil {
		st, err := SamplerState(c, 0)
		if err != nil && c.HasBlob(0, checkpoint.BlobSampler) {
			return err // listed but unreadable: damage, not an older checkpoint
		}
		if err == nil {
			err = s.Sampler.Restore(st)
		}
		ev := s.Log.Warn().Str("saved_mesh", old.String()).Str("mesh", m.String())
		if err != nil {
			ev.Err(err).Msg("checkpoint written with another data-parallel degree: the samplers start their streams afresh")
			return nil
		}
		ev.Uint64("sampler_step", st.Step).Msg("checkpoint written with another data-parallel degree: each replica's sampler continues at the saved position")
		return nil
	}
	from := old.Rank(parallel.Coord{DP: m.Coord(rank).DP})
	st, err := SamplerState(c, from)
	if err != nil {
		return fmt.Errorf("sampler of dp replica %d: %w", m.Coord(rank).DP, err)
	}
	if err := s.Sampler.Restore(st); err != nil {
		return fmt.Errorf("checkpoint %s: sampler of rank %d: %w", c.Dir, from, err)
	}
	return nil
}

// SamplerState is the sampler position rank saved in c (its
// checkpoint.BlobSampler).
func SamplerState(c *checkpoint.Checkpoint, rank int) (sampling.State, error) {
	var st sampling.State
	b, err := c.Blob(rank, checkpoint.BlobSampler)
	if err != nil {
		return st, fmt.Errorf("checkpoint %s: %w", c.Dir, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("checkpoint %s: blob %q of rank %d: %w", c.Dir, checkpoint.BlobSampler, rank, err)
	}
	return st, nil
}
