package sampling

import (
	"encoding/json"
)

// State is a sampler's resumable position: small, JSON-serialisable, and
// enough to continue in O(1) without replaying batches (every random choice
// is derived from Seed and the position, see rng.go). It is the same on every
// rank of a job, so any rank's copy can be checkpointed.
type State struct {
	Kind        string `json:"kind"`        // "window", "bucket" or "pack"
	Seed        uint64 `json:"seed"`        // the sampler's seed (job seed + seed offset)
	Epoch       uint64 `json:"epoch"`       // bucket/pack: epochs completed
	Step        uint64 `json:"step"`        // window: batches taken; bucket/pack: steps taken in Epoch
	DPSize      int    `json:"dp_size"`     // data-parallel size the state was taken under
	Fingerprint uint64 `json:"fingerprint"` // bucket/pack: hash of the data set and batching config
	// Tokenizer is the fingerprint of a BPE data.tokenizer ("" = bytes).
	Tokenizer string `json:"tokenizer,omitempty"`
}

// String is the state's JSON form (for logs).
func (s State) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}
