package moe

import "fmt"

// LoadStats are one layer's load metrics for one step, small enough to log.
// Expert-parallel ranks own consecutive blocks of E/EP experts.
type LoadStats struct {
	Tokens    int     // tokens routed (N)
	Slots     int     // slots the router chose (N·K)
	Dropped   int     // slots dropped by the capacity
	PerExpert []int   // [E] slots each expert processed (after capacity)
	PerRank   []int   // [EP] slots each EP rank processed
	IS        float64 // imbalance score (max − min of PerRank) / Tokens
	MaxMean   float64 // max / mean of PerExpert (1 = even; 0 when empty)
	DropRate  float64 // Dropped / Slots
}

// NewLoadStats derives the metrics from per-expert processed slot counts,
// the token and dropped-slot counts and the expert-parallel degree ep (which
// must divide len(perExpert)). perExpert is copied.
func NewLoadStats(perExpert []int, tokens, slots, dropped, ep int) (LoadStats, error) {
	e := len(perExpert)
	if ep < 1 || e == 0 || e%ep != 0 {
		return LoadStats{}, fmt.Errorf("moe: load stats: EP degree %d must divide the %d experts", ep, e)
	}
	s := LoadStats{Tokens: tokens, Slots: slots, Dropped: dropped, PerExpert: append([]int(nil), perExpert...), PerRank: make([]int, ep)}
	per := e / ep
	total, mx := 0, 0
	for i, c := range perExpert {
		s.PerRank[i/per] += c
		total += c
		mx = max(mx, c)
	}
	if total > 0 {
		s.MaxMean = float64(mx) * float64(e) / float64(total)
	}
	if tokens > 0 {
		lo, hi := s.PerRank[0], s.PerRank[0]
		for _, c := range s.PerRank {
			lo, hi = min(lo, c), max(hi, c)
		}
		s.IS = float64(hi-lo) / float64(tokens)
	}
	if slots > 0 {
		s.DropRate = float64(dropped) / float64(slots)
	}
	return s, nil
}

// Stats are the load metrics of st's last Forward for EP degree ep.
func (st *State) Stats(ep int) (LoadStats, error) {
	r := &st.Routing
	return NewLoadStats(st.Plan.Counts, r.N, r.N*r.K, st.Plan.Dropped, ep)
}
