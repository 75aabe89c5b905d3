package moe

import "fmt"

// UpdateBias applies one aux-loss-free balancing step (DeepSeek-V3) to the
// selection bias of one layer: b_e −= rate·sign(load_e − mean load), with
// load the slots the router sent to each expert over the whole step (all
// data- and expert-parallel ranks summed by the caller). Experts exactly at
// the mean keep their bias. It runs outside the gradient, between steps
// (after the backward; the serial loop after the optimizer step, a mesh rank
// before it): it changes only the next step's selection. See
// docs/algorithms/bias-balancing.md.
func UpdateBias(bias []float32, load []int, rate float32) error {
	if len(bias) != len(load) {
		return fmt.Errorf("moe: bias update: bias has %d experts, load has %d", len(bias), len(load))
	}
	if rate == 0 {
		return nil
	}
	total := 0
	for _, l := range load {
		total += l
	}
	e := len(load)
	for i, l := range load {
		// sign(l − total/e) without rounding: compare l·e with total.
		switch d := l*e - total; {
		case d > 0:
			bias[i] -= rate
		case d < 0:
			bias[i] += rate
		}
	}
	return nil
}
