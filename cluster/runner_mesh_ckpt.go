package cluster

import (
	"encoding/json"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// meshState is a mesh rank's state for the rank checkpointer (rankState):
// the rank's blocks of every tensor (train.MeshRank.Snapshot/Restore, which
// load under any mesh) and its DP replica's sampler position.
type meshState struct {
	mr      *train.MeshRank
	sampler sampling.Sampler
	log     zerolog.Logger
}

func (s *meshState) Snapshot(rank int) (*checkpoint.Snapshot, error) {
	st := s.sampler.State()
	return s.mr.Snapshot(&st)
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
// degree); the log says which.
func (s *meshState) Restore(c *checkpoint.Checkpoint, rank int) error {
	if _, err := s.mr.Restore(c); err != nil {
		return err
	}
	m := s.mr.Mesh()
	saved := c.Manifest.Mesh
	old := parallel.Mesh{DP: saved["dp"], SP: max(1, saved["sp"]), TP: max(1, saved["tp"]), EP: max(1, saved["ep"])}
	if old.DP != m.DP || old.Validate() != nil {
		st, err := samplerState(c, 0)
		if err == nil {
			err = s.sampler.Restore(st)
		}
		ev := s.log.Warn().Str("saved_mesh", old.String()).Str("mesh", m.String())
		if err != nil {
			ev.Err(err).Msg("checkpoint written with another data-parallel degree: the samplers start their streams afresh")
			return nil
		}
		ev.Uint64("sampler_step", st.Step).Msg("checkpoint written with another data-parallel degree: each replica's sampler continues at the saved position")
		return nil
	}
	from := old.Rank(parallel.Coord{DP: m.Coord(rank).DP})
	st, err := samplerState(c, from)
	if err != nil {
		return fmt.Errorf("sampler of dp replica %d: %w", m.Coord(rank).DP, err)
	}
	if err := s.sampler.Restore(st); err != nil {
		return fmt.Errorf("checkpoint %s: sampler of rank %d: %w", c.Dir, from, err)
	}
	return nil
}

// samplerState is the sampler position rank saved in c.
func samplerState(c *checkpoint.Checkpoint, rank int) (sampling.State, error) {
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
