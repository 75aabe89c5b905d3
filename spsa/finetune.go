package spsa

import (
	"context"
	"fmt"
	"time"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
)

// LoadWeights reads the model weights of checkpoint c (whatever layout
// wrote them) into m, a whole model, and nothing else: SPSA keeps no
// optimizer state. Routing biases (model.bias_update_rate > 0) are not
// supported yet and refused.
func LoadWeights(c *checkpoint.Checkpoint, m *model.Model) error {
	if !m.Shard.IsWhole() {
		return fmt.Errorf("spsa: load weights: the model is a shard (%+v); SPSA replicas hold the whole model", m.Shard)
	}
	if m.Cfg.BiasUpdateRate != 0 {
		return fmt.Errorf("spsa: load weights: model.bias_update_rate > 0 (routing biases) is not supported by SPSA fine-tuning yet")
	}
	for _, e := range m.Layout.Entries {
		shape := make([]int64, len(e.Shape))
		for i, d := range e.Shape {
			shape[i] = int64(d)
		}
		if err := c.ReadRegion(checkpoint.ModelPrefix+e.Name, checkpoint.Whole(shape), m.Params[e.Offset:e.Offset+e.Size()]); err != nil {
			return fmt.Errorf("spsa: load weights: %w", err)
		}
	}
	return m.CheckFinite()
}

// Input is b as the model sees it.
func Input(b sampling.Batch) model.Input {
	return model.Input{B: b.B, T: b.T, Tokens: b.Tokens, Targets: b.Targets, Pos: b.Pos, Seg: b.Seg}
}

// EvalCE is m's mean cross-entropy over every counted target of batches
// (forward only; no aux loss): the validation loss training reports.
func EvalCE(m Forwarder, batches []sampling.Batch) (float64, error) {
	var sum float64
	var n int
	for i, b := range batches {
		r, err := m.Forward(Input(b), false)
		if err != nil {
			return 0, fmt.Errorf("spsa: evaluate batch %d: %w", i, err)
		}
		sum += r.CE * float64(r.Targets)
		n += r.Targets
	}
	if n == 0 {
		return 0, fmt.Errorf("spsa: evaluate: %d batches hold no targets", len(batches))
	}
	return sum / float64(n), nil
}

// Point is one report of a fine-tuning run.
type Point struct {
	Step      int64   `json:"step"`               // steps done
	Loss      float64 `json:"loss"`               // this worker's mean loss at ±ε of the last step
	ValLoss   float64 `json:"val_loss,omitempty"` // 0 unless evaluated at this step
	WireBytes int64   `json:"wire_bytes"`         // this worker's bytes sent so far, framing included
	Payload   int64   `json:"payload"`            // of which projected-gradient payload
	Clipped   int     `json:"clipped"`            // this worker's clipped directions so far
	Tokens    int64   `json:"tokens"`             // input positions of this worker's batches so far
	// TrainSeconds is the wall time of the steps so far (evaluation
	// excluded).
	TrainSeconds float64 `json:"train_s"`
}

// FineTune drives one worker: a batch from Sampler per step, the step over
// Exchange, the record appended to Log (the log keeper only), validation on
// Val every EvalEvery steps and after the last (nil Val: none).
type FineTune struct {
	// Model evaluates the loss: the model whose parameters Worker's store
	// holds (the host model, or its copy on a GPU).
	Model     Forwarder
	Worker    *Worker
	Exchange  Exchange
	Sampler   sampling.Sampler
	Val       []sampling.Batch
	EvalEvery int
	Log       *Log
	// OnPoint receives a point after every step.
	OnPoint func(Point)
}

// Run takes steps steps. Cancelling ctx stops it between steps.
func (f *FineTune) Run(ctx context.Context, steps int) error {
	var in model.Input
	loss := ModelLoss(f.Model, &in)
	var train time.Duration
	var payload, tokens int64
	clipped := 0
	last := f.Worker.Step() + int64(steps)
	if f.Val != nil && f.OnPoint != nil { // the starting point
		v, err := EvalCE(f.Model, f.Val)
		if err != nil {
			return err
		}
		f.OnPoint(Point{Step: f.Worker.Step(), ValLoss: v})
	}
	for f.Worker.Step() < last {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := f.Sampler.Next()
		if err != nil {
			return fmt.Errorf("spsa: step %d: data: %w", f.Worker.Step(), err)
		}
		in = Input(b)
		tokens += int64(b.B * b.T)
		t0 := time.Now()
		st, err := f.Worker.StepOnce(ctx, f.Exchange, loss)
		if err != nil {
			return err
		}
		train += time.Since(t0)
		payload += int64(len(f.Worker.payload))
		clipped += st.Clipped
		if f.Log != nil {
			if err := f.Log.Append(Record{Step: st.Step, Entries: st.Entries}); err != nil {
				return err
			}
		}
		p := Point{Step: f.Worker.Step(), Loss: st.Loss, WireBytes: f.Exchange.WireBytes(),
			Payload: payload, Clipped: clipped, Tokens: tokens, TrainSeconds: train.Seconds()}
		if f.Val != nil && ((f.EvalEvery > 0 && p.Step%int64(f.EvalEvery) == 0) || p.Step == last) {
			if p.ValLoss, err = EvalCE(f.Model, f.Val); err != nil {
				return err
			}
		}
		if f.OnPoint != nil {
			f.OnPoint(p)
		}
	}
	return nil
}
