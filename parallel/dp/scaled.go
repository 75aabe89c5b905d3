package dp

import (
	"context"
	"fmt"
)

// BeginScaled starts a step whose gradients the model has already scaled for
// the global batch (it normalised its loss by the global target count and
// uses global aux statistics, as a sharded model does): the buckets are
// summed as they are, with no target-count exchange. Otherwise as Begin.
func (r *Reducer) BeginScaled(ctx context.Context) error {
	if r.active {
		return fmt.Errorf("dp: BeginScaled while the previous step's reduction is unfinished (call Finish)")
	}
	r.active, r.ctx, r.err = true, ctx, nil
	r.local, r.global, r.scale = 0, 0, 1
	r.ready, r.next, r.reqs = len(r.grads), 0, r.reqs[:0]
	r.countRq = nil
	return nil
}
