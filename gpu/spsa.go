package gpu

import (
	"fmt"
	"hash/crc32"
	"unsafe"

	"github.com/moetrain/moetrain/cuda"
)

// SPSAStore holds a zeroth-order replica's parameters on the GPU: the
// model's parameter buffer, with the gradient buffer (unused without a
// backward) as the backup. It has the methods of spsa.Store and gives the
// host's bits (the kernels in cuda/kernels/spsa.cu add exactly as
// spsa.Perturb and spsa.ApplyTerms do). Every write marks the bf16 weight
// copy stale, so mixed precision evaluates the perturbed weights.
type SPSAStore struct {
	m            *Model
	seeds, coefs cuda.DevicePtr
	terms        int       // capacity of seeds and coefs
	host         []float32 // Checksum's download
}

// NewSPSAStore returns m's parameters as an SPSA store. Close frees its
// buffers (not the model's).
func (m *Model) NewSPSAStore() *SPSAStore { return &SPSAStore{m: m} }

// Len is the number of parameters.
func (s *SPSAStore) Len() int { return s.m.Layout.Total }

// Save copies the parameters to the backup.
func (s *SPSAStore) Save() error {
	return s.m.dev.C.CopyDevice(s.m.dev.Ops.S, s.m.grads, s.m.params, 4*s.Len())
}

// Restore copies the backup to the parameters.
func (s *SPSAStore) Restore() error {
	s.m.ParamsWritten()
	return s.m.dev.C.CopyDevice(s.m.dev.Ops.S, s.m.params, s.m.grads, 4*s.Len())
}

// Perturb sets the parameters to backup + h·z for the direction with seed
// seed.
func (s *SPSAStore) Perturb(seed uint64, h float32) error {
	s.m.ParamsWritten()
	return s.m.dev.Ops.SPSAPerturb(s.m.params, s.m.grads, seed, h, s.Len())
}

// Apply adds Σₖ coefs[k]·z_k to the parameters.
func (s *SPSAStore) Apply(seeds []uint64, coefs []float32) error {
	if len(seeds) != len(coefs) {
		return fmt.Errorf("gpu: spsa: %d seeds for %d coefficients", len(seeds), len(coefs))
	}
	k := len(seeds)
	if k == 0 {
		return nil
	}
	if k > s.terms {
		s.Close()
		c := s.m.dev.C
		var err error
		if s.seeds, err = c.Alloc(8 * k); err != nil {
			return fmt.Errorf("gpu: spsa: %d seeds: %w", k, err)
		}
		if s.coefs, err = c.Alloc(4 * k); err != nil {
			return fmt.Errorf("gpu: spsa: %d coefficients: %w", k, err)
		}
		s.terms = k
	}
	if err := cuda.CopyIn(s.m.dev.C, s.seeds, seeds); err != nil {
		return err
	}
	if err := cuda.CopyIn(s.m.dev.C, s.coefs, coefs); err != nil {
		return err
	}
	s.m.ParamsWritten()
	return s.m.dev.Ops.SPSAApply(s.m.params, s.seeds, s.coefs, k, s.Len())
}

// Checksum is the CRC-32C of the parameters' bits, as spsa.Checksum of the
// same values on the host.
func (s *SPSAStore) Checksum() (uint32, error) {
	if len(s.host) != s.Len() {
		s.host = make([]float32, s.Len())
	}
	if err := s.m.Params(s.host); err != nil {
		return 0, err
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s.host))), 4*len(s.host))
	return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)), nil
}

// Close frees the store's term buffers.
func (s *SPSAStore) Close() {
	c := s.m.dev.C
	c.Free(s.seeds)
	c.Free(s.coefs)
	s.seeds, s.coefs, s.terms = 0, 0, 0
}
