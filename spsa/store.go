package spsa

import (
	"fmt"

	"github.com/moetrain/moetrain/model"
)

// Store is where a replica's parameters live while it trains: host memory
// (HostStore) or a GPU (package gpu's SPSAStore). The perturbation and the
// update are defined element by element (direction.go, Updater.Apply), so
// every Store given the same calls holds the same bits: a job may mix
// devices and a replay on the host checks a GPU run.
type Store interface {
	// Len is the number of parameters.
	Len() int
	// Save copies the parameters to the backup; Restore copies the backup
	// back, bit for bit.
	Save() error
	Restore() error
	// Perturb sets params[i] = backup[i] + h·z[i] for the direction with
	// seed s (one rounding per element).
	Perturb(s uint64, h float32) error
	// Apply adds Σₖ coefs[k]·z_k to the parameters, z_k the direction with
	// seed seeds[k]: each element's terms summed in float32 in the order k,
	// starting from zero, then added to the element once. len(seeds) ==
	// len(coefs).
	Apply(seeds []uint64, coefs []float32) error
	// Checksum is the CRC-32C of the parameters' bits (Checksum).
	Checksum() (uint32, error)
}

// HostStore is a Store over host slices; Threads (< 1: one) splits the
// work without changing a bit.
type HostStore struct {
	Params, Backup []float32
	Threads        int
}

// NewHostStore checks that backup can hold params.
func NewHostStore(params, backup []float32, threads int) (*HostStore, error) {
	if len(backup) != len(params) {
		return nil, fmt.Errorf("spsa: backup buffer of %d floats for %d parameters", len(backup), len(params))
	}
	return &HostStore{Params: params, Backup: backup, Threads: threads}, nil
}

func (h *HostStore) Len() int       { return len(h.Params) }
func (h *HostStore) Save() error    { copy(h.Backup, h.Params); return nil }
func (h *HostStore) Restore() error { copy(h.Params, h.Backup); return nil }

func (h *HostStore) Perturb(s uint64, eps float32) error {
	Perturb(h.Params, h.Backup, s, eps, h.Threads)
	return nil
}

func (h *HostStore) Apply(seeds []uint64, coefs []float32) error {
	if len(seeds) != len(coefs) {
		return fmt.Errorf("spsa: %d seeds for %d coefficients", len(seeds), len(coefs))
	}
	ApplyTerms(h.Params, seeds, coefs, h.Threads)
	return nil
}

func (h *HostStore) Checksum() (uint32, error) { return Checksum(h.Params), nil }

// ApplyTerms is the host reference of Store.Apply: params += Σₖ coefs[k]·z_k,
// each element's terms summed in float32 in order k from zero and added
// once, over threads goroutines (< 1: one; no bit depends on it).
func ApplyTerms(params []float32, seeds []uint64, coefs []float32, threads int) {
	if len(seeds) == 0 {
		return
	}
	forBlocks(len(params), threads, func(b0, b1 int) {
		var acc [BlockSize]float32
		for b := b0; b < b1; b++ {
			lo := b * BlockSize
			hi := min(lo+BlockSize, len(params))
			p := params[lo:hi]
			a := acc[:len(p)]
			clear(a)
			for k, s := range seeds {
				bits, c := blockBits(s, b), coefs[k]
				for t := range a {
					a[t] += signed(c, bits, uint(t))
				}
			}
			for t := range p {
				p[t] += a[t]
			}
		}
	})
}

// Forwarder is a model that evaluates a batch forward only: *model.Model,
// or a GPU model with the same semantics.
type Forwarder interface {
	Forward(in model.Input, wantGrad bool) (model.Result, error)
}
