package model

import "github.com/moetrain/moetrain/moe"

// EPChunkLog returns, per MoE layer, its tuner's changes of the pipelined
// exchange's chunk count (model.ep_chunks = -1; docs/algorithms/ep-dispatch.md),
// oldest first; nil before any forward. A change is logged by the layer on
// every rank, but only expert-parallel member 0's choices are used.
func (m *Model) EPChunkLog() [][]moe.ChunkChoice {
	if m.acts == nil {
		return nil
	}
	out := make([][]moe.ChunkChoice, len(m.acts.Layers))
	for l := range m.acts.Layers {
		out[l] = append([]moe.ChunkChoice(nil), m.acts.Layers[l].MoE.ChunkLog()...)
	}
	return out
}

// EPTiming returns every MoE layer's expert-parallel timing of the last
// forward and backward (zero Chunks where the layer took the unpipelined
// fp32 path or had no expert parallelism).
func (m *Model) EPTiming() []moe.Timing {
	if m.acts == nil {
		return nil
	}
	out := make([]moe.Timing, len(m.acts.Layers))
	for l := range m.acts.Layers {
		out[l] = m.acts.Layers[l].MoE.ExchangeTiming()
	}
	return out
}
