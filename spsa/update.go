package spsa

import (
	"cmp"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
)

// Entry is one direction's projected gradient of one step: which worker
// measured it along which of its directions, and the raw quantized value
// (see Config.Quantize). With the step and the job seed it determines the
// update exactly.
type Entry struct {
	Worker uint32
	Dir    uint32
	Raw    uint32
}

func compareEntries(a, b Entry) int {
	if c := cmp.Compare(a.Worker, b.Worker); c != 0 {
		return c
	}
	return cmp.Compare(a.Dir, b.Dir)
}

// SortEntries puts entries in the order every replica applies them:
// by worker, then direction.
func SortEntries(e []Entry) { slices.SortFunc(e, compareEntries) }

// checkEntries refuses unsorted or repeated (worker, dir) pairs.
func checkEntries(e []Entry) error {
	for i := 1; i < len(e); i++ {
		if compareEntries(e[i-1], e[i]) >= 0 {
			return fmt.Errorf("spsa: entries %d and %d (worker %d dir %d, worker %d dir %d) are out of order or repeated",
				i-1, i, e[i-1].Worker, e[i-1].Dir, e[i].Worker, e[i].Dir)
		}
	}
	return nil
}

// Coefficient is the float32 step c = −lr·ĝ that entry raw contributes
// along its direction: the update adds c·z.
func (c Config) Coefficient(raw uint32) float32 {
	g := c.Dequantize(raw)
	return float32(-(c.LR * g))
}

// Updater applies a step's entries to a parameter buffer. It keeps the
// per-entry seeds and coefficients between steps so a step allocates
// nothing once the entry count has been seen.
type Updater struct {
	cfg     Config
	threads int
	seeds   []uint64
	coefs   []float32
}

// NewUpdater returns an updater for cfg running on threads goroutines
// (< 1: one). The thread count does not change any result.
func NewUpdater(cfg Config, threads int) *Updater {
	return &Updater{cfg: cfg, threads: threads}
}

// terms fills the updater's seeds and coefficients for the entries of
// step (sorted: see SortEntries), skipping entries with a zero or infinite
// coefficient (they contribute nothing).
func (u *Updater) terms(step int64, entries []Entry) error {
	if err := checkEntries(entries); err != nil {
		return fmt.Errorf("spsa: step %d: %w", step, err)
	}
	u.seeds, u.coefs = u.seeds[:0], u.coefs[:0]
	for _, e := range entries {
		c := u.cfg.Coefficient(e.Raw)
		if c == 0 || math.IsInf(float64(c), 0) {
			continue
		}
		u.seeds = append(u.seeds, DirectionSeed(u.cfg.Seed, step, e.Worker, e.Dir))
		u.coefs = append(u.coefs, c)
	}
	return nil
}

// Apply adds Σₖ cₖ·zₖ to params for the entries of step (sorted: see
// SortEntries), summing the terms of each element in float32 in entry order
// and then adding the sum once (ApplyTerms). Entries with a zero
// coefficient contribute nothing and are skipped. Every replica that
// applies the same entries at the same step to the same bits gets the same
// bits.
func (u *Updater) Apply(params []float32, step int64, entries []Entry) error {
	if err := u.terms(step, entries); err != nil {
		return err
	}
	ApplyTerms(params, u.seeds, u.coefs, u.threads)
	return nil
}

// ApplyTo is Apply on a Store's parameters.
func (u *Updater) ApplyTo(s Store, step int64, entries []Entry) error {
	if err := u.terms(step, entries); err != nil {
		return err
	}
	if len(u.seeds) == 0 {
		return nil
	}
	if err := s.Apply(u.seeds, u.coefs); err != nil {
		return fmt.Errorf("spsa: step %d: apply: %w", step, err)
	}
	return nil
}

// Checksum is the CRC-32C of params' bits: replicas compare it to check
// that they hold the same parameters.
func Checksum(params []float32) uint32 {
	return crc32.Checksum(f32bytes(params), castagnoli)
}
