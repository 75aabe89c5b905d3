// Package parallel splits the serial model over a mesh of workers: data,
// tensor, expert and sequence parallelism, each a plan applied to the same
// layers, communicating through package collective.
//
// The math stays in model and moe; a rank runs the serial layer functions on
// its shard (model.Shard: its heads, expert hidden slice and vocabulary rows
// under TP; its experts under EP; its zigzag chunks under SP) and this
// package supplies only the exchanges, through model.Comms (Comms here):
//
//	TP    all-reduce after the row-parallel attention projection and the
//	      expert combine; all-reduce of the input gradients of the
//	      column-parallel QKV, expert and LM-head GEMMs; all-gather of three
//	      floats per token for the vocab-parallel cross-entropy.
//	EP    all-to-all-v of the routed rows to the experts' owners and back
//	      (moe.Exchange), sized in advance under MoGE's static split.
//	SP    ring or TokenRing attention over the sequence (parallel/sp).
//	plane the DP·SP ranks at one tp hold the step's distinct tokens: the
//	      target count and the aux/z-loss statistics are summed over it, so
//	      the loss is the global one on every rank and gradients only need
//	      summing; dense gradients reduce over it, expert gradients over the
//	      expert-data-parallel group (parallel/dp).
//
// Every exchange is a no-op at degree 1, so the serial trainer is the
// one-rank mesh. The package must not hold model math: a plan that needs a
// new computation adds it to model or moe and only its exchange here. The
// mesh, its rank formula and groups: docs/mesh.md.
package parallel

// Config is the [mesh] section of a job: the degree of each parallel
// dimension. world = DP × SP × TP; EP divides DP·SP (see docs/mesh.md#degrees).
type Config struct {
	// DP is the data-parallel degree; 0 means "auto": whatever the worker count
	// leaves after TP and SP.
	DP int `toml:"dp"`
	// TP is the tensor-parallel degree (attention heads and expert hidden
	// dimension split over TP ranks). Default 1.
	TP int `toml:"tp"`
	// EP is the expert-parallel degree; experts are split over EP ranks.
	// Default 1.
	EP int `toml:"ep"`
	// SP is the sequence-parallel degree: each sequence is split in 2·SP
	// zigzag chunks over SP ranks. Default 1.
	SP int `toml:"sp"`
	// SPAlgorithm is the sequence-parallel attention: "tokenring" (queries
	// travel, K,V stay; results come straight back) or "ring" (K,V rotate).
	SPAlgorithm string `toml:"sp_algorithm"`
}

// DefaultConfig is a single-rank mesh with DP left to the worker count.
func DefaultConfig() Config { return Config{DP: 0, TP: 1, EP: 1, SP: 1, SPAlgorithm: "tokenring"} }
