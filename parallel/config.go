// Package parallel splits the serial model over a mesh of workers: data,
// tensor, expert and sequence parallelism, each a plan applied to the same
// layers, communicating through package collective.
package parallel

// Config is the [mesh] section of a job: the degree of each parallel
// dimension. world = DP × SP × TP; EP divides DP·SP (see DESIGN.md §3).
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
