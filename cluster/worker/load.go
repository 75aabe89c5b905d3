package worker

import (
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/moe"

	pb "github.com/moetrain/moetrain/cluster/proto"
)

// loadTally keeps a rank's running totals of routed and dropped slots per
// MoE layer, for the progress reports' expert load.
type loadTally struct {
	slots, dropped []int64
}

// add counts one step's stats and returns the step's load for a report.
func (t *loadTally) add(stats []moe.LoadStats) []metrics.LayerLoad {
	if len(stats) == 0 {
		return nil
	}
	if len(t.slots) != len(stats) { // first step (the layer count never changes)
		t.slots, t.dropped = make([]int64, len(stats)), make([]int64, len(stats))
	}
	out := make([]metrics.LayerLoad, len(stats))
	for l, s := range stats {
		t.slots[l] += int64(s.Slots)
		t.dropped[l] += int64(s.Dropped)
		per := make([]int64, len(s.PerExpert))
		for e, n := range s.PerExpert {
			per[e] = int64(n)
		}
		out[l] = metrics.LayerLoad{PerExpert: per, MaxMean: s.MaxMean, Imbalance: s.IS,
			SlotsTotal: t.slots[l], DroppedTotal: t.dropped[l]}
	}
	return out
}

// loadToProto is a report's expert load as the progress message carries it.
func loadToProto(load []metrics.LayerLoad) []*pb.LayerLoad {
	if len(load) == 0 {
		return nil
	}
	out := make([]*pb.LayerLoad, len(load))
	for l, ll := range load {
		out[l] = &pb.LayerLoad{PerExpert: ll.PerExpert, MaxMean: ll.MaxMean, Imbalance: ll.Imbalance,
			SlotsTotal: ll.SlotsTotal, DroppedTotal: ll.DroppedTotal}
	}
	return out
}
