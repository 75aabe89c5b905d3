package model

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/moe"
)

// validateRouter checks the router keys of [model]; each error names its key.
func (c Config) validateRouter() []error {
	var errs []error
	finite := func(key string, v float64) {
		if !(v >= 0 && v < 1e6) {
			errs = append(errs, fmt.Errorf("model.%s = %g: must be a finite value >= 0", key, v))
		}
	}
	finite("z_loss_coef", c.ZLossCoef)
	finite("bias_update_rate", c.BiasUpdateRate)
	finite("capacity_factor", c.CapacityFactor)
	if _, err := moe.ParseScore(c.Score); err != nil {
		errs = append(errs, fmt.Errorf("model.score = %q: %w", c.Score, err))
	}
	if _, err := moe.ParseDropPolicy(c.DropPolicy); err != nil {
		errs = append(errs, fmt.Errorf("model.drop_policy = %q: %w", c.DropPolicy, err))
	}
	if _, err := moe.ParseDType(c.DispatchDType); err != nil {
		errs = append(errs, fmt.Errorf("model.dispatch_dtype = %q: %w", c.DispatchDType, err))
	}
	switch c.MoELayout {
	case "standard", "":
		if c.DispatchDim != 0 {
			errs = append(errs, fmt.Errorf("model.dispatch_dim = %d: only the \"dcca\" moe_layout has a dispatch dimension (want 0)", c.DispatchDim))
		}
	case "dcca":
		if c.DispatchDim < 1 || (c.DModel >= 1 && c.DispatchDim > c.DModel) {
			errs = append(errs, fmt.Errorf("model.dispatch_dim = %d: the dcca layout needs 1 <= dispatch_dim <= model.d_model = %d", c.DispatchDim, c.DModel))
		}
	default:
		errs = append(errs, fmt.Errorf("model.moe_layout = %q: unknown layout (known: \"standard\", \"dcca\")", c.MoELayout))
	}
	if c.EPChunks < EPChunksAuto || c.EPChunks > moe.MaxChunks {
		errs = append(errs, fmt.Errorf("model.ep_chunks = %d: want 0 or 1 (unpipelined), 2 to %d (fixed) or %d (chosen at run time)", c.EPChunks, moe.MaxChunks, EPChunksAuto))
	}
	grouped := c.Router == "moge" || c.Router == "group_limited"
	switch c.Router {
	case "topk", "", "moge", "group_limited":
	default:
		errs = append(errs, fmt.Errorf("model.router = %q: unknown router (known: \"topk\", \"moge\", \"group_limited\")", c.Router))
	}
	g := c.groups()
	if c.Groups < 0 {
		errs = append(errs, fmt.Errorf("model.groups = %d: must be at least 1", c.Groups))
	} else if grouped && c.Experts >= 1 && c.Experts%g != 0 {
		errs = append(errs, fmt.Errorf("model.groups = %d: must divide model.experts = %d", g, c.Experts))
	} else if c.Router == "moge" && c.TopK >= 1 && c.TopK%g != 0 {
		errs = append(errs, fmt.Errorf("model.groups = %d: must divide model.top_k = %d (moge takes top_k/groups experts in every group)", g, c.TopK))
	}
	if c.TopKGroups < 0 || (c.Groups >= 0 && c.TopKGroups > g) {
		errs = append(errs, fmt.Errorf("model.topk_groups = %d: must be in [0, model.groups = %d] (0 keeps all groups)", c.TopKGroups, g))
	} else if c.Router == "group_limited" && c.Experts >= 1 && c.Experts%g == 0 && c.TopK > c.topKGroups()*(c.Experts/g) {
		errs = append(errs, fmt.Errorf("model.topk_groups = %d: its %d experts are fewer than model.top_k = %d", c.TopKGroups, c.topKGroups()*(c.Experts/g), c.TopK))
	}
	if len(errs) == 0 && c.Experts >= 1 && c.TopK >= 1 && c.TopK <= c.Experts {
		if _, err := NewRouter(c); err != nil {
			errs = append(errs, fmt.Errorf("model.router = %q: %w", c.Router, err))
		}
	}
	return errs
}

func (c Config) groups() int {
	if c.Groups <= 0 {
		return 1
	}
	return c.Groups
}

func (c Config) topKGroups() int {
	if c.TopKGroups == 0 {
		return c.groups()
	}
	return c.TopKGroups
}

// RouterSpec is the moe router the [model] section describes.
func (c Config) RouterSpec() (moe.Spec, error) {
	score, err := moe.ParseScore(c.Score)
	if err != nil {
		return moe.Spec{}, fmt.Errorf("model.score = %q: %w", c.Score, err)
	}
	drop, err := moe.ParseDropPolicy(c.DropPolicy)
	if err != nil {
		return moe.Spec{}, fmt.Errorf("model.drop_policy = %q: %w", c.DropPolicy, err)
	}
	ex, err := c.exchangeOptions()
	if err != nil {
		return moe.Spec{}, err
	}
	return moe.Spec{
		Kind: c.Router, Groups: c.groups(), TopKGroups: c.topKGroups(),
		Opts: moe.Options{Score: score, ZLossCoef: c.ZLossCoef, CapacityFactor: c.CapacityFactor, Drop: drop, Exchange: ex},
	}, nil
}

// NewRouter builds the router cfg describes (every option applied); New
// should use it rather than moe.NewRouter(cfg.Router), which knows only
// plain top-k.
func NewRouter(cfg Config) (moe.Router, error) {
	spec, err := cfg.RouterSpec()
	if err != nil {
		return nil, err
	}
	return moe.New(spec, cfg.Experts, cfg.TopK)
}

// RouterState is the model-level router state that is not a parameter: the
// aux-loss-free balancing bias of every MoE layer. It is updated outside the
// gradient after each optimizer step and belongs in checkpoints (Flat).
type RouterState struct {
	Rate   float32   // γ (model.bias_update_rate); 0 = off
	Layers int       // MoE layers
	E      int       // experts per layer
	Flat   []float32 // [Layers·E]: layer l's bias is Flat[l·E:(l+1)·E]
}

// NewRouterState returns zero biases for cfg.
func NewRouterState(cfg Config) *RouterState {
	return &RouterState{
		Rate: float32(cfg.BiasUpdateRate), Layers: cfg.Layers, E: cfg.Experts,
		Flat: make([]float32, cfg.Layers*cfg.Experts),
	}
}

// Layer is the selection bias of layer l to set as moe.State.Bias before
// the layer's forward, or nil when balancing is off and every bias is zero
// (so the reference model takes exactly the unbiased path).
func (s *RouterState) Layer(l int) []float32 {
	if s == nil || l < 0 || l >= s.Layers {
		return nil
	}
	b := s.Flat[l*s.E : (l+1)*s.E]
	if s.Rate == 0 {
		zero := true
		for _, v := range b {
			zero = zero && v == 0
		}
		if zero {
			return nil
		}
	}
	return b
}

// Update applies one balancing step from load[l][e], the slots the router
// sent to expert e of layer l during the step (summed over all data- and
// expert-parallel ranks by the caller; serially Model.RoutedLoad()).
func (s *RouterState) Update(load [][]int) error {
	if s == nil || s.Rate == 0 {
		return nil
	}
	if len(load) != s.Layers {
		return fmt.Errorf("model: router bias update: load has %d layers, model has %d", len(load), s.Layers)
	}
	for l, ld := range load {
		if err := moe.UpdateBias(s.Flat[l*s.E:(l+1)*s.E], ld, s.Rate); err != nil {
			return fmt.Errorf("model: router bias update, layer %d: %w", l, err)
		}
	}
	return nil
}

// SetFlat restores the biases (e.g. from a checkpoint).
func (s *RouterState) SetFlat(b []float32) error {
	if len(b) != len(s.Flat) {
		return fmt.Errorf("model: router bias has %d values, want layers·experts = %d", len(b), len(s.Flat))
	}
	for i, v := range b {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("model: router bias[%d] (layer %d, expert %d) = %v is not finite", i, i/s.E, i%s.E, v)
		}
	}
	copy(s.Flat, b)
	return nil
}

// RoutedLoad returns, per layer, the slots the router sent to each expert
// in the last forward, before capacity (copies): the bias-balancing signal.
func (m *Model) RoutedLoad() [][]int {
	if m.acts == nil {
		return nil
	}
	out := make([][]int, len(m.acts.Layers))
	for l := range m.acts.Layers {
		out[l] = append([]int(nil), m.acts.Layers[l].MoE.RoutedLoad()...)
	}
	return out
}

// RouterStats returns each layer's load metrics of the last forward for
// expert-parallel degree ep (which must divide the expert count).
func (m *Model) RouterStats(ep int) ([]moe.LoadStats, error) {
	if m.acts == nil {
		return nil, fmt.Errorf("model: router stats before any forward")
	}
	out := make([]moe.LoadStats, len(m.acts.Layers))
	for l := range m.acts.Layers {
		s, err := m.acts.Layers[l].MoE.Stats(ep)
		if err != nil {
			return nil, fmt.Errorf("model: layer %d: %w", l, err)
		}
		out[l] = s
	}
	return out, nil
}

// RouterZLoss is the z-loss of the last forward summed over layers
// (unweighted; 0 when model.z_loss_coef is 0, since it is then not
// computed). The loss term is Cfg.ZLossCoef·RouterZLoss().
func (m *Model) RouterZLoss() float64 {
	if m.acts == nil {
		return 0
	}
	var z float64
	for l := range m.acts.Layers {
		z += m.acts.Layers[l].MoE.ZLoss.Value
	}
	return z
}

// EPChunksAuto is the model.ep_chunks that lets every layer choose its
// pipelining degree at run time.
const EPChunksAuto = -1

// exchangeOptions are the expert-parallel exchange settings of [model]
// (they travel with the router's options into every MoE layer).
func (c Config) exchangeOptions() (moe.ExchangeOptions, error) {
	dt, err := moe.ParseDType(c.DispatchDType)
	if err != nil {
		return moe.ExchangeOptions{}, fmt.Errorf("model.dispatch_dtype = %q: %w", c.DispatchDType, err)
	}
	chunks := max(c.EPChunks, 1)
	if c.EPChunks == EPChunksAuto {
		chunks = moe.AutoChunks
	}
	return moe.ExchangeOptions{Chunks: chunks, DType: dt}, nil
}
